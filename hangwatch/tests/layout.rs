//! docs/layout.md's table of where each stage lives, checked against the tree: every file
//! it names exists, and every source file of the covered folders is named, so the table
//! cannot go stale. No root needed. A failure says which line of the table to change.
//!
//! The table's rules (docs/layout.md says them too): a row's first cell is a path, a folder
//! when it ends with `/`. The code spans of a folder's row that look like paths (end in
//! `.rs` or `/`) are relative to that folder, unless they start with a top-level directory
//! of the repository. A folder's `mod.rs` is named by its folder's row or by any name
//! inside that folder.
//!
//! The same document's "Layers" table orders the top-level modules of `hangwatch/src`;
//! no file may use a module of a layer above its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

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

// The layers: which module may import which (docs/layout.md, "Layers").

/// The folder whose modules the layers order.
const SOURCES: &str = "hangwatch/src";

/// The layers of docs/layout.md's "Layers" table: each top-level module of `SOURCES`
/// (`daemon` for `daemon.rs` and `daemon/`) with its layer's number, 1 at the bottom.
/// A row is `| N | `module`, `module` | why |`.
fn layers(doc: &str) -> Result<BTreeMap<String, usize>, String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Layers\n"))
        .ok_or("no section \"## Layers\"")?;
    let mut layers = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let mut cells = line.split('|').skip(1);
        let Ok(layer) = cells.next().unwrap_or_default().trim().parse::<usize>() else {
            continue; // the header and its rule
        };
        for module in code_spans(cells.next().unwrap_or_default()) {
            if let Some(other) = layers.insert(module.to_owned(), layer) {
                return Err(format!("`{module}` is in layers {other} and {layer}"));
            }
        }
    }
    if layers.is_empty() {
        return Err("the section \"## Layers\" has no rows `| N | `module` | why |`".into());
    }
    Ok(layers)
}

/// A path starting with `crate::` in a source file: the top-level module it names.
#[derive(Debug, PartialEq, Eq)]
struct CratePath {
    module: String,
    line: usize,
}

/// Every `crate::MODULE` in `tokens` (in `use` items, types, expressions and macro
/// arguments alike), and each first name of a `crate::{a::X, b}` group. Comments and
/// string literals are not tokens, so what they say does not count.
fn crate_paths(tokens: TokenStream, out: &mut Vec<CratePath>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            TokenTree::Group(group) => crate_paths(group.stream(), out),
            TokenTree::Ident(ident) if ident == "crate" => {
                let [TokenTree::Punct(a), TokenTree::Punct(b), next, ..] = &tokens[i + 1..] else {
                    continue;
                };
                if a.as_char() != ':' || a.spacing() != Spacing::Joint || b.as_char() != ':' {
                    continue;
                }
                match next {
                    TokenTree::Ident(module) => out.push(CratePath {
                        module: module.to_string(),
                        line: module.span().start().line,
                    }),
                    TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => {
                        let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                        for entry in
                            inner.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
                        {
                            if let Some(TokenTree::Ident(module)) = entry.first()
                                && module != "self"
                            {
                                out.push(CratePath {
                                    module: module.to_string(),
                                    line: module.span().start().line,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn tokens_of(path: &Path, text: &str) -> TokenStream {
    text.parse()
        .unwrap_or_else(|e| panic!("{}: cannot be read as Rust tokens: {e:?}", path.display()))
}

/// The top-level module a file of `SOURCES` belongs to: `detect` for `detect/mod.rs` and
/// `detect/lock_wait.rs`, `daemon` for `daemon.rs` and `daemon/reload.rs`.
fn module_of(file: &str) -> &str {
    let rest = file
        .strip_prefix(SOURCES)
        .unwrap_or(file)
        .trim_start_matches('/');
    let first = rest.split('/').next().unwrap_or(rest);
    first.strip_suffix(".rs").unwrap_or(first)
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let root = repository();
    let doc_path = root.join(TABLE);
    let doc = fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", doc_path.display()));
    let layers = layers(&doc).unwrap_or_else(|e| panic!("{TABLE}: {e}"));

    let mut files = BTreeSet::new();
    sources(&root, SOURCES, &mut files);
    let mut problems = Vec::new();
    let modules: BTreeSet<&str> = files.iter().map(|f| module_of(f)).collect();
    for module in &modules {
        if !layers.contains_key(*module) {
            problems.push(format!(
                "`{module}` ({SOURCES}/{module}) is in no layer: add it to a row of the table \
                 in {TABLE}, section \"Layers\""
            ));
        }
    }
    for module in layers.keys() {
        if !modules.contains(module.as_str()) {
            problems.push(format!(
                "{TABLE}, section \"Layers\", names `{module}`, which is no module of {SOURCES}"
            ));
        }
    }
    for file in &files {
        let module = module_of(file);
        let Some(&own) = layers.get(module) else {
            continue;
        };
        let path = root.join(file);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut paths = Vec::new();
        crate_paths(tokens_of(&path, &text), &mut paths);
        for CratePath { module: used, line } in paths {
            match layers.get(&used) {
                Some(&layer) if layer > own => problems.push(format!(
                    "{file}:{line}: `crate::{used}` is layer {layer}, above `{module}` (layer \
                     {own}): move what is shared down to the lowest layer that uses it"
                )),
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the layers of {TABLE} ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_layer_checker_sees_paths_not_comments_or_strings() {
    let source = r#"
//! Not `crate::api` in a comment.
use std::fmt;

use crate::{
    kind::HangKind,
    state::{ThreadKey, exits::ExitRequest},
};

pub(crate) fn f() -> crate::sink::Store {
    /* nor crate::cli here */
    let _ = "nor crate::daemon";
    assert_eq!(crate::detect::f(), 1);
    Default::default()
}
"#;
    let mut paths = Vec::new();
    crate_paths(source.parse().expect("tokens"), &mut paths);
    let found: Vec<(&str, usize)> = paths.iter().map(|p| (p.module.as_str(), p.line)).collect();
    assert_eq!(
        found,
        [("kind", 6), ("state", 7), ("sink", 10), ("detect", 13)]
    );

    let doc = "# x\n\n## Layers\n\n| layer | modules | why |\n| --- | --- | --- |\n\
               | 1 | `kind`, `clock` | words |\n| 2 | `state` | samples |\n\n## Next\n\n\
               | 3 | `not_a_layer` | |\n";
    let layers = layers(doc).expect("parses");
    assert_eq!(
        layers.into_iter().collect::<Vec<_>>(),
        [
            ("clock".to_owned(), 1),
            ("kind".to_owned(), 1),
            ("state".to_owned(), 2)
        ]
    );
    assert_eq!(module_of("hangwatch/src/detect/lock_wait.rs"), "detect");
    assert_eq!(module_of("hangwatch/src/daemon.rs"), "daemon");
}

// The import style: aya's rustfmt options `group_imports = "StdExternalCrate"` and
// `imports_granularity = "Crate"`, which stable rustfmt refuses in rustfmt.toml (see the
// comment there), checked here instead.

/// The folders (and files) whose Rust the import style covers: all of the repository's.
const STYLED: &[&str] = &[
    "hangwatch/src",
    "hangwatch/tests",
    "hangwatch/examples",
    "hangwatch/build.rs",
    "hangwatch-ebpf/src",
    "xtask/src",
];

/// Where an import sorts, as rustfmt's `group_imports = "StdExternalCrate"` decides from
/// its first name: the standard library, then other crates, then this crate's own paths.
/// Like rustfmt, a path that starts with a module's name (`use d_state::DState;` beside
/// `mod d_state;`) counts as another crate's: such paths are written `self::d_state::...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ImportGroup {
    Std,
    External,
    Local,
}

impl ImportGroup {
    fn of(root: &str) -> Self {
        match root {
            "std" | "core" | "alloc" => Self::Std,
            "crate" | "self" | "super" => Self::Local,
            _ => Self::External,
        }
    }
}

/// One `use` item: the first name of its path, what rustfmt merges it only with (its
/// attributes and visibility, as written), and its line.
#[derive(Debug, PartialEq, Eq)]
struct UseItem {
    root: String,
    prefix: String,
    line: usize,
}

/// The `use` items of a module (a file's top level, or the body of a `mod name { ... }`
/// in it, which is checked as a module of its own), in runs of consecutive items: another
/// item between two `use` items starts a new run, as it does for rustfmt.
fn use_runs(tokens: TokenStream, runs: &mut Vec<Vec<UseItem>>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let is_punct =
        |t: Option<&TokenTree>, c: char| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == c);
    let mut run = Vec::new();
    let mut prefix: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        // `#![inner]`: the module's own attribute, no item's.
        if is_punct(Some(token), '#') && is_punct(tokens.get(i + 1), '!') {
            i += 3;
            continue;
        }
        if is_punct(Some(token), '#')
            && let Some(TokenTree::Group(attribute)) = tokens.get(i + 1)
        {
            prefix.push(format!("#{attribute}"));
            i += 2;
            continue;
        }
        if let TokenTree::Ident(ident) = token {
            if ident == "pub" {
                prefix.push("pub".into());
                if let Some(TokenTree::Group(scope)) = tokens.get(i + 1)
                    && scope.delimiter() == Delimiter::Parenthesis
                {
                    prefix.push(scope.to_string());
                    i += 1;
                }
                i += 1;
                continue;
            }
            if ident == "use" {
                let root = match tokens.get(i + 1) {
                    Some(TokenTree::Ident(root)) => root.to_string(),
                    // `use ::name`: another crate, whatever its name.
                    Some(TokenTree::Punct(_)) => "::".into(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                run.push(UseItem {
                    root,
                    prefix: prefix.join(" "),
                    line: ident.span().start().line,
                });
                prefix.clear();
                while i < tokens.len() && !is_punct(tokens.get(i), ';') {
                    i += 1;
                }
                i += 1;
                continue;
            }
        }
        // Any other item ends the run; skip to its end (a `;` or its body).
        if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
        prefix.clear();
        while i < tokens.len() {
            let end = is_punct(tokens.get(i), ';')
                || matches!(&tokens[i], TokenTree::Group(g) if g.delimiter() == Delimiter::Brace);
            if let TokenTree::Ident(ident) = &tokens[i]
                && ident == "mod"
                && let (Some(TokenTree::Ident(_)), Some(TokenTree::Group(body))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                && body.delimiter() == Delimiter::Brace
            {
                use_runs(body.stream(), runs);
                i += 3;
                break;
            }
            i += 1;
            if end {
                break;
            }
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
}

/// What is wrong with the imports of one run: a group out of order, or a second `use` of
/// the same root (with the same attributes and visibility) that rustfmt would merge.
fn import_problems(file: &str, run: &[UseItem]) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, item) in run.iter().enumerate() {
        let group = ImportGroup::of(&item.root);
        if let Some(before) = run[..k].iter().find(|b| ImportGroup::of(&b.root) > group) {
            problems.push(format!(
                "{file}:{}: `use {}` ({group:?}) comes after `use {}` (line {}, {:?}): std, core \
                 and alloc first, then other crates, then crate, super and self",
                item.line,
                item.root,
                before.root,
                before.line,
                ImportGroup::of(&before.root)
            ));
        }
        if let Some(first) = run[..k]
            .iter()
            .find(|b| b.root == item.root && b.prefix == item.prefix)
        {
            problems.push(format!(
                "{file}:{}: a second `use {}::...` (the first is at line {}): one `use` per crate, \
                 merged as `use {}::{{...}}`",
                item.line, item.root, first.line, item.root
            ));
        }
    }
    problems
}

#[test]
fn imports_are_grouped_std_then_crates_then_ours_one_use_per_crate() {
    let root = repository();
    let mut files = BTreeSet::new();
    for entry in STYLED {
        if entry.ends_with(".rs") {
            files.insert((*entry).to_owned());
        } else {
            sources(&root, entry, &mut files);
        }
    }
    let mut problems = Vec::new();
    for file in &files {
        let path = root.join(file);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut runs = Vec::new();
        use_runs(tokens_of(&path, &text), &mut runs);
        for run in &runs {
            problems.extend(import_problems(file, run));
        }
    }
    assert!(
        problems.is_empty(),
        "imports out of style ({} problems; `cargo fmt -- --config \
         group_imports=StdExternalCrate,imports_granularity=Crate` fixes them, see rustfmt.toml):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_import_checker_finds_what_rustfmt_would_change() {
    let source = r#"
#![no_std]
//! A module.
use std::fmt;
use std::io;

use serde::Serialize;
#[cfg(test)]
use serde::Deserialize;
use crate::a;
pub use crate::b;
use std::sync;

mod inner {
    use crate::c;
    use serde::X;
}

fn f() {}
use core::mem;
"#;
    let mut runs = Vec::new();
    use_runs(source.parse().expect("tokens"), &mut runs);
    let roots: Vec<Vec<(&str, usize)>> = runs
        .iter()
        .map(|r| r.iter().map(|u| (u.root.as_str(), u.line)).collect())
        .collect();
    assert_eq!(
        roots,
        [
            vec![
                ("std", 4),
                ("std", 5),
                ("serde", 7),
                ("serde", 9),
                ("crate", 10),
                ("crate", 11),
                ("std", 12)
            ],
            vec![("crate", 15), ("serde", 16)],
            vec![("core", 20)],
        ]
    );
    let problems: Vec<String> = runs
        .iter()
        .flat_map(|r| import_problems("f.rs", r))
        .collect();
    // std twice; std after crate; serde after crate in `inner`. `#[cfg(test)] use serde`
    // and `pub use crate` are not merged with the others (rustfmt would not).
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].starts_with("f.rs:5: a second `use std::...` (the first is at line 4)"));
    assert!(problems[1].starts_with("f.rs:12: `use std` (Std) comes after `use serde` (line 7"));
    assert!(problems[2].starts_with("f.rs:12: a second `use std::...`"));
    assert!(problems[3].starts_with("f.rs:16: `use serde` (External) comes after `use crate`"));
}
