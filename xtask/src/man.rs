//! `cargo xtask man`: the man pages, from the daemon's own command-line definition
//! (`hangwatch generate-man DIR`, clap_mangen), into target/man/.

use anyhow::Result;

pub fn man() -> Result<()> {
    crate::setup::setup()?;
    crate::build::build_daemon(true)?;
    let dir = crate::target_dir().join("man");
    crate::status(
        std::process::Command::new(crate::target_dir().join("release/hangwatch"))
            .arg("generate-man")
            .arg(&dir),
    )?;
    println!(
        "man pages in {}: man -l {}",
        dir.display(),
        dir.join("hangwatch.1").display()
    );
    Ok(())
}
