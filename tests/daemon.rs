//! The mount daemon as users meet it: mount/unmount exit codes, EBUSY naming open files,
//! lazy unmount, SIGTERM, wrong passwords, double mounts.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestVault, fuse_available, vaultfs};
use vaultfs::exitcodes;

fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn unmount_with_open_files_is_busy_then_lazy_works() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("open.txt"), b"kept open").unwrap();
    let mut f = fs::File::open(v.p("open.txt")).unwrap();
    let pid = v.daemon_pid();
    let o = vaultfs(&v.state)
        .arg("unmount")
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exitcodes::BUSY));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("EBUSY") && err.contains("open.txt"),
        "names the open file: {err}"
    );
    assert!(v.is_mounted());
    // Lazy: detached at once, the open file keeps working, the daemon exits once it closes.
    let o = vaultfs(&v.state)
        .arg("unmount")
        .arg("--lazy")
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!v.is_mounted());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "kept open");
    assert!(
        fs::read_dir(v.state.join("vaultfs/mounts"))
            .unwrap()
            .next()
            .is_some(),
        "daemon still serving"
    );
    drop(f);
    assert!(
        wait_gone(pid),
        "daemon exits after the kernel releases the mount"
    );
    // Nothing was lost.
    v.mount();
    assert_eq!(fs::read(v.p("open.txt")).unwrap(), b"kept open");
    v.unmount();
}

#[test]
fn sigterm_detaches_and_the_daemon_exits_cleanly() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("before-term"), vec![7u8; 100_000]).unwrap();
    let pid = v.daemon_pid();
    // SAFETY: sending SIGTERM to our own test daemon.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(wait_gone(pid), "daemon exits after SIGTERM");
    assert!(!v.is_mounted());
    v.mount();
    assert_eq!(fs::read(v.p("before-term")).unwrap(), vec![7u8; 100_000]);
    v.unmount();
}

#[test]
fn unmount_waits_for_the_daemon() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let pid = v.daemon_pid();
    v.unmount();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.split(' ').nth(2) == Some("Z"),
        "daemon gone when unmount returns"
    );
}

#[test]
fn mount_refusals_have_clear_errors_and_codes() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    // Wrong password.
    fs::write(v.tmp.path().join("bad"), "wrong\n").unwrap();
    let o = vaultfs(&v.state)
        .arg("mount")
        .arg("--passfile")
        .arg(v.tmp.path().join("bad"))
        .arg(&v.vault)
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exitcodes::WRONG_PASSWORD));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong password"));
    assert!(!v.is_mounted());
    // Mount point missing or not a directory.
    for bad in [v.tmp.path().join("missing"), v.passfile.clone()] {
        let o = vaultfs(&v.state)
            .arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg(&v.vault)
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(exitcodes::MOUNT_FAILED),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Mounted twice: same mount point, or the same vault elsewhere.
    v.mount();
    let o = v.mount_args(&[]);
    assert_eq!(o.status.code(), Some(exitcodes::MOUNT_FAILED));
    assert!(String::from_utf8_lossy(&o.stderr).contains("busy"));
    let other = v.tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let started = Instant::now();
    let o = vaultfs(&v.state)
        .arg("mount")
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&v.vault)
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exitcodes::MOUNT_FAILED));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already mounted"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a vault that is mounted is refused at once, not after the wait for an exiting daemon"
    );
    // Bad -o option.
    let o = vaultfs(&v.state)
        .arg("mount")
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["-o", "bogus"])
        .arg(&v.vault)
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exitcodes::USAGE));
    v.unmount();
    // Not a vaultfs mount.
    let o = vaultfs(&v.state)
        .arg("unmount")
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exitcodes::NOT_MOUNTED));
}

/// `umount` returns before the daemon has exited; a mount right after it met the old
/// daemon's vault lock and failed (xfstests generic/162, under load). A new mount waits for a
/// lock holder while the vault is mounted nowhere.
#[test]
fn a_mount_right_after_umount_waits_for_the_old_daemon() {
    use std::os::fd::AsRawFd;
    if !fuse_available() || !rustix::process::geteuid().is_root() {
        return;
    }
    let v = TestVault::new(4096);
    for round in 0..5 {
        v.mount();
        fs::write(v.p(&format!("f{round}")), b"x").unwrap();
        // (A child another test forks in the meantime holds our file's fd until its exec:
        // the mount can be busy for that moment.)
        let mut tries = 0;
        loop {
            let o = std::process::Command::new("umount")
                .arg(&v.mnt)
                .output()
                .unwrap();
            if o.status.success() {
                break;
            }
            tries += 1;
            assert!(tries < 50, "{}", String::from_utf8_lossy(&o.stderr));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    v.mount();
    assert_eq!(fs::read_dir(&v.mnt).unwrap().count(), 5);
    v.unmount();
    // A holder that takes its time (1.5 s): the mount waits, then succeeds.
    let marker = fs::File::open(v.vault.join(vaultfs::vault::layout::MARKER_FILE)).unwrap();
    assert_eq!(
        unsafe { libc::flock(marker.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(marker);
    });
    let started = Instant::now();
    v.mount();
    assert!(started.elapsed() >= Duration::from_millis(1400));
    releaser.join().unwrap();
    v.unmount();
}

fn mount_options_of(mnt: &Path) -> String {
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = fs::canonicalize(mnt).unwrap();
    mi.lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .unwrap()
        .to_string()
}

/// Always nosuid,nodev; default_permissions wherever anyone but root can enter (as root
/// without --allow-other only root can, and the kernel's check would cost a round trip per
/// file created or removed).
#[test]
fn mounts_are_nosuid_nodev_and_check_permissions_where_others_enter() {
    if !fuse_available() {
        return;
    }
    let root = rustix::process::geteuid().is_root();
    let v = TestVault::new(4096);
    for (args, checked) in [
        (&[][..], !root),
        (&["--allow-other"][..], true),
        (&["-o", "default_permissions"][..], true),
    ] {
        if args.first() == Some(&"--allow-other") && !root {
            continue; // needs user_allow_other in /etc/fuse.conf
        }
        let o = v.mount_args(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line = mount_options_of(Path::new(&v.mnt));
        assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
        assert!(line.contains("fuse.vaultfs"), "{line}");
        assert_eq!(
            line.contains("default_permissions"),
            checked,
            "{args:?}: {line}"
        );
        v.unmount();
    }
    assert!(Path::new(&v.mnt).read_dir().unwrap().next().is_none());
}

/// Root passes permission bits, but executing still needs an x bit. Without
/// default_permissions vaultfs answers access(2) itself: the answers must be the kernel's.
#[test]
fn root_gets_the_same_answers_with_and_without_default_permissions() {
    if !fuse_available() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("\n*** SKIPPING: only root mounts leave out default_permissions ***\n");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let v = TestVault::new(4096);
    let access = |p: &Path, mode: i32| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        }
    };
    let mut answers = Vec::new();
    for args in [&[][..], &["-o", "default_permissions"][..]] {
        let o = v.mount_args(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (file, dir) = (v.p("f"), v.p("d"));
        fs::write(&file, b"#!/bin/sh\nexit 0\n").unwrap();
        fs::create_dir(&dir).unwrap();
        let mut seen = Vec::new();
        for (file_mode, dir_mode) in [
            (0o644, 0o000),
            (0o000, 0o700),
            (0o100, 0o000),
            (0o001, 0o644),
        ] {
            fs::set_permissions(&file, fs::Permissions::from_mode(file_mode)).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(dir_mode)).unwrap();
            let exec = std::process::Command::new(&file)
                .status()
                .map(|s| s.success())
                .map_err(|e| e.raw_os_error());
            seen.push((
                file_mode,
                access(&file, libc::R_OK),
                access(&file, libc::W_OK),
                access(&file, libc::X_OK),
                access(&dir, libc::R_OK | libc::W_OK | libc::X_OK),
                exec,
                fs::read(&file).is_ok(),
                fs::read_dir(&dir).is_ok(),
            ));
        }
        fs::remove_file(&file).unwrap();
        fs::remove_dir(&dir).unwrap();
        v.unmount();
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1]);
    // And they are root's: everything but executing a file without an x bit.
    let eacces = libc::EACCES;
    assert_eq!(answers[0][0].3, eacces, "{:?}", answers[0]);
    assert_eq!(answers[0][0].5, Err(Some(eacces)), "{:?}", answers[0]);
    assert_eq!(
        answers[0][1].1, 0,
        "root reads a mode-000 file: {:?}",
        answers[0]
    );
    assert_eq!(answers[0][2].5, Ok(true), "{:?}", answers[0]);
    assert!(
        answers[0].iter().all(|a| a.4 == 0 && a.7),
        "{:?}",
        answers[0]
    );
}

/// A file the owner opened and handed to another user (a shell redirect into a command run
/// as someone else, a log file systemd opens for a service) closes without error: the kernel
/// sends FLUSH with the closing process's credentials, and where it checks permissions
/// itself vaultfs lets no filter of its own turn that away.
#[test]
fn a_file_handed_to_another_user_closes_cleanly() {
    if !fuse_available() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("\n*** SKIPPING: needs root to hand a file to another user ***\n");
        return;
    }
    use std::os::fd::AsRawFd;
    let v = TestVault::new(4096);
    for args in [&["-o", "default_permissions"][..], &["--allow-other"][..]] {
        let o = v.mount_args(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = fs::File::create(v.p("handed")).unwrap();
        let fd = out.as_raw_fd();
        // SAFETY: the child makes only async-signal-safe calls (setgid, setuid, write,
        // close, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                let msg = b"from another user\n";
                let ok = libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(65534) == 0
                    && libc::setuid(65534) == 0
                    && libc::write(fd, msg.as_ptr().cast(), msg.len()) == msg.len() as isize;
                // The close is what sends FLUSH.
                let closed = libc::close(fd) == 0;
                libc::_exit(if !ok {
                    2
                } else if !closed {
                    3
                } else {
                    0
                });
            }
        }
        drop(out);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{args:?}: child status {status:#x} (2: setuid or write failed, 3: close failed)"
        );
        assert_eq!(fs::read(v.p("handed")).unwrap(), b"from another user\n");
        fs::remove_file(v.p("handed")).unwrap();
        v.unmount();
    }
}

/// What `stat` says of an entry: (uid, gid, mode bits, file type bits).
fn owner_and_mode(p: &Path) -> (u32, u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777, m.mode() & libc::S_IFMT)
}

/// New entries belong to whoever made them, take a set-group-ID directory's group, and keep
/// every mode bit asked for (set-ID bits too), on the mount and, after a remount, in the
/// backing store: made by root (the daemon's own uid, which needs no chown) and by another
/// user, as files, FIFOs and symlinks.
#[test]
fn new_entries_get_their_makers_owner_group_and_mode() {
    if !fuse_available() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("\n*** SKIPPING: needs root to make entries as another user ***\n");
        return;
    }
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let v = TestVault::new(4096);
    // The other user must reach the mount point.
    v.mount_for_everyone();
    fs::create_dir(v.p("open")).unwrap();
    fs::create_dir(v.p("sgid")).unwrap();
    std::os::unix::fs::chown(v.p("sgid"), Some(0), Some(1234)).unwrap();
    fs::set_permissions(v.p("open"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(v.p("sgid"), fs::Permissions::from_mode(0o2777)).unwrap();

    // (maker uid = gid, path, kind, mode); made in a forked child with umask 0.
    let made: Vec<(u32, &str, char, u32)> = vec![
        (0, "open/root-file", 'f', 0o640),
        (0, "open/root-suid", 'f', 0o4755),
        (0, "sgid/root-file", 'f', 0o600),
        (0, "open/root-fifo", 'p', 0o620),
        (65534, "open/user-file", 'f', 0o604),
        (65534, "open/user-sticky", 'f', 0o1644),
        (65534, "sgid/user-file", 'f', 0o644),
        (65534, "open/user-fifo", 'p', 0o660),
        (65534, "open/user-link", 'l', 0o777),
    ];
    for &(uid, rel, kind, mode) in &made {
        let path = CString::new(v.p(rel).as_os_str().as_bytes()).unwrap();
        let target = CString::new("somewhere").unwrap();
        // SAFETY: the child makes only async-signal-safe calls (umask, setgroups, setgid,
        // setuid, open, close, mknod, symlink, _exit) on strings made before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::umask(0);
                let ok = libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(uid) == 0
                    && libc::setuid(uid) == 0;
                let done = ok
                    && match kind {
                        'f' => {
                            let fd = libc::open(
                                path.as_ptr(),
                                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                                mode,
                            );
                            fd >= 0 && libc::close(fd) == 0
                        }
                        'p' => libc::mknod(path.as_ptr(), libc::S_IFIFO | mode, 0) == 0,
                        _ => libc::symlink(target.as_ptr(), path.as_ptr()) == 0,
                    };
                libc::_exit(if done { 0 } else { *libc::__errno_location() });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{rel}: the child could not make it: errno {}",
            libc::WEXITSTATUS(status)
        );
    }
    let expected = |uid: u32, rel: &str, kind: char, mode: u32| {
        let gid = if rel.starts_with("sgid/") { 1234 } else { uid };
        let ftype = match kind {
            'f' => libc::S_IFREG,
            'p' => libc::S_IFIFO,
            _ => libc::S_IFLNK,
        };
        (uid, gid, mode, ftype)
    };
    for round in ["mounted", "remounted"] {
        for &(uid, rel, kind, mode) in &made {
            assert_eq!(
                owner_and_mode(&v.p(rel)),
                expected(uid, rel, kind, mode),
                "{rel} ({round})"
            );
        }
        v.unmount();
        if round == "mounted" {
            let o = v.mount_args(&["--allow-other"]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
}
