//! renameat2's flags: RENAME_NOREPLACE, RENAME_EXCHANGE (files and directories, across
//! directories) and RENAME_WHITEOUT (what overlayfs asks of its upper layer), each checked
//! again after a remount, by fsck and through a rotation.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (from, to) = (c(from), c(to));
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fsck_is_clean(v: &TestVault) {
    let o = v.with_password(&["fsck"]).output().unwrap();
    assert!(
        o.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn noreplace_and_exchange() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir_all(v.p("a/da")).unwrap();
    fs::create_dir_all(v.p("b/db")).unwrap();
    fs::write(v.p("a/da/inside-a"), b"A").unwrap();
    fs::write(v.p("b/db/inside-b"), b"B").unwrap();
    fs::write(v.p("a/f"), b"file a").unwrap();
    fs::write(v.p("b/g"), b"file b").unwrap();
    // NOREPLACE: refused onto an existing name, a plain rename onto a new one.
    assert_eq!(
        errno_of(renameat2(&v.p("a/f"), &v.p("b/g"), libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    renameat2(&v.p("a/f"), &v.p("a/f2"), libc::RENAME_NOREPLACE).unwrap();
    // EXCHANGE: two files in different directories, then two directories (whose IDs are
    // bound to their parents), then a file with a directory.
    renameat2(&v.p("a/f2"), &v.p("b/g"), libc::RENAME_EXCHANGE).unwrap();
    renameat2(&v.p("a/da"), &v.p("b/db"), libc::RENAME_EXCHANGE).unwrap();
    renameat2(&v.p("a/f2"), &v.p("b/db"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(
        errno_of(renameat2(
            &v.p("a/f2"),
            &v.p("a/none"),
            libc::RENAME_EXCHANGE
        )),
        libc::ENOENT
    );
    let check = |v: &TestVault| {
        assert_eq!(fs::read(v.p("b/g")).unwrap(), b"file a");
        assert_eq!(fs::read(v.p("a/da/inside-b")).unwrap(), b"B");
        assert_eq!(fs::read(v.p("a/f2/inside-a")).unwrap(), b"A");
        assert_eq!(fs::read(v.p("b/db")).unwrap(), b"file b");
    };
    check(&v);
    v.unmount();
    fsck_is_clean(&v);
    v.mount();
    check(&v);
    v.unmount();
}

/// RENAME_WHITEOUT leaves a character device 0:0 at the source, atomically (the backing
/// rename makes it); it needs CAP_MKNOD, so root.
#[test]
fn whiteout_leaves_a_character_device_at_the_source() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("d")).unwrap();
    fs::write(v.p("d/moved"), b"contents").unwrap();
    let long = "l".repeat(200); // a long name: its side file stays with the whiteout
    fs::write(v.p(&long), b"long").unwrap();
    renameat2(&v.p("d/moved"), &v.p("target"), libc::RENAME_WHITEOUT).unwrap();
    renameat2(&v.p(&long), &v.p("long-target"), libc::RENAME_WHITEOUT).unwrap();
    let check = |v: &TestVault| {
        for w in ["d/moved", long.as_str()] {
            let m = fs::symlink_metadata(v.p(w)).unwrap();
            assert!(m.file_type().is_char_device(), "{w}: {m:?}");
            assert_eq!(m.rdev(), 0, "{w}");
        }
        assert_eq!(fs::read(v.p("target")).unwrap(), b"contents");
        assert_eq!(fs::read(v.p("long-target")).unwrap(), b"long");
        let mut names: Vec<String> = fs::read_dir(&v.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = vec!["d", "long-target", long.as_str(), "target"];
        want.sort();
        assert_eq!(names, want);
    };
    check(&v);
    v.unmount();
    fsck_is_clean(&v);
    let o = v.with_password(&["rotate"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    v.mount();
    check(&v);
    // A whiteout is removed like any name.
    fs::remove_file(v.p("d/moved")).unwrap();
    assert!(fs::symlink_metadata(v.p("d/moved")).is_err());
    v.unmount();
    fsck_is_clean(&v);
}
