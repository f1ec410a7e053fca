//! `hangwatch completions SHELL` and the man pages (the hidden `generate-man DIR`, run by
//! `cargo xtask man`): both made from the clap definition, so they say what `--help` says.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print a completion script for (bash: `hangwatch completions bash >
    /// /etc/bash_completion.d/hangwatch`; zsh: into a directory of `$fpath` as `_hangwatch`;
    /// fish: `~/.config/fish/completions/hangwatch.fish`)
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct GenerateManArgs {
    /// The directory to write hangwatch.1 and one page per subcommand into (created).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints the completion script of `args.shell` on stdout.
pub fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    let script = completion_script(args.shell);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .context("cannot write the completion script to stdout")
}

fn completion_script(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "hangwatch", &mut script);
    script
}

/// Writes the man pages into `args.dir`: `hangwatch.1`, and `hangwatch-run.1` and so on for
/// each visible subcommand.
pub fn man(args: &GenerateManArgs) -> anyhow::Result<()> {
    write_man_pages(&args.dir)
}

fn write_man_pages(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completion_knows_every_visible_subcommand() {
        let script = String::from_utf8(completion_script(Shell::Bash)).expect("utf-8");
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            assert!(
                script.contains(sub.get_name()),
                "no {} in the bash script",
                sub.get_name()
            );
        }
        assert!(script.contains("--webhook-ca"), "run's flags are completed");
    }

    #[test]
    fn man_pages_cover_the_subcommands() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_man_pages(dir.path()).expect("written");
        let main = fs::read_to_string(dir.path().join("hangwatch.1")).expect("hangwatch.1");
        assert!(main.starts_with(".ie"), "{}", &main[..main.len().min(200)]);
        assert!(main.contains(".TH hangwatch 1"), "{main}");
        let run = fs::read_to_string(dir.path().join("hangwatch-run.1")).expect("hangwatch-run.1");
        assert!(run.contains("config"), "{run}");
        assert!(
            !dir.path().join("hangwatch-bench-floor.1").exists(),
            "hidden commands get no page"
        );
    }
}
