//! The CLI's `--help`, command by command, against the snapshots in
//! `tests/fixtures/help/`: a flag renamed, removed or described differently shows up here as
//! a diff to review (and to carry into the docs), not by surprise in a user's script.
//! After an intended change: `HANGWATCH_UPDATE_HELP=1 cargo xtask test -- --test help`.

mod common;

use std::{fs, path::PathBuf, process::Command};

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/help")
}

fn help_of(command: Option<&str>) -> String {
    let mut cmd = Command::new(common::HANGWATCH);
    // clap shows the value of a flag's environment variable: not the snapshot's business.
    cmd.args(command)
        .arg("--help")
        .env_remove("HANGWATCH_ENDPOINT")
        .env_remove("NODE_NAME");
    let out = cmd.output().expect("run hangwatch --help");
    assert!(out.status.success(), "{command:?} --help failed: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The subcommands `hangwatch --help` lists (`help` aside).
fn listed_commands(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_help_matches_its_snapshot() {
    let update = std::env::var_os("HANGWATCH_UPDATE_HELP").is_some();
    let top = help_of(None);
    let commands = listed_commands(&top);
    assert!(commands.len() >= 9, "commands listed: {commands:?}\n{top}");
    let mut differ = Vec::new();
    for command in std::iter::once(None).chain(commands.iter().map(|c| Some(c.as_str()))) {
        let name = command.unwrap_or("hangwatch");
        let path = snapshot_dir().join(format!("{name}.txt"));
        let help = help_of(command);
        if update {
            fs::create_dir_all(snapshot_dir()).expect("create the snapshot dir");
            fs::write(&path, &help).expect("write a snapshot");
            continue;
        }
        let expected = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no snapshot of `{name} --help` ({}: {e}); run with HANGWATCH_UPDATE_HELP=1 to make it", path.display()));
        if help != expected {
            let first = help
                .lines()
                .zip(expected.lines())
                .position(|(now, then)| now != then)
                .unwrap_or_else(|| help.lines().count().min(expected.lines().count()));
            differ.push(format!(
                "`{name} --help` differs from {} from line {}:\n  now:  {:?}\n  was:  {:?}",
                path.display(),
                first + 1,
                help.lines().nth(first),
                expected.lines().nth(first)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{}\n(an intended change: HANGWATCH_UPDATE_HELP=1 cargo xtask test -- --test help, and update the docs)",
        differ.join("\n")
    );
}
