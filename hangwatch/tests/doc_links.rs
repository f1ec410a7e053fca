//! The documentation's relative links lead somewhere: every `[text](path)` and
//! `[text](path#anchor)` of README.md, docs/*.md and deploy/README.md names a file that
//! exists and, for a markdown file, a heading it has. Sections move between these files;
//! this says which link a move broke. No root needed.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
}

/// The documents whose links are checked, relative to the repository.
fn documents(root: &Path) -> Vec<String> {
    let mut docs = vec!["README.md".to_owned(), "deploy/README.md".to_owned()];
    let dir = root.join("docs");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut pages: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// The lines of a markdown text outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter(move |(_, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .filter_map(|(_, line)| {
            let title = line.trim_start_matches('#');
            (title.len() < line.len() && title.starts_with(' ')).then(|| anchor(title))
        })
        .collect()
}

/// The targets of the inline links of one line: `[text](target)`.
fn link_targets(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &line[i + 2..];
            let end = rest.find(')')?;
            Some(&rest[..end])
        })
        .collect()
}

#[test]
fn every_relative_link_of_the_docs_leads_to_a_file_and_heading_that_exist() {
    let root = repository();
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents(&root) {
        let path = root.join(&doc);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let dir = path.parent().expect("a document is in a folder");
        for (number, line) in prose(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
                let linked = if file.is_empty() {
                    path.clone()
                } else {
                    dir.join(file)
                };
                let at = format!("{doc}:{}", number + 1);
                if !linked.exists() {
                    broken.push(format!("{at}: `{target}`: no file {}", linked.display()));
                    continue;
                }
                if fragment.is_empty() || linked.extension().is_none_or(|e| e != "md") {
                    continue;
                }
                let linked_text = fs::read_to_string(&linked)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", linked.display()));
                let headings = anchors(&linked_text);
                if !headings.contains(fragment) {
                    broken.push(format!(
                        "{at}: `{target}`: {} has no heading with the anchor `{fragment}` (its \
                         anchors: {headings:?})",
                        linked.display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parsing broken?"
    );
    assert!(
        broken.is_empty(),
        "{} broken links in the documentation:\n  {}",
        broken.len(),
        broken.join("\n  ")
    );
}

#[test]
fn anchors_and_links_are_read_as_github_does() {
    assert_eq!(
        anchor(" What the probes cost (measured)"),
        "what-the-probes-cost-measured"
    );
    assert_eq!(
        anchor(" Paused and woken threads; one report per episode"),
        "paused-and-woken-threads-one-report-per-episode"
    );
    assert_eq!(anchor(" `hangwatch run` flags"), "hangwatch-run-flags");
    assert_eq!(
        link_targets("see [a](x.md#b) and [c](../d/) or `[e]`"),
        ["x.md#b", "../d/"]
    );
    let text = "# Title\n\n```\n## not a heading\n```\n## Real one\n";
    assert_eq!(
        anchors(text),
        BTreeSet::from(["title".to_owned(), "real-one".to_owned()])
    );
}
