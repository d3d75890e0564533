//! Regression tests for defects found in review of the FUSE layer.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{TestVault, backing_of, fuse_available};

fn writes_used(backing: &Path) -> u64 {
    let b = fs::read(backing).unwrap();
    u64::from_be_bytes(b[32..40].try_into().unwrap())
}

/// Every open/write/close cycle once reserved 65,536 chunk writes of the key's 2^32 budget,
/// so a file became unwritable after ~65,000 appends. Reservations now start at 16 per
/// session and double only as a session keeps writing.
#[test]
fn open_write_close_cycles_do_not_eat_the_key_budget() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let p = v.p("log");
    fs::write(&p, b"").unwrap();
    for i in 0..300 {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(format!("line {i}\n").as_bytes()).unwrap(); // one write(2) per cycle
    }
    v.unmount();
    // One small reservation per session: 16 each, not 65,536.
    let used = writes_used(&backing_of(&v, "log"));
    assert!(
        used <= 300 * 16 + 64,
        "header counts {used} chunk writes reserved for ~310 made"
    );
}

/// A failed rmdir once left the directory without its ID file (unreadable forever).
#[test]
fn failed_rmdir_keeps_the_directory_intact() {
    if !fuse_available() || !rustix::process::geteuid().is_root() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir_all(v.p("parent/child")).unwrap();
    let parent = backing_of(&v, "parent");
    // An append-only backing parent refuses the rmdir (EPERM) after vaultfs removed the ID.
    let chattr = Command::new("chattr").arg("+a").arg(&parent).status();
    if !chattr.is_ok_and(|s| s.success()) {
        eprintln!("*** chattr +a unsupported here; failed-rmdir path not exercised ***");
        return;
    }
    let r = fs::remove_dir(v.p("parent/child"));
    let _ = Command::new("chattr").arg("-a").arg(&parent).status();
    assert!(
        r.is_err(),
        "rmdir must fail on an append-only backing parent"
    );
    v.unmount();
    v.mount();
    assert!(
        fs::read_dir(v.p("parent/child")).is_ok(),
        "the directory still reads after a failed rmdir"
    );
    fs::write(v.p("parent/child/f"), b"ok").unwrap();
    v.unmount();
}

/// readlink once used the last name a hard-linked symlink was looked up by.
#[test]
fn hard_linked_symlinks_read_through_any_name() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    std::os::unix::fs::symlink("the/target", v.p("s")).unwrap();
    rustix::fs::linkat(
        rustix::fs::CWD,
        v.p("s"),
        rustix::fs::CWD,
        v.p("s2"),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    assert_eq!(fs::read_link(v.p("s")).unwrap(), Path::new("the/target"));
    assert_eq!(fs::read_link(v.p("s2")).unwrap(), Path::new("the/target"));
    fs::remove_file(v.p("s2")).unwrap();
    assert_eq!(fs::read_link(v.p("s")).unwrap(), Path::new("the/target"));
    v.unmount();
}

/// mknod/mkfifo modes were masked by the daemon's umask.
#[test]
fn fifo_modes_are_not_masked_by_the_daemon() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let fifo = v.p("fifo");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 0; mkfifo -m 0666 '{}'", fifo.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let meta = fs::symlink_metadata(&fifo).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o666);
    v.unmount();
}

/// A character device planted as a directory ID file is never opened (its driver's open
/// could have side effects); the directory reads as damaged.
#[test]
fn planted_device_nodes_are_not_opened() {
    if !fuse_available() || !rustix::process::geteuid().is_root() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("d")).unwrap();
    v.unmount();
    let id = backing_of(&v, "d").join("vaultfs.dirid");
    fs::remove_file(&id).unwrap();
    // /dev/null's numbers: harmless if it were opened, but it must not be.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &id,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    v.mount();
    assert_eq!(
        fs::read_dir(v.p("d")).err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO)
    );
    v.unmount();
}

/// SEEK_DATA/SEEK_HOLE with a negative offset is ENXIO, as on ext4.
#[test]
fn seek_with_a_negative_offset_is_enxio() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("f"), b"data").unwrap();
    let f = fs::File::open(v.p("f")).unwrap();
    // SAFETY: lseek on our own fd.
    let r = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), -1, libc::SEEK_DATA) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    drop(f);
    v.unmount();
}
