//! The test programs: C sources of `tests/programs/` compiled the way distributions build
//! (no frame pointers), Python scripts run with Debian's interpreter, and this package's
//! examples.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
};

use super::{Program, find_tool};

/// `gcc -O2 -fomit-frame-pointer -g -pthread -Wall [extra] -o OUT SOURCE`, the way every
/// test program is built (no frame pointers: what distributions ship); panics with gcc's
/// output on failure.
pub fn gcc(source: &Path, out: &Path, extra: &[&str]) {
    let output = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g", "-pthread", "-Wall"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("running gcc for {}: {e}", source.display()));
    assert!(
        output.status.success(),
        "gcc {extra:?} failed on {} ({}):\n{}",
        source.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Compiles `tests/programs/<name>.c` with the flags of the issue and returns the binary,
/// named `<name>` (so its comm and exe are predictable). Compiled once per test binary run,
/// into cargo's temporary directory for integration tests.
pub fn compile(name: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = cache.get(name) {
        return path.clone();
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let out = dir.join(name);
    // Build beside and rename, so a concurrent run never executes a half-written file.
    let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
    gcc(&source, &partial, &[]);
    std::fs::rename(&partial, &out)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", partial.display(), out.display()));
    cache.insert(name.to_owned(), out.clone());
    out
}

/// The 1-based line of `tests/programs/<file>` carrying the comment `/* <marker> */`
/// (exactly one line must): where a test expects a frame's file:line to point.
pub fn marker_line(file: &str, marker: &str) -> u32 {
    let comment = format!("/* {marker} */");
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(file);
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
    let mut found = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&comment))
        .map(|(i, _)| u32::try_from(i + 1).expect("line fits u32"));
    let line = found
        .next()
        .unwrap_or_else(|| panic!("{} has no line marked {marker}", source.display()));
    assert!(
        found.next().is_none(),
        "{} marks more than one line {marker}",
        source.display()
    );
    line
}

/// The Python the scripts of `tests/programs/` run with: Debian's, as in the seeds.
pub const PYTHON: &str = "/usr/bin/python3";

/// Starts `tests/programs/<name>` (a Python script) with [`PYTHON`].
pub fn start_python(name: &str) -> Program {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(name);
    let mut command = Command::new(PYTHON);
    command.arg(script);
    Program::spawn(command)
}

/// The binary of example `name` of this package, next to this test binary
/// (target/<profile>/deps/..): built by a plain `cargo test`; with `--test NAME` cargo
/// builds no examples, so it is built here then.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", exe.display()));
    let example = profile_dir.join("examples").join(name);
    if !example.is_file() {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--quiet", "-p", "hangwatch", "--example", name])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            other => {
                cargo.args(["--profile", other]);
            }
        }
        let status = cargo
            .status()
            .unwrap_or_else(|e| panic!("running {cargo:?}: {e}"));
        assert!(status.success(), "{cargo:?} failed: {status}");
    }
    assert!(
        example.is_file(),
        "{} does not exist after building it",
        example.display()
    );
    example
}

/// The Python of the virtualenv with gevent that `cargo xtask test` makes
/// (`HANGWATCH_TEST_VENV_PYTHON`).
pub fn gevent_python() -> String {
    std::env::var("HANGWATCH_TEST_VENV_PYTHON").unwrap_or_else(|_| {
        panic!("HANGWATCH_TEST_VENV_PYTHON is not set: run the tests with `cargo xtask test`, which makes the virtualenv with gevent")
    })
}

/// Builds `tests/programs/<name>.rs` with rustc (release, with debug info for file:line),
/// like [`compile`] does for C.
pub fn rustc(name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.rs"));
    build_into(name, |out| {
        let mut c = Command::new("rustc");
        c.args(["-O", "-g", "--edition", "2021", "-o"])
            .arg(out)
            .arg(&source);
        c
    })
}

/// Builds `tests/programs/<name>.go` with Debian's Go (`cargo xtask setup` installs it).
pub fn go_build(name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.go"));
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    let go = find_tool("go").unwrap_or_else(|| {
        panic!("no `go` on PATH: `cargo xtask setup` installs Debian's golang-go for this control")
    });
    build_into(name, |out| {
        let mut c = Command::new(&go);
        c.args(["build", "-o"])
            .arg(out)
            .arg(&source)
            .env("GOCACHE", &cache)
            .env("GOFLAGS", "-mod=mod")
            .env("GO111MODULE", "off");
        c
    })
}

/// Runs `command(partial)` and renames the result to `programs/<name>` in cargo's
/// temporary directory (a concurrent run never executes a half-written file).
pub fn build_into(name: &str, command: impl FnOnce(&Path) -> Command) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let out = dir.join(name);
    let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
    let mut command = command(&partial);
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &out)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", partial.display(), out.display()));
    out
}
