//! fsck --repair: removes leftovers, orphaned side files and empty files left by crashes,
//! moves entries with lost names to lost+found, keeps (and lists) damaged data.

mod common;

use std::fs;

use common::{TestVault, backing_of, fuse_available, vaultfs};
use vaultfs::crypto::names::{DIRID_FILE, DIRID_NEXT_FILE};
use vaultfs::exitcodes;

#[test]
fn repair_fixes_what_is_safe_and_keeps_data() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("a"), b"intact").unwrap();
    fs::write(v.p("b"), vec![1u8; 9000]).unwrap();
    fs::write(v.p("zero"), b"will be cut to nothing").unwrap();
    fs::create_dir(v.p("d")).unwrap();
    fs::write(v.p("d/lost"), b"name will be lost").unwrap();
    let long = "L".repeat(220);
    fs::write(v.p(&long), b"long").unwrap();
    v.unmount();

    let side = format!("{}.name", backing_of(&v, &long).display());
    fs::copy(
        &side,
        v.vault.join(format!("vaultfs.L.{}.name", "A".repeat(43))),
    )
    .unwrap(); // orphan
    fs::write(v.vault.join("vaultfs.tmp.0011223344556677"), b"staging").unwrap(); // leftover file
    let staging = v.vault.join("vaultfs.tmp.8899aabbccddeeff");
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join(DIRID_FILE), b"staged id").unwrap(); // interrupted mkdir
    let d = backing_of(&v, "d");
    fs::copy(d.join(DIRID_FILE), d.join(DIRID_NEXT_FILE)).unwrap(); // stale staged ID
    fs::write(backing_of(&v, "zero"), b"").unwrap(); // crash between create and header
    let lost = backing_of(&v, "d/lost");
    fs::rename(&lost, v.vault.join(lost.file_name().unwrap())).unwrap(); // name lost
    let b = backing_of(&v, "b");
    let mut bytes = fs::read(&b).unwrap();
    bytes[500] ^= 1;
    fs::write(&b, bytes).unwrap(); // damaged data: kept

    v.mount();
    let o = vaultfs(&v.state)
        .args(["fsck", "--repair", "--passfile"])
        .arg(&v.passfile)
        .arg(&v.vault)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(exitcodes::MOUNT_FAILED),
        "refuses while mounted"
    );
    v.unmount();

    let o = vaultfs(&v.state)
        .args(["fsck", "--repair", "--passfile"])
        .arg(&v.passfile)
        .arg(&v.vault)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(exitcodes::DAMAGED),
        "damaged data remains: {out}"
    );
    for what in [
        "orphaned side file",
        "leftover",
        "empty staging directory",
        "empty file left by a crash",
        "moved to lost+found",
    ] {
        assert!(out.contains(what), "{what} in:\n{out}");
    }
    assert!(
        out.contains("left as is") && out.contains("(b)"),
        "the damaged file is listed, not touched:\n{out}"
    );
    assert!(
        v.vault
            .join("lost+found")
            .join(lost.file_name().unwrap())
            .exists()
    );

    // Only the damaged file remains to report; everything else mounts and reads.
    let o = vaultfs(&v.state)
        .args(["fsck", "--json", "--passfile"])
        .arg(&v.passfile)
        .arg(&v.vault)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let plain: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["plain_path"].as_str())
        .collect();
    assert_eq!(plain, ["b"], "{report}");
    v.mount();
    assert_eq!(fs::read(v.p("a")).unwrap(), b"intact");
    assert_eq!(fs::read(v.p(&long)).unwrap(), b"long");
    assert!(!v.p("zero").exists());
    assert!(!v.p("d/lost").exists());
    assert_eq!(fs::read_dir(v.p("d")).unwrap().count(), 0);
    v.unmount();

    // With the damaged file gone, a repair run finds nothing left and exits clean.
    fs::remove_file(&b).unwrap();
    let o = vaultfs(&v.state)
        .args(["fsck", "--repair", "--passfile"])
        .arg(&v.passfile)
        .arg(&v.vault)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// fsck --repair killed at random moments: every repair step is one atomic operation, so
/// the vault always mounts with its data, and a last run finishes.
#[test]
fn repair_killed_at_random_moments() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("d")).unwrap();
    for i in 0..300 {
        fs::write(v.p(&format!("d/f{i}")), format!("data {i}")).unwrap();
        fs::write(v.p(&format!("keep{i}")), format!("kept {i}")).unwrap();
    }
    v.unmount();
    // 300 lost names and 300 leftovers to repair.
    let d = backing_of(&v, "d");
    for e in fs::read_dir(&d).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vaultfs.") {
            fs::rename(e.path(), v.vault.join(&name)).unwrap();
        }
    }
    for i in 0..300 {
        fs::write(v.vault.join(format!("vaultfs.tmp.{i:024}")), b"x").unwrap();
    }
    let mut kills = 0;
    for round in 0..20u64 {
        let mut child = vaultfs(&v.state)
            .args(["fsck", "--repair", "--passfile"])
            .arg(&v.passfile)
            .arg(&v.vault)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2 + (round * 7) % 60));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        v.mount();
        for i in (0..300).step_by(37) {
            assert_eq!(
                fs::read(v.p(&format!("keep{i}"))).unwrap(),
                format!("kept {i}").as_bytes(),
                "round {round}"
            );
        }
        v.unmount();
    }
    let o = vaultfs(&v.state)
        .args(["fsck", "--repair", "--passfile"])
        .arg(&v.passfile)
        .arg(&v.vault)
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0) | Some(exitcodes::REPAIRED)),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = vaultfs(&v.state)
        .args(["fsck", "--passfile"])
        .arg(&v.passfile)
        .arg(&v.vault)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "clean after the last run: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        fs::read_dir(v.vault.join("lost+found")).unwrap().count(),
        300,
        "every lost entry kept"
    );
    assert!(kills >= 5, "some runs were killed mid-repair ({kills})");
}
