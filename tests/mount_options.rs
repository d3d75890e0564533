//! Mount options a user or xfstests passes: the atime family (FUSE leaves access times to
//! the filesystem, so the daemon's own backing reads must follow them), remount in both
//! forms, and root's explicit `dev` and `suid`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;
use vaultfs::exitcodes;

fn mountinfo_line(mnt: &Path) -> String {
    let mnt = fs::canonicalize(mnt).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .unwrap_or_default()
        .to_string()
}

/// Sets a backing object's atime to 2001 (`touch -a`), so any read that updates it shows.
fn age_atime(p: &Path) {
    let o = Command::new("touch")
        .args(["-a", "-d", "2001-01-01"])
        .arg(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

const AGED: i64 = 978_307_200; // 2001-01-01T00:00:00Z

#[test]
fn reads_update_access_times_as_the_atime_options_say() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("d")).unwrap();
    fs::write(v.p("d/f"), b"content").unwrap();
    v.unmount();
    let (file, dir) = (backing_of(&v, "d/f"), backing_of(&v, "d"));
    // (mount options, file atime updated by a read, directory atime updated by a listing)
    for (opts, file_moves, dir_moves) in [
        (&["-o", "noatime"][..], false, false),
        (&["-o", "nodiratime"][..], true, false),
        (&["-o", "relatime,lazytime"][..], true, true),
        (&["-o", "strictatime"][..], true, true),
        (&[][..], true, true),
    ] {
        age_atime(&file);
        age_atime(&dir);
        let o = v.mount_args(opts);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(fs::read(v.p("d/f")).unwrap(), b"content");
        assert_eq!(fs::read_dir(v.p("d")).unwrap().count(), 1);
        let (f_atime, d_atime) = (
            fs::metadata(v.p("d/f")).unwrap().atime(),
            fs::metadata(v.p("d")).unwrap().atime(),
        );
        assert_eq!(
            f_atime != AGED,
            file_moves,
            "{opts:?}: file atime {f_atime}"
        );
        assert_eq!(
            d_atime != AGED,
            dir_moves,
            "{opts:?}: directory atime {d_atime}"
        );
        v.unmount();
    }
}

#[test]
fn the_mount_fuse_form_takes_every_atime_option() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    let o = vaultfs(&v.state)
        .arg(&v.vault)
        .arg(&v.mnt)
        .arg("-o")
        .arg(format!(
            "passfile={},nodiratime,relatime,lazytime,nosuid,nodev",
            v.passfile.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = mountinfo_line(&v.mnt);
    assert!(line.contains("nodiratime"), "{line}");
    v.unmount();
}

/// `mount -o remount,ro` (xfstests generic/294, 306, 452) and `vaultfs mount --remount`.
#[test]
fn remount_switches_between_read_only_and_writable() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("a"), b"before").unwrap();
    let o = v.mount_args(&["--remount", "-o", "ro"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(errno_of(fs::write(v.p("b"), b"x")), libc::EROFS);
    assert_eq!(fs::read(v.p("a")).unwrap(), b"before");
    assert!(mountinfo_line(&v.mnt).contains(" ro,"));
    // The mount.fuse form, as mount(8) runs it for `mount -o remount,rw`.
    let o = vaultfs(&v.state)
        .arg(&v.vault)
        .arg(&v.mnt)
        .args(["-o", "rw,remount"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::write(v.p("b"), b"after").unwrap();
    assert_eq!(fs::read(v.p("b")).unwrap(), b"after");
    let line = mountinfo_line(&v.mnt);
    assert!(
        line.contains(" rw,") && line.contains("nosuid") && line.contains("nodev"),
        "{line}"
    );
    v.unmount();
    // A daemon started read-only refuses writes itself: making the mount rw is refused.
    let o = v.mount_args(&["--read-only"]);
    assert!(o.status.success());
    let o = v.mount_args(&["--remount", "-o", "rw"]);
    assert_eq!(o.status.code(), Some(exitcodes::MOUNT_FAILED));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mounted read-only"));
    v.unmount();
    // Nothing mounted there.
    let o = v.mount_args(&["--remount", "-o", "ro"]);
    assert_eq!(o.status.code(), Some(exitcodes::NOT_MOUNTED));
}

/// Mounts are nosuid,nodev unless root asks (xfstests generic/184 passes `-o dev`): then a
/// device node in the vault is the device.
#[test]
fn root_may_ask_for_dev_and_suid() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    let null = v.p("null");
    let mknod = || {
        let c = std::ffi::CString::new(null.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) }
    };
    let o = v.mount_args(&["-o", "dev,suid"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = mountinfo_line(&v.mnt);
    assert!(
        !line.contains("nosuid") && !line.contains("nodev"),
        "{line}"
    );
    assert_eq!(mknod(), 0, "{}", std::io::Error::last_os_error());
    fs::write(&null, b"into the void").unwrap();
    assert_eq!(fs::read(&null).unwrap(), b"", "it is /dev/null");
    v.unmount();
    v.mount();
    assert_eq!(errno_of(fs::read(&null)), libc::EACCES, "nodev by default");
    v.unmount();
}
