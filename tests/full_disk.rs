//! A full backing filesystem: writes get ENOSPC, nothing already written is damaged, no
//! half-made entry stays behind, and everything works again once space is freed.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;

use common::{errno_of, fuse_available, run_ok, vaultfs};

#[test]
fn full_backing_filesystem() {
    // Writes through the kernel's writeback cache report ENOSPC at fsync or close; without
    // it, at the write itself. The same checks hold for both once each write is synced.
    full_backing_filesystem_with(&[]);
    full_backing_filesystem_with(&["-o", "no_writeback_cache"]);
}

fn full_backing_filesystem_with(options: &[&str]) {
    if !fuse_available() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        eprintln!("*** SKIPPING full-disk test: mounting a small tmpfs needs root ***");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    let (mnt, state, pw) = (
        tmp.path().join("mnt"),
        tmp.path().join("state"),
        tmp.path().join("pw"),
    );
    fs::create_dir_all(&small).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(&pw, "pw\n").unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(&small),
    );
    struct Umount(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = vaultfs(&self.2)
                .arg("unmount")
                .arg("--lazy")
                .arg(&self.1)
                .output();
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Umount(small.clone(), mnt.clone(), state.clone());
    let vault = small.join("vault");
    run_ok(
        vaultfs(&state)
            .args([
                "init",
                "--scrypt-logn",
                "10",
                "--no-recovery-key",
                "--passfile",
            ])
            .arg(&pw)
            .arg(&vault),
    );
    let mount = || {
        run_ok(
            vaultfs(&state)
                .arg("mount")
                .arg("--passfile")
                .arg(&pw)
                .args(options)
                .arg(&vault)
                .arg(&mnt),
        )
    };
    // A write and the fsync that makes its outcome known.
    let write_synced = |path: &std::path::Path, data: &[u8]| {
        let mut f = fs::File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    };
    mount();

    let keep1: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let keep2: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    write_synced(&mnt.join("keep1"), &keep1).unwrap();
    write_synced(&mnt.join("keep2"), &keep2).unwrap();

    // Fill the disk.
    let mut big = fs::File::create(mnt.join("big")).unwrap();
    let block = vec![0x5au8; 128 * 1024];
    let mut full = 0;
    for _ in 0..100 {
        if let Err(e) = big.write_all(&block) {
            full = e.raw_os_error().unwrap_or(0);
            break;
        }
    }
    if full == 0 {
        full = errno_of(big.sync_all());
    }
    assert_eq!(full, libc::ENOSPC, "a full backing filesystem gives ENOSPC");
    drop(big);
    // More failures while full: growing, allocating, creating, extending an existing file.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("keep2"))
        .unwrap();
    let before = f.metadata().unwrap().len();
    let grow = f
        .write_all_at(&vec![1u8; 200_000], 5000)
        .and_then(|()| f.sync_all());
    if grow.is_err() {
        assert_eq!(errno_of(grow), libc::ENOSPC);
        let after = f.metadata().unwrap().len();
        let mut content = vec![0u8; after as usize];
        f.read_exact_at(&mut content, 0)
            .expect("a failed grow leaves a readable file");
        assert_eq!(
            &content[..before as usize],
            &keep2[..],
            "old bytes intact after a failed grow"
        );
    }
    assert_eq!(
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 50 << 20),
        Err(rustix::io::Errno::NOSPC)
    );
    drop(f);
    let mut created = Vec::new();
    for i in 0..50 {
        let name = format!("new{i}");
        match write_synced(&mnt.join(&name), &[9u8; 20_000]) {
            Ok(()) => created.push(name),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
                // A failed create leaves nothing half-made: the name either reads or is absent.
                if let Ok(data) = fs::read(mnt.join(&name)) {
                    assert!(
                        data.iter().all(|&b| b == 9),
                        "{name}: partial file holds only what was written"
                    );
                }
            }
        }
    }
    assert_eq!(
        fs::read(mnt.join("keep1")).unwrap(),
        keep1,
        "keep1 intact while full"
    );

    // Free space: everything works again, and survives a remount.
    fs::remove_file(mnt.join("big")).unwrap();
    write_synced(&mnt.join("after"), b"space again").unwrap();
    run_ok(vaultfs(&state).arg("unmount").arg(&mnt));
    mount();
    assert_eq!(fs::read(mnt.join("keep1")).unwrap(), keep1);
    assert_eq!(
        &fs::read(mnt.join("keep2")).unwrap()[..keep2.len()],
        &keep2[..]
    );
    assert_eq!(fs::read(mnt.join("after")).unwrap(), b"space again");
    for entry in fs::read_dir(&mnt).unwrap() {
        let entry = entry.unwrap();
        fs::read(entry.path()).unwrap_or_else(|e| {
            panic!(
                "{:?} unreadable after the full-disk episode: {e}",
                entry.file_name()
            )
        });
    }
    run_ok(vaultfs(&state).arg("unmount").arg(&mnt));
    let o = vaultfs(&state)
        .args(["fsck", "--passfile"])
        .arg(&pw)
        .arg(&vault)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fsck after the episode: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}
