//! docs/layout.md's table of where each stage lives, checked against the tree: every file
//! it names exists, and every source file of the covered folders is named, so the table
//! cannot go stale. No root needed. A failure says which line of the table to change.
//!
//! The table's rules (docs/layout.md says them too): a row's first cell is a path, a folder
//! when it ends with `/`. The code spans of a folder's row that look like paths (end in
//! `.rs` or `/`) are relative to that folder, unless they start with a top-level directory
//! of the repository. A folder's `mod.rs` is named by its folder's row or by any name
//! inside that folder.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The folders whose every `.rs` file the table must name (recursively).
const COVERED: &[&str] = &[
    "hangwatch/src",
    "hangwatch-ebpf/src",
    "hangwatch/tests/common",
    "xtask/src",
];

/// A code span starting with one of these is relative to the repository, not to its row.
const TOP_LEVEL: &[&str] = &[
    "hangwatch/",
    "hangwatch-ebpf/",
    "xtask/",
    "deploy/",
    "docs/",
];

const TABLE: &str = "docs/layout.md";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
}

/// One row of the table: its first cell's path, and the paths it names (the row's own
/// path included), all relative to the repository.
#[derive(Debug)]
struct Row {
    path: String,
    names: Vec<String>,
}

/// The inline code spans of a markdown line, in order.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

fn looks_like_a_path(span: &str) -> bool {
    !span.is_empty()
        && !span.starts_with('/')
        && (span.ends_with(".rs") || span.ends_with('/'))
        && span
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

fn rows(table: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let mut cells = line.splitn(3, '|').skip(1);
        let first = cells.next().unwrap_or_default();
        let Some(path) = code_spans(first).first().map(|p| (*p).to_owned()) else {
            continue;
        };
        let mut names = vec![path.clone()];
        if path.ends_with('/') {
            let rest = cells.next().unwrap_or_default();
            for span in code_spans(rest)
                .into_iter()
                .filter(|s| looks_like_a_path(s))
            {
                if TOP_LEVEL.iter().any(|top| span.starts_with(top)) {
                    names.push(span.to_owned());
                } else {
                    names.push(format!("{path}{span}"));
                }
            }
        }
        rows.push(Row { path, names });
    }
    rows
}

/// Every `.rs` file under `dir` (relative to `root`), recursively.
fn sources(root: &Path, dir: &str, out: &mut BTreeSet<String>) {
    let full = root.join(dir);
    let entries = fs::read_dir(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{dir}/{name}");
        let kind = entry.file_type().unwrap_or_else(|e| panic!("{path}: {e}"));
        if kind.is_dir() {
            sources(root, &path, out);
        } else if name.ends_with(".rs") {
            out.insert(path);
        }
    }
}

/// What to write in the table for a file it does not name: its name in the row of the
/// nearest folder above it, or a row of its own (a new folder's, for a `mod.rs`).
fn how_to_add(file: &str, rows: &[Row]) -> String {
    let name = match file.strip_suffix("mod.rs") {
        Some(folder) if folder.ends_with('/') => folder,
        _ => file,
    };
    let folder_row = rows
        .iter()
        .filter(|r| r.path.ends_with('/') && name.starts_with(&r.path) && name != r.path)
        .max_by_key(|r| r.path.len());
    match folder_row {
        Some(row) => format!(
            "`{file}` is not named in {TABLE}: add `{}` (and what it holds) to the row of `{}`",
            &name[row.path.len()..],
            row.path
        ),
        None => format!(
            "`{file}` is not named in {TABLE}: add a row `| `{name}` | STAGE | what it holds |`"
        ),
    }
}

#[test]
fn the_layout_table_names_every_source_file_and_only_files_that_exist() {
    let root = repository();
    let table_path = root.join(TABLE);
    let table = fs::read_to_string(&table_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", table_path.display()));
    let rows = rows(&table);
    assert!(
        rows.len() > 10,
        "{TABLE}: expected its table of paths, found {} rows",
        rows.len()
    );

    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    for row in &rows {
        for name in &row.names {
            let on_disk = root.join(name);
            let exists = if name.ends_with('/') {
                on_disk.is_dir()
            } else {
                on_disk.is_file()
            };
            if !exists {
                problems.push(format!(
                    "{TABLE} names `{name}`, which does not exist: remove it from the row of `{}` \
                     (or correct the name)",
                    row.path
                ));
            }
            named.insert(name.trim_end_matches('/').to_owned());
        }
    }

    let mut files = BTreeSet::new();
    for dir in COVERED {
        sources(&root, dir, &mut files);
    }
    for file in &files {
        if named.contains(file) {
            continue;
        }
        if let Some(folder) = file.strip_suffix("/mod.rs")
            && named
                .iter()
                .any(|n| n == folder || n.starts_with(&format!("{folder}/")))
        {
            continue;
        }
        problems.push(how_to_add(file, &rows));
    }

    assert!(
        problems.is_empty(),
        "{TABLE} is out of step with the tree ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_checker_reads_rows_as_documented() {
    let table = "\
| path | stage | holds |
| --- | --- | --- |
| `hangwatch/src/detect/` | detect | `d_state.rs`, `HangKind` in `mod.rs`, `sub/` and `sub/x.rs`, `/proc/PID/mem`, `hangwatch/tests/layout.rs` |
| `hangwatch/src/daemon.rs` | all | the loop, and `not_a_folder_row.rs` |
";
    let rows = rows(table);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0].names,
        [
            "hangwatch/src/detect/",
            "hangwatch/src/detect/d_state.rs",
            "hangwatch/src/detect/mod.rs",
            "hangwatch/src/detect/sub/",
            "hangwatch/src/detect/sub/x.rs",
            "hangwatch/tests/layout.rs",
        ]
    );
    // A file's row names only that file.
    assert_eq!(rows[1].names, ["hangwatch/src/daemon.rs"]);
    assert_eq!(
        how_to_add("hangwatch/src/detect/new_kind.rs", &rows),
        "`hangwatch/src/detect/new_kind.rs` is not named in docs/layout.md: add `new_kind.rs` \
         (and what it holds) to the row of `hangwatch/src/detect/`"
    );
    assert_eq!(
        how_to_add("hangwatch/src/detect/sub2/mod.rs", &rows),
        "`hangwatch/src/detect/sub2/mod.rs` is not named in docs/layout.md: add `sub2/` (and \
         what it holds) to the row of `hangwatch/src/detect/`"
    );
    assert!(
        how_to_add("hangwatch/src/new_stage/mod.rs", &rows)
            .ends_with("add a row `| `hangwatch/src/new_stage/` | STAGE | what it holds |`"),
        "{}",
        how_to_add("hangwatch/src/new_stage/mod.rs", &rows)
    );
}
