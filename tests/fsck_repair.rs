//! fsck --repair: removes leftovers, orphaned side files and empty files left by crashes,
//! moves entries with lost names to lost+found, keeps (and lists) damaged data.

mod common;

use std::fs;

use common::{TestVault, backing_of, fuse_available};
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
    let o = v.with_password(&["fsck", "--repair"]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(exitcodes::MOUNT_FAILED),
        "refuses while mounted"
    );
    v.unmount();

    let o = v.with_password(&["fsck", "--repair"]).output().unwrap();
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
    let o = v.with_password(&["fsck", "--json"]).output().unwrap();
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
    let o = v.with_password(&["fsck", "--repair"]).output().unwrap();
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
    for i in 0..300 {
        fs::write(v.p(&format!("keep{i}")), format!("kept {i}")).unwrap();
    }
    fs::create_dir(v.p("d")).unwrap();
    v.unmount();
    // Work for a repair run: 100 entries whose names are lost (moved out of their directory
    // in the backing tree) and 1,000 leftovers. Planted again whenever a run finished, so
    // every round has something to interrupt.
    let mut planted = 0;
    let plant = |batch: usize| {
        v.mount();
        for i in 0..100 {
            fs::write(v.p(&format!("d/b{batch}-{i}")), format!("data {i}")).unwrap();
        }
        v.unmount();
        let d = backing_of(&v, "d");
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("vaultfs.") {
                fs::rename(e.path(), v.vault.join(&name)).unwrap();
            }
        }
        for i in 0..1000 {
            fs::write(v.vault.join(format!("vaultfs.tmp.{batch:04}{i:020}")), b"x").unwrap();
        }
    };
    plant(planted);
    planted += 1;
    // A repair run walks the vault as a check-only run does, then repairs: kill moments are
    // spread from 0.6 to 2.5 times the check-only time, so they land mid-repair on fast and
    // slow machines alike; rounds go on until enough did.
    let t = std::time::Instant::now();
    v.with_password(&["fsck"]).output().unwrap();
    let walk = t.elapsed();
    // What is left to repair: leftovers, plus lost entries not yet in lost+found.
    let to_repair = |planted: usize| {
        let leftovers = fs::read_dir(&v.vault)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("vaultfs.tmp.")
            })
            .count();
        let found = fs::read_dir(v.vault.join("lost+found")).map_or(0, |d| d.count());
        leftovers + 100 * planted - found
    };
    let mut kills = 0;
    let mut killed_mid_repair = 0;
    let mut round = 0u32;
    while killed_mid_repair < 8 && round < 150 {
        round += 1;
        let before = to_repair(planted);
        let mut child = v
            .with_password(&["fsck", "--repair"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(walk * (60 + round * 37 % 190) / 100);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
            child.wait().unwrap();
            let after = to_repair(planted);
            if after > 0 && after < before {
                killed_mid_repair += 1;
            }
        } else {
            assert!(child.wait().unwrap().code().is_some());
            plant(planted);
            planted += 1;
        }
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
    let o = v.with_password(&["fsck", "--repair"]).output().unwrap();
    assert!(
        matches!(o.status.code(), Some(0) | Some(exitcodes::REPAIRED)),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = v.with_password(&["fsck"]).output().unwrap();
    assert!(
        o.status.success(),
        "clean after the last run: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        fs::read_dir(v.vault.join("lost+found")).unwrap().count(),
        100 * planted,
        "every lost entry kept"
    );
    eprintln!(
        "fsck --repair: {kills} kills in {round} runs, {killed_mid_repair} of them mid-repair; {planted} batches of damage planted"
    );
    assert!(
        killed_mid_repair >= 8,
        "some runs were killed mid-repair ({killed_mid_repair} of {kills} kills)"
    );
}
