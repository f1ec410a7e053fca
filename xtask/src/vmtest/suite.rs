//! The kernel test binaries, built on the host (compiling under emulation would take an
//! hour), and the summary of their run in the guest.

use std::{collections::BTreeMap, io::BufRead as _, path::PathBuf, process::Stdio};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The prefix of the test files that need a kernel (hangwatch/tests/kernel_*.rs): the
/// others (unit tests, deploy.rs) test nothing a kernel changes.
const KERNEL_TEST_PREFIX: &str = "kernel_";

/// One integration-test binary.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// The test file's name (`kernel_locks`).
    pub name: String,
    pub executable: PathBuf,
}

/// `cargo test --workspace --release --no-run`, then the kernel test binaries it built
/// (all of them, or those named in `only`), sorted by name.
pub fn build(only: &[String]) -> Result<Vec<TestBinary>> {
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--release",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("failed to start cargo test --no-run")?;
    let stdout = child.stdout.take().context("cargo's stdout is piped")?;
    let mut found = BTreeMap::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON messages")?;
        if let Some(binary) = kernel_test_binary(&line) {
            found.insert(binary.name.clone(), binary);
        }
    }
    let status = child.wait().context("waiting for cargo test --no-run")?;
    if !status.success() {
        bail!("`cargo test --release --no-run` failed ({status})");
    }
    if let Some(unknown) = only.iter().find(|n| !found.contains_key(n.as_str())) {
        bail!(
            "--test {unknown}: no such kernel test file; there are: {}",
            found.keys().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    let binaries: Vec<TestBinary> = found
        .into_values()
        .filter(|b| only.is_empty() || only.contains(&b.name))
        .collect();
    if binaries.is_empty() {
        bail!("cargo built no {KERNEL_TEST_PREFIX}* test binary");
    }
    Ok(binaries)
}

/// The test binary a `compiler-artifact` message describes, if it is a kernel test.
fn kernel_test_binary(line: &str) -> Option<TestBinary> {
    let message: Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    let kinds = message["target"]["kind"].as_array()?;
    if !kinds.iter().any(|k| k == "test") {
        return None;
    }
    let name = message["target"]["name"].as_str()?;
    if !name.starts_with(KERNEL_TEST_PREFIX) {
        return None;
    }
    Some(TestBinary {
        name: name.to_owned(),
        executable: PathBuf::from(message["executable"].as_str()?),
    })
}

/// What libtest's `test result:` lines of a log add up to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    /// How many `test result:` lines there were (one per binary that finished).
    pub results: u32,
}

/// Adds up the `test result: ok. 5 passed; 1 failed; 0 ignored; ...` lines of `log`.
pub fn totals(log: &str) -> Totals {
    let mut totals = Totals::default();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        totals.results += 1;
        // "ok. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9s"
        let counts = rest.split_once(". ").map_or(rest, |(_, c)| c);
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => totals.passed += n,
                "failed" => totals.failed += n,
                "ignored" => totals.ignored += n,
                _ => {}
            }
        }
    }
    totals
}

/// The tests each file of `log` reported failed, by file: the list under the last
/// `failures:` of its section (a section starts at `Running tests/NAME.rs`). A file killed
/// before its summary has none listed.
pub fn failed_tests(log: &str) -> BTreeMap<String, Vec<String>> {
    let mut failed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut file: Option<String> = None;
    // Inside a `failures:` list: the names so far.
    let mut listing: Option<Vec<String>> = None;
    for line in log.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("Running tests/") {
            file = rest.split_once(".rs").map(|(name, _)| name.to_owned());
            listing = None;
            continue;
        }
        if line == "failures:" {
            listing = Some(Vec::new());
            continue;
        }
        let Some(names) = &mut listing else { continue };
        match line.strip_prefix("    ") {
            Some(name) if !name.starts_with(' ') && !name.is_empty() => {
                names.push(name.trim().to_owned());
            }
            _ => {
                // The end of a list: the detailed one ("---- name stdout ----" lines)
                // lists nothing, the closing one the names.
                let names = listing.take().unwrap_or_default();
                if let Some(file) = &file
                    && !names.is_empty()
                {
                    failed.insert(file.clone(), names);
                }
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tests_are_the_closing_list_of_each_file() {
        let log = "     Running tests/kernel_a.rs (/t/kernel_a-1)\n\
                   running 3 tests\n\
                   test x ... FAILED\n\
                   \n\
                   failures:\n\
                   \n\
                   ---- x stdout ----\n\
                   thread 'x' panicked\n\
                   \n\
                   failures:\n\
                   \x20   x\n\
                   \x20   y_z\n\
                   \n\
                   test result: FAILED. 1 passed; 2 failed; 0 ignored\n\
                   \x20    Running tests/kernel_b.rs (/t/kernel_b-1)\n\
                   test result: ok. 4 passed; 0 failed; 0 ignored\n";
        let failed = failed_tests(log);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed["kernel_a"], ["x", "y_z"]);
    }

    #[test]
    fn totals_add_up_every_result_line() {
        let log = "running 2 tests\n\
                   test a ... ok\n\
                   test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.5s\n\
                   test result: FAILED. 5 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 69.38s\n";
        assert_eq!(
            totals(log),
            Totals {
                passed: 7,
                failed: 1,
                ignored: 3,
                results: 2
            }
        );
        assert_eq!(totals("no summary here\n"), Totals::default());
    }

    #[test]
    fn only_kernel_test_binaries_are_taken() {
        let test = r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"kind":["test"],"name":"kernel_locks"},"executable":"/t/kernel_locks-1"}"#;
        let binary = kernel_test_binary(test).expect("a kernel test");
        assert_eq!(binary.name, "kernel_locks");
        assert_eq!(binary.executable, PathBuf::from("/t/kernel_locks-1"));
        let deploy = test.replace("kernel_locks", "deploy");
        assert!(kernel_test_binary(&deploy).is_none());
        let unit = r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"kind":["bin"],"name":"hangwatch"},"executable":"/t/hangwatch-1"}"#;
        assert!(kernel_test_binary(unit).is_none());
        assert!(kernel_test_binary("not json").is_none());
    }
}
