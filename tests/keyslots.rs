//! Key management through the CLI: passwd, keyslot list/add/remove, a new recovery key,
//! recovery with the recovery key, and rebuilding a lost key database.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{run_ok, vaultfs};
use vaultfs::exitcodes;

struct V {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    vault: PathBuf,
    state: PathBuf,
}

impl V {
    fn new(extra: &[&str]) -> (V, Option<String>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let v = V {
            vault: dir.join("vault"),
            state: dir.join("state"),
            dir,
            _tmp: tmp,
        };
        let key = v.dir.join("rk");
        v.pw("p0", "first password");
        let mut c = vaultfs(&v.state);
        c.args(["init", "--scrypt-logn", "10", "--passfile"])
            .arg(v.dir.join("p0"))
            .args(extra);
        if !extra.contains(&"--no-recovery-key") {
            c.arg("--recovery-key-file").arg(&key);
        }
        run_ok(c.arg(&v.vault));
        let rk = fs::read_to_string(&key).ok();
        (v, rk)
    }

    fn pw(&self, name: &str, value: &str) -> PathBuf {
        let p = self.dir.join(name);
        fs::write(&p, format!("{value}\n")).unwrap();
        p
    }

    fn run(&self, args: &[&str], files: &[(&str, &Path)]) -> Output {
        let mut c = vaultfs(&self.state);
        c.args(args);
        for (flag, path) in files {
            c.arg(flag).arg(path);
        }
        c.arg(&self.vault).output().unwrap()
    }

    /// Does `password` open the vault? (encrypt-path is the cheapest unlocking command)
    fn opens(&self, password: &str) -> bool {
        let p = self.pw("probe", password);
        let o = vaultfs(&self.state)
            .arg("encrypt-path")
            .arg("--passfile")
            .arg(&p)
            .arg(&self.vault)
            .arg("x")
            .output()
            .unwrap();
        match o.status.code() {
            Some(0) => true,
            Some(c) if c == exitcodes::WRONG_PASSWORD => false,
            other => panic!(
                "unexpected status {other:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn passwd_changes_the_password() {
    let (v, _) = V::new(&[]);
    let (old, new) = (v.dir.join("p0"), v.pw("p1", "second password"));
    ok(v.run(
        &["passwd"],
        &[("--passfile", &old), ("--new-passfile", &new)],
    ));
    assert!(!v.opens("first password"));
    assert!(v.opens("second password"));
    // A wrong old password changes nothing.
    let o = v.run(
        &["passwd"],
        &[("--passfile", &old), ("--new-passfile", &new)],
    );
    assert_eq!(o.status.code(), Some(exitcodes::WRONG_PASSWORD));
}

#[test]
fn keyslots_per_user() {
    let (v, _) = V::new(&[]);
    let p0 = v.dir.join("p0");
    let alice = v.pw("alice", "alice's password");
    ok(v.run(
        &["keyslot", "add", "--label", "alice"],
        &[("--passfile", &p0), ("--new-passfile", &alice)],
    ));
    assert!(v.opens("alice's password") && v.opens("first password"));
    let list = ok(v.run(&["keyslot", "list"], &[]));
    assert!(
        list.contains("alice") && list.contains("default") && list.contains("recovery"),
        "{list}"
    );
    // Alice can add Bob: no other slot's password needed.
    let bob = v.pw("bob", "bob's password");
    ok(v.run(
        &["keyslot", "add", "--label", "bob"],
        &[("--passfile", &alice), ("--new-passfile", &bob)],
    ));
    assert!(v.opens("bob's password"));
    // Removal: not with the slot itself, not the last password slot; then the password fails.
    let o = v.run(
        &["keyslot", "remove", "--label", "alice"],
        &[("--passfile", &alice)],
    );
    assert_eq!(
        o.status.code(),
        Some(exitcodes::USAGE),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = v.run(
        &["keyslot", "remove", "--label", "alice"],
        &[("--passfile", &p0)],
    );
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rotate --reencrypt"),
        "warns about old keys"
    );
    assert!(!v.opens("alice's password"));
    assert!(v.opens("bob's password") && v.opens("first password"));
    ok(v.run(
        &["keyslot", "remove", "--label", "bob"],
        &[("--passfile", &p0)],
    ));
    let o = v.run(
        &["keyslot", "remove", "--label", "recovery"],
        &[("--passfile", &p0)],
    );
    assert!(o.status.success());
    assert!(
        !v.vault.join("vaultfs.recovery.1").exists(),
        "recovery files go with the recovery slot"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(v.run(&["status", "--json"], &[]))).unwrap();
    let slots = status["keyslots"].as_array().unwrap();
    assert_eq!(slots.len(), 1);
    let dup = v.run(
        &["keyslot", "add", "--label", "default"],
        &[("--passfile", &p0), ("--new-passfile", &p0)],
    );
    assert_eq!(dup.status.code(), Some(exitcodes::ALREADY_EXISTS));
    let audit: Vec<String> = status["recent_audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        audit.contains(&"keyslot-add".to_string()) && audit.contains(&"keyslot-remove".to_string()),
        "{audit:?}"
    );
}

#[test]
fn recovery_key_sets_a_new_password() {
    let (v, rk) = V::new(&[]);
    let rk_file = v.dir.join("rk");
    assert!(rk.is_some());
    let new = v.pw("p2", "recovered password");
    ok(v.run(
        &["recover"],
        &[("--recovery-key-file", &rk_file), ("--new-passfile", &new)],
    ));
    assert!(v.opens("recovered password"));
    assert!(!v.opens("first password"));
    // A wrong recovery key is refused.
    let wrong = v.dir.join("wrong-rk");
    fs::write(
        &wrong,
        vaultfs::crypto::recovery_key::encode(&vaultfs::crypto::keys::Key256::random().unwrap())
            .as_str(),
    )
    .unwrap();
    let o = v.run(
        &["recover"],
        &[("--recovery-key-file", &wrong), ("--new-passfile", &new)],
    );
    assert_eq!(o.status.code(), Some(exitcodes::WRONG_PASSWORD));
}

#[test]
fn a_new_recovery_key_for_a_vault_without_one() {
    let (v, rk) = V::new(&["--no-recovery-key"]);
    assert!(rk.is_none());
    let p0 = v.dir.join("p0");
    let key_file = v.dir.join("new-rk");
    ok(v.run(
        &["keyslot", "add", "--recovery"],
        &[("--passfile", &p0), ("--recovery-key-file", &key_file)],
    ));
    assert!(v.vault.join("vaultfs.recovery.1").exists());
    let new = v.pw("p3", "via the new recovery key");
    ok(v.run(
        &["recover"],
        &[("--recovery-key-file", &key_file), ("--new-passfile", &new)],
    ));
    assert!(v.opens("via the new recovery key"));
}

#[test]
fn a_lost_key_database_is_rebuilt_from_the_recovery_files() {
    if !common::fuse_available() {
        return;
    }
    let tv = common::TestVault::new(4096);
    // TestVault has no recovery key: issue one, write data, then lose the database.
    let key_file = tv.add_recovery_key();
    tv.mount();
    fs::create_dir(tv.p("docs")).unwrap();
    fs::write(
        tv.p("docs/report.txt"),
        b"survives the loss of the key database",
    )
    .unwrap();
    tv.unmount();
    fs::write(tv.vault.join("vaultfs.db"), b"corrupted beyond repair").unwrap();
    assert!(tv.mount_args(&[]).status.code() == Some(exitcodes::KEYSTORE_REFUSED));
    let newpw = tv.tmp.path().join("newpw");
    fs::write(&newpw, "rebuilt password\n").unwrap();
    let o = vaultfs(&tv.state)
        .args([
            "recover",
            "--rebuild-keystore",
            "--scrypt-logn",
            "10",
            "--recovery-key-file",
        ])
        .arg(&key_file)
        .arg("--new-passfile")
        .arg(&newpw)
        .arg(&tv.vault)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        fs::read_dir(&tv.vault).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("vaultfs.db.broken-")),
        "old database kept aside"
    );
    let o = vaultfs(&tv.state)
        .arg("mount")
        .arg("--passfile")
        .arg(&newpw)
        .arg(&tv.vault)
        .arg(&tv.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::read(tv.p("docs/report.txt")).unwrap(),
        b"survives the loss of the key database"
    );
    // recover refuses while mounted.
    let o = vaultfs(&tv.state)
        .args(["recover", "--recovery-key-file"])
        .arg(&key_file)
        .arg("--new-passfile")
        .arg(&newpw)
        .arg(&tv.vault)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exitcodes::MOUNT_FAILED));
    tv.unmount();
}

/// A key database lost while a rotation was under way leaves two recovery files. The
/// rebuild will not guess whether the newer one is genuine (SECURITY.md: a planted one would
/// learn every file key); told so with --interrupted-rotation it finishes that rotation,
/// then rotates once more to a generation of its own, and every file reads back.
#[test]
fn a_rebuild_after_an_interrupted_rotation_needs_the_owners_word() {
    if !common::fuse_available() {
        return;
    }
    let tv = common::TestVault::new(4096);
    let key_file = tv.add_recovery_key();
    tv.mount();
    for i in 0..400 {
        fs::write(tv.p(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    tv.unmount();
    // Kill the rotation once it has written the next generation's recovery file.
    let mut rotation = vaultfs(&tv.state)
        .args(["rotate", "--passfile"])
        .arg(&tv.passfile)
        .arg(&tv.vault)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let next = tv.vault.join("vaultfs.recovery.2");
    while !next.exists() {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    rotation.kill().unwrap();
    rotation.wait().unwrap();
    fs::write(tv.vault.join("vaultfs.db"), b"lost").unwrap();
    let o = tv.rebuild_keystore(&key_file, &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--interrupted-rotation"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = tv.rebuild_keystore(&key_file, &["--interrupted-rotation"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("Rotated generation").count(), 2, "{out}");
    assert!(out.contains("Rotated generation 2 -> 3"), "{out}");
    tv.mount();
    for i in 0..400 {
        assert_eq!(
            fs::read_to_string(tv.p(&format!("f{i}"))).unwrap(),
            format!("file {i}")
        );
    }
    tv.unmount();
}
