//! Fitting into Linux: completions, the mount.fuse form (mount -t fuse.vaultfs, fstab),
//! mount.vaultfs, idle unmount, path translation, and debug logs without secrets.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestVault, fuse_available, run_ok, vaultfs};

#[test]
fn completions_generate_for_each_shell() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = run_ok(vaultfs(tmp.path()).args(["completions", shell]));
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(
            text.contains("vaultfs") && text.contains("decrypt-path") && text.contains("passfile"),
            "{shell}"
        );
    }
    let o = vaultfs(tmp.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mount_t_fuse_vaultfs_and_mount_helper() {
    if !fuse_available() {
        return;
    }
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !rustix::process::geteuid().is_root() || !Path::new("/sbin/mount.fuse3").exists() {
        assert!(!ci, "CI runs as root with fuse3 installed");
        eprintln!("*** SKIPPING mount -t fuse.vaultfs: needs root and /sbin/mount.fuse3 ***");
        return;
    }
    let v = TestVault::new(4096);
    // mount.fuse3 runs `vaultfs VAULT MNT -o OPTS` from the system PATH (mount(8) resets
    // PATH for its helpers), so vaultfs is installed for the span of this test.
    let installed = Path::new("/usr/local/bin/vaultfs");
    struct Uninstall<'a>(&'a Path);
    impl Drop for Uninstall<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    if fs::symlink_metadata(installed).is_ok() {
        assert!(!ci, "CI machines have no vaultfs installed");
        eprintln!(
            "*** SKIPPING mount -t fuse.vaultfs: {} already exists ***",
            installed.display()
        );
        return;
    }
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vaultfs"), installed).unwrap();
    let _uninstall = Uninstall(installed);
    let bin = v.tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vaultfs"), bin.join("mount.vaultfs")).unwrap();
    let opts = format!(
        "passfile={},noauto,nofail,x-systemd.automount",
        v.passfile.display()
    );
    let o = Command::new("mount")
        .args(["-t", "fuse.vaultfs"])
        .arg(&v.vault)
        .arg(&v.mnt)
        .args(["-o", &opts])
        .env("XDG_STATE_HOME", &v.state)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mount -t fuse.vaultfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(v.is_mounted());
    fs::write(v.p("via-fstab"), b"mounted by mount(8)").unwrap();
    v.unmount();
    // The helper form, as mount(8) calls /sbin/mount.vaultfs for -t vaultfs.
    let o = Command::new(bin.join("mount.vaultfs"))
        .arg(&v.vault)
        .arg(&v.mnt)
        .args(["-o", &format!("passfile={},ro", v.passfile.display())])
        .env("XDG_STATE_HOME", &v.state)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mount.vaultfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read(v.p("via-fstab")).unwrap(), b"mounted by mount(8)");
    assert_eq!(
        fs::write(v.p("x"), b"").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    v.unmount();
}

#[test]
fn idle_unmount_waits_for_open_files() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    let o = v.mount_args(&["--idle", "2s"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::write(v.p("f"), b"x").unwrap();
    let held = fs::File::open(v.p("f")).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(v.is_mounted(), "an open file keeps an idle mount mounted");
    drop(held);
    wait_until("idle unmount", || !v.is_mounted());
}

#[test]
fn path_translation_round_trips_including_long_names() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let long = "Z".repeat(230);
    let plain = format!("Docs/Reports 2026/{long}/final.pdf");
    fs::create_dir_all(v.p(&format!("Docs/Reports 2026/{long}"))).unwrap();
    fs::write(v.p(&plain), b"pdf").unwrap();
    v.unmount();
    let pw = v.passfile.to_str().unwrap().to_string();
    let o = run_ok(
        vaultfs(&v.state)
            .args(["encrypt-path", "--passfile", &pw])
            .arg(&v.vault)
            .arg(&plain),
    );
    let backing = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(
        v.vault.join(&backing).is_file(),
        "{backing} exists in the vault"
    );
    assert!(
        backing.contains("vaultfs.L."),
        "the long component is hashed: {backing}"
    );
    let o = run_ok(
        vaultfs(&v.state)
            .args(["decrypt-path", "--passfile", &pw])
            .arg(&v.vault)
            .arg(&backing),
    );
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), plain);
    // An absolute backing path works too; a foreign path is refused clearly.
    let abs = v.vault.join(&backing);
    let o = run_ok(
        vaultfs(&v.state)
            .args(["decrypt-path", "--passfile", &pw])
            .arg(&v.vault)
            .arg(&abs),
    );
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), plain);
    let o = vaultfs(&v.state)
        .args(["decrypt-path", "--passfile", &pw])
        .arg(&v.vault)
        .arg("vaultfs.db")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(vaultfs::exitcodes::USAGE));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an encrypted name"));
}

#[test]
fn debug_logs_show_requests_but_no_names_or_data() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    let o = vaultfs(&v.state)
        .env("RUST_LOG", "debug")
        .arg("mount")
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&v.vault)
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert!(o.status.success());
    fs::create_dir(v.p("SecretDirName")).unwrap();
    fs::write(v.p("SecretDirName/SecretFileName"), b"SecretContents").unwrap();
    assert_eq!(
        fs::read(v.p("SecretDirName/SecretFileName")).unwrap(),
        b"SecretContents"
    );
    let _ = fs::read(v.p("missing"));
    // More requests than the rate limit's burst: a debug log keeps every one.
    for i in 0..500 {
        let _ = fs::symlink_metadata(v.p(&format!("absent-{i}")));
    }
    v.unmount();
    let mut log = String::new();
    for e in fs::read_dir(v.state.join("vaultfs")).unwrap().flatten() {
        log.push_str(&fs::read_to_string(e.path().join("daemon.log")).unwrap_or_default());
    }
    assert!(
        log.contains("mkdir(ino 1) -> ok")
            && log.contains("create(ino")
            && log.contains("write(ino"),
        "requests are logged:\n{log}"
    );
    assert!(
        log.contains("No such file or directory"),
        "results are logged"
    );
    assert!(
        !log.contains("log lines dropped"),
        "RUST_LOG lifts the rate limit"
    );
    let failed_lookups = log
        .lines()
        .filter(|l| l.contains("lookup(ino 1)") && l.contains("No such file"))
        .count();
    assert!(failed_lookups >= 500, "{failed_lookups} lookups logged");
    for secret in [
        "SecretDirName",
        "SecretFileName",
        "SecretContents",
        "test password",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the debug log");
    }
}
