//! The committed man page matches the clap definitions. Regenerate with
//! `VAULTFS_WRITE_MAN=1 cargo test --test manpage` (or scripts/gen-man.sh).

use std::path::Path;

#[test]
fn committed_man_page_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/vaultfs.1");
    let fresh = vaultfs::cli::manpage::render();
    if std::env::var_os("VAULTFS_WRITE_MAN").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read(&path).expect("man/vaultfs.1 exists");
    assert!(
        committed == fresh,
        "man/vaultfs.1 is stale: run scripts/gen-man.sh and commit the result"
    );
}

#[test]
fn man_page_renders_without_warnings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/vaultfs.1");
    let Ok(out) = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&path)
        .output()
    else {
        eprintln!("groff not installed; rendering not checked");
        return;
    };
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "groff warnings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
