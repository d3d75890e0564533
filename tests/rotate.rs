//! Master-key rotation: end to end on a varied tree, and killed with SIGKILL at random
//! moments then resumed. After every kill the vault mounts with every file intact.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{TestVault, fuse_available, run_ok, vaultfs};
use vaultfs::crypto::header::FileHeader;
use vaultfs::exitcodes;

/// path -> sha256-ish fingerprint (contents, or "link:target"), symlinks not followed.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel.clone(), b"dir".to_vec());
                walk(root, &e.path(), out);
            } else if ft.is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(e.path())
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                let data = fs::read(e.path()).unwrap_or_else(|err| panic!("{rel}: {err}"));
                out.insert(rel, data);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn build_tree(v: &TestVault, files: usize) {
    fs::create_dir_all(v.p("a/b/c")).unwrap();
    fs::create_dir(v.p(&"D".repeat(240))).unwrap();
    fs::write(v.p("empty"), b"").unwrap();
    fs::write(v.p("a/multi"), vec![7u8; 3 * 4096 + 5]).unwrap();
    let sparse = fs::File::create(v.p("sparse")).unwrap();
    sparse.set_len(5 << 20).unwrap();
    drop(sparse);
    fs::write(
        v.p(&format!(
            "{}/long-in-long-{}",
            "D".repeat(240),
            "L".repeat(200)
        )),
        b"long",
    )
    .unwrap();
    std::os::unix::fs::symlink("a/multi", v.p("link")).unwrap();
    fs::hard_link(v.p("a/multi"), v.p("a/b/hardlink")).unwrap();
    xattr(&v.p("a/multi"), "user.color", b"blue");
    xattr(&v.p("a/b"), "user.on-dir", b"yes");
    for i in 0..files {
        let dir = ["", "a/", "a/b/", "a/b/c/"][i % 4];
        fs::write(
            v.p(&format!("{dir}f{i}")),
            format!("file {i} ").repeat(i % 50 + 1),
        )
        .unwrap();
    }
}

fn xattr(p: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings and buffer.
    assert_eq!(
        unsafe {
            libc::setxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        0
    );
}

fn header_generations(vault: &Path) -> Vec<u32> {
    let mut gens = Vec::new();
    fn walk(dir: &Path, gens: &mut Vec<u32>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(&e.path(), gens);
            } else if ft.is_file() && !name.starts_with("vaultfs.") {
                let h = FileHeader::decode(&fs::read(e.path()).unwrap()).unwrap();
                gens.extend(h.generations());
            }
        }
    }
    walk(vault, &mut gens);
    gens.sort();
    gens.dedup();
    gens
}

#[test]
fn rotation_end_to_end() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    let rk = v.add_recovery_key();
    v.mount();
    build_tree(&v, 40);
    let before = snapshot(&v.mnt);
    v.unmount();
    assert_eq!(header_generations(&v.vault), [1]);
    for round in 0..2 {
        let o = v.with_password(&["rotate"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (old, new) = (round + 1, round + 2);
        assert_eq!(
            header_generations(&v.vault),
            [new],
            "no header names the old generation"
        );
        let status: serde_json::Value = serde_json::from_slice(
            &run_ok(vaultfs(&v.state).args(["status", "--json"]).arg(&v.vault)).stdout,
        )
        .unwrap();
        let gens = status["generations"].as_array().unwrap();
        assert_eq!(gens[old as usize - 1]["state"], "destroyed");
        assert_eq!(gens[new as usize - 1]["state"], "active");
        assert!(!v.vault.join(format!("vaultfs.recovery.{old}")).exists());
        let db = rusqlite::Connection::open(v.vault.join("vaultfs.db")).unwrap();
        let seals: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM generation_seals WHERE generation = ?1",
                [old],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            seals, 0,
            "the old generation's sealed keys are gone from the database"
        );
        assert!(v.vault.join(format!("vaultfs.recovery.{new}")).exists());
        // fsck, which knows only the new generation now, finds every object intact.
        let o = v.with_password(&["fsck"]).output().unwrap();
        assert!(
            o.status.success(),
            "fsck after rotation: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        v.mount();
        assert_eq!(
            snapshot(&v.mnt),
            before,
            "round {round}: contents unchanged"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(v.p("a/multi")).unwrap().ino(),
            fs::metadata(v.p("a/b/hardlink")).unwrap().ino(),
            "still hard-linked"
        );
        v.unmount();
    }
    // The recovery key still works after rotations (it opens the newest recovery file).
    let newpw = v.tmp.path().join("newpw");
    fs::write(&newpw, "after rotation\n").unwrap();
    run_ok(
        vaultfs(&v.state)
            .args(["recover", "--recovery-key-file"])
            .arg(&rk)
            .arg("--new-passfile")
            .arg(&newpw)
            .arg(&v.vault),
    );
    fs::write(&v.passfile, "after rotation\n").unwrap();
    // Rotation refuses a mounted vault.
    v.mount();
    let o = vaultfs(&v.state)
        .args(["rotate", "--passfile"])
        .arg(&newpw)
        .arg(&v.vault)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exitcodes::MOUNT_FAILED));
    v.unmount();
}

#[test]
fn rotation_killed_at_random_moments_resumes_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    build_tree(&v, 2000);
    let before = snapshot(&v.mnt);
    v.unmount();
    let mut kills = 0;
    let mut mid_walk = 0; // kills that left headers under both generations
    let mut completed = 0;
    for round in 0..26u64 {
        let mut child = v.with_password(&["rotate"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(3 + (round * 37) % 200));
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "round {round}: rotate failed");
                completed += 1;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                if header_generations(&v.vault).len() > 1 {
                    mid_walk += 1;
                }
            }
        }
        // Whatever the moment, the vault mounts and every file is intact.
        v.mount();
        assert_eq!(
            snapshot(&v.mnt),
            before,
            "round {round}: contents after a kill"
        );
        if round % 6 == 5 {
            // Changed between a kill and the resume: must stay correct.
            fs::write(v.p(&format!("a/written-mid-rotation-{round}")), b"mid").unwrap();
            fs::remove_file(v.p(&format!("a/written-mid-rotation-{round}"))).unwrap();
        }
        v.unmount();
    }
    // Finish the job.
    run_ok(&mut v.with_password(&["rotate"]));
    let o = v.with_password(&["fsck"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let status: serde_json::Value = serde_json::from_slice(
        &run_ok(vaultfs(&v.state).args(["status", "--json"]).arg(&v.vault)).stdout,
    )
    .unwrap();
    assert!(status["rotation"].is_null());
    let live: Vec<_> = status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] != "destroyed")
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(
        header_generations(&v.vault),
        [live[0]["generation"].as_u64().unwrap() as u32]
    );
    v.mount();
    assert_eq!(snapshot(&v.mnt), before);
    v.unmount();
    eprintln!(
        "rotation: {kills} kills ({mid_walk} mid-walk), {completed} rotations completed within a round"
    );
    assert!(kills >= 20, "at least 20 kills mid-rotation ({kills})");
    assert!(mid_walk >= 10, "at least 10 kills mid-walk ({mid_walk})");
}

/// File IDs (header bytes 16..32) of every backing file, by plaintext path.
fn file_ids(v: &TestVault, paths: &[&str]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| fs::read(common::backing_of(v, p)).unwrap()[16..32].to_vec())
        .collect()
}

#[test]
fn reencrypt_gives_every_file_a_new_key_and_keeps_everything_else() {
    if !fuse_available() {
        return;
    }
    // Sparse, so that the tree's sparse file has holes to keep.
    let v = TestVault::sparse(4096);
    v.mount();
    build_tree(&v, 20);
    let before = snapshot(&v.mnt);
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &str| fs::metadata(v.p(p)).unwrap();
    let (mode, mtime) = (meta("a/multi").mode(), meta("a/multi").mtime());
    v.unmount();
    let files = ["empty", "a/multi", "a/b/hardlink", "sparse", "f0", "a/f1"];
    let ids_before = file_ids(&v, &files);
    run_ok(&mut v.with_password(&["rotate", "--reencrypt"]));
    let ids_after = file_ids(&v, &files);
    for (i, f) in files.iter().enumerate() {
        assert_ne!(
            ids_before[i], ids_after[i],
            "{f} has a new file ID (and key)"
        );
    }
    assert_eq!(ids_after[1], ids_after[2], "hard links share the new file");
    assert!(
        fs::metadata(common::backing_of(&v, "sparse"))
            .unwrap()
            .blocks()
            * 512
            < 1 << 20,
        "holes stay holes"
    );
    let o = v.with_password(&["fsck"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    v.mount();
    assert_eq!(snapshot(&v.mnt), before);
    assert_eq!(
        meta("a/multi").ino(),
        meta("a/b/hardlink").ino(),
        "still hard-linked"
    );
    assert_eq!(
        (meta("a/multi").mode(), meta("a/multi").mtime()),
        (mode, mtime),
        "mode and times kept"
    );
    v.unmount();
    // A plain rotation cannot resume a --reencrypt one, and the other way round.
    let o = v.with_password(&["rotate"]).output().unwrap();
    assert!(
        o.status.success(),
        "a new plain rotation after a finished one"
    );
}

#[test]
fn reencrypt_killed_at_random_moments_resumes_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    build_tree(&v, 2000);
    for i in 0..20 {
        fs::hard_link(v.p(&format!("f{}", i * 4)), v.p(&format!("a/b/c/link{i}"))).unwrap();
    }
    let before = snapshot(&v.mnt);
    v.unmount();
    let mut kills = 0;
    let mut mid_walk = 0; // kills that left files under both generations
    for round in 0..24u64 {
        let mut child = v.with_password(&["rotate", "--reencrypt"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(3 + (round * 41) % 250));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
            child.wait().unwrap();
            if header_generations(&v.vault).len() > 1 {
                mid_walk += 1;
            }
        }
        child.wait().unwrap();
        v.mount();
        assert_eq!(
            snapshot(&v.mnt),
            before,
            "round {round}: contents after a kill"
        );
        use std::os::unix::fs::MetadataExt;
        for i in 0..20 {
            let (a, b) = (
                fs::metadata(v.p(&format!("f{}", i * 4))).unwrap(),
                fs::metadata(v.p(&format!("a/b/c/link{i}"))).unwrap(),
            );
            assert_eq!(
                a.ino(),
                b.ino(),
                "round {round}: link group {i} stays one file"
            );
        }
        v.unmount();
    }
    run_ok(&mut v.with_password(&["rotate", "--reencrypt"]));
    let o = v.with_password(&["fsck"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    v.mount();
    assert_eq!(snapshot(&v.mnt), before);
    v.unmount();
    eprintln!("rotate --reencrypt: {kills} kills ({mid_walk} mid-walk)");
    assert!(kills >= 20, "at least 20 kills mid-rotation ({kills})");
    assert!(mid_walk >= 10, "at least 10 kills mid-walk ({mid_walk})");
}

#[test]
fn fsck_reports_and_repair_finishes_an_interrupted_rotation() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    build_tree(&v, 500);
    let before = snapshot(&v.mnt);
    v.unmount();
    let in_progress = || {
        let status: serde_json::Value = serde_json::from_slice(
            &run_ok(vaultfs(&v.state).args(["status", "--json"]).arg(&v.vault)).stdout,
        )
        .unwrap();
        !status["rotation"].is_null()
    };
    // Kill a --reencrypt rotation somewhere in its walk (retrying until a kill lands mid-way).
    let mut interrupted = false;
    for attempt in 0..30u64 {
        let mut child = v.with_password(&["rotate", "--reencrypt"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(150 + attempt * 20));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        if in_progress() {
            interrupted = true;
            break;
        }
    }
    assert!(interrupted, "no kill landed inside a rotation");
    let fsck = |repair: bool| {
        let mut c = vaultfs(&v.state);
        c.arg("fsck");
        if repair {
            c.arg("--repair");
        }
        c.arg("--passfile").arg(&v.passfile).arg(&v.vault);
        c.output().unwrap()
    };
    let o = fsck(false);
    let out = String::from_utf8_lossy(&o.stdout);
    // An unfinished rotation is not damage; only the killed run's staging file may show.
    assert!(
        out.lines()
            .filter(|l| l.contains(": ") && !l.starts_with("note:"))
            .all(|l| l.starts_with("Leftover:")),
        "{out}"
    );
    assert!(out.contains("is unfinished"), "{out}");
    assert!(in_progress(), "a plain fsck changes nothing");
    let o = fsck(true);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(exitcodes::REPAIRED), "{out}");
    assert!(out.contains("finished the interrupted rotation"), "{out}");
    assert!(!in_progress());
    assert!(fsck(false).status.success());
    v.mount();
    assert_eq!(snapshot(&v.mnt), before);
    v.unmount();
}
