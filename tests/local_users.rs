//! Issue 15: local users of a shared mount (`--allow-other` on a root mount, the way a server
//! shares a vault) cannot gain privileges, exhaust the daemon's memory or descriptors, flood
//! its log or switch its tamper logging off, and stray signals do not kill it. Each test
//! reproduces one finding of the review and fails on the code before its fix.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::PathBuf;

use common::*;

/// The daemon's log file of a test vault.
fn daemon_log(v: &TestVault) -> PathBuf {
    let o = run_ok(vaultfs(&v.state).args(["status", "--json"]).arg(&v.vault));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.state
        .join("vaultfs")
        .join(status["vault_id"].as_str().unwrap())
        .join("daemon.log")
}

fn log_len(v: &TestVault) -> u64 {
    fs::metadata(daemon_log(v)).map_or(0, |m| m.len())
}

/// Finding 6: SIGUSR1, SIGUSR2, SIGALRM, SIGPROF, SIGIO and SIGPWR (and the other signals
/// whose default is to end a process) left "Transport endpoint is not connected". They are
/// ignored now; SIGTERM still detaches the mount as documented.
#[test]
fn stray_signals_leave_the_mount_alive() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("still-here"), b"alive").unwrap();
    let pid = v.daemon_pid();
    let mut signals = vec![
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGQUIT,
        libc::SIGVTALRM,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSTKFLT,
        libc::SIGTRAP,
        libc::SIGSYS,
        // Second review: these three still killed it.
        libc::SIGILL,
        libc::SIGABRT,
        libc::SIGFPE,
    ];
    signals.extend([libc::SIGRTMIN(), libc::SIGRTMIN() + 5, libc::SIGRTMAX()]);
    for sig in signals {
        // SAFETY: signalling the test's own daemon.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(
            fs::read(v.p("still-here")).unwrap(),
            b"alive",
            "after signal {sig}"
        );
    }
    v.unmount();
    // SIGTERM keeps its meaning: the mount goes, the daemon exits.
    v.mount();
    let pid = v.daemon_pid();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    for _ in 0..200 {
        if !v.is_mounted() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!v.is_mounted(), "SIGTERM detaches the mount");
}

/// Finding 4: fuser logged each unsupported ioctl as a three-line warning: 100,000
/// `ioctl(TCGETS)` by `nobody` wrote 16 MB to root's state directory. They get ENOTTY,
/// quietly, and whatever else floods the log is rate-limited.
#[test]
fn a_hundred_thousand_ioctls_do_not_grow_the_log() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    // Others may reach the mount point.
    fs::set_permissions(
        v.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = v.mount_args(&["--allow-other"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::set_permissions(&v.mnt, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::write(v.p("tty?"), b"no").unwrap();
    fs::set_permissions(
        v.p("tty?"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let before = log_len(&v);
    // SAFETY: the child makes only async-signal-safe calls (setgroups, setgid, setuid, open,
    // ioctl, _exit) before it exits.
    let path = std::ffi::CString::new(v.p("tty?").to_str().unwrap()).unwrap();
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            let dropped = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(65534) == 0
                && libc::setuid(65534) == 0;
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            let mut enotty = 0;
            let mut termios: libc::termios = std::mem::zeroed();
            for _ in 0..100_000 {
                if libc::ioctl(fd, libc::TCGETS, &mut termios) == -1
                    && *libc::__errno_location() == libc::ENOTTY
                {
                    enotty += 1;
                }
            }
            libc::_exit(if !dropped || fd < 0 {
                2
            } else if enotty != 100_000 {
                3
            } else {
                0
            });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (2: setuid or open failed, 3: not every ioctl got ENOTTY)"
    );
    let grown = log_len(&v) - before;
    assert!(grown < 1 << 20, "the log grew by {grown} bytes");
    v.unmount();
}

/// Finding 5: after 10,000 distinct damaged objects the daemon stopped logging damage for
/// the life of the mount: 100,000 junk names listed once, then a damaged header read EIO
/// without a line. Now the lines are rate-limited, never switched off, and counted.
#[test]
fn a_damaged_file_is_logged_after_a_hundred_thousand_junk_names() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("junk")).unwrap();
    fs::write(v.p("victim"), b"soon damaged").unwrap();
    v.unmount();
    let junk_dir = backing_of(&v, "junk");
    for i in 0..100_000 {
        // Names that look encrypted but do not decrypt in this directory.
        fs::File::create(junk_dir.join(format!("{:0>22}", format!("junk{i}")))).unwrap();
    }
    let victim = backing_of(&v, "victim");
    let mut bytes = fs::read(&victim).unwrap();
    bytes[40] ^= 1;
    fs::write(&victim, &bytes).unwrap();
    v.mount();
    let listed = fs::read_dir(v.p("junk")).unwrap().count();
    assert_eq!(listed, 0, "junk names are not listed");
    // The log's burst is spent on junk; a second refills enough for the next line.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(errno_of(fs::read(v.p("victim"))), libc::EIO);
    v.unmount();
    let log = fs::read_to_string(daemon_log(&v)).unwrap();
    let victim_entry = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(victim_entry) && l.contains("damaged objects met")),
        "no line for the damaged file in {} bytes of log",
        log.len()
    );
    assert!(
        log.contains("log lines dropped"),
        "the flood was rate-limited"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("damaged objects met by this mount: 100001")),
        "the count covers what was dropped"
    );
    assert!(log.len() < 1 << 20, "{} bytes of log", log.len());
    let _ = fs::File::open(&victim).map(|f| f.as_raw_fd());
}

/// Finding 1, first half: the vault directory took the plaintext root's mode, so a
/// `chmod 1777` of the mount root opened the whole backing tree to every local user. The
/// root's mode and owner now live in `vaultfs.root`; the vault directory stays private.
#[test]
fn the_vault_directory_stays_private_whatever_the_root_shows() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    // A vault from before `vaultfs.root`, whose directory someone opened up.
    fs::set_permissions(&v.vault, fs::Permissions::from_mode(0o755)).unwrap();
    let o = v.mount_args(&["--allow-other"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::metadata(&v.mnt).unwrap().mode() & 0o7777,
        0o755,
        "the root shows as before"
    );
    assert_eq!(fs::metadata(&v.vault).unwrap().mode() & 0o7777, 0o700);
    fs::set_permissions(&v.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(&v.mnt, Some(65534), Some(65534)).unwrap();
    let root = fs::metadata(&v.mnt).unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid(), root.gid()),
        (0o1777, 65534, 65534)
    );
    let backing = fs::metadata(&v.vault).unwrap();
    assert_eq!((backing.mode() & 0o7777, backing.uid()), (0o700, 0));
    // The sticky root works as one (the kernel checks against what vaultfs reports).
    fs::write(v.p("roots"), b"root's").unwrap();
    v.unmount();
    let o = v.mount_args(&["--allow-other"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = fs::metadata(&v.mnt).unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid()),
        (0o1777, 65534),
        "kept across mounts"
    );
    v.unmount();
    assert_eq!(fs::metadata(&v.vault).unwrap().mode() & 0o7777, 0o700);
}

/// Finding 1, second half: where a backing directory is reachable by others anyway (here
/// the vault directory is opened up by hand after the mount, as a shared parent would), a
/// user racing the daemon's mkdir and symlink by renaming a hard link to a root-owned file
/// over each new backing entry got root to chown that file to them (the review's attack
/// won within 11 attempts with mkfifo). New entries are set up only through their own fd,
/// or after checking that the name still holds what the daemon just made.
#[test]
fn racing_new_backing_entries_never_moves_ownership() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount_for_everyone();
    // A directory of the attacker's own: its backing directory is theirs too.
    fs::create_dir(v.p("shared")).unwrap();
    std::os::unix::fs::chown(v.p("shared"), Some(65534), Some(65534)).unwrap();
    let shared = backing_of(&v, "shared");
    fs::set_permissions(&v.vault, fs::Permissions::from_mode(0o755)).unwrap();
    // The victim: root's, writable by all (as the review's), on the vault's filesystem.
    let victim = v.tmp.path().join("victim");
    fs::write(&victim, b"root's file").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o666)).unwrap();
    let stop = v.tmp.path().join("stop");
    let attacker = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "race_attacker", "--ignored", "--nocapture"])
        .env("RACE_DIR", &shared)
        .env("RACE_VICTIM", &victim)
        .env("RACE_STOP", &stop)
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    // The requester, as nobody too: 2,000 new directories and symlinks through the mount.
    let o = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && i=0; while [ $i -lt 1000 ]; do mkdir d$i 2>/dev/null; ln -s t l$i 2>/dev/null; i=$((i+1)); done")
        .arg("sh")
        .arg(v.p("shared"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    fs::write(&stop, b"").unwrap();
    let out = attacker.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = fs::metadata(&victim).unwrap();
    assert_eq!(
        (st.uid(), st.gid(), st.mode() & 0o7777),
        (0, 0, 0o666),
        "the victim changed hands ({:?})",
        out
    );
    fs::set_permissions(&v.vault, fs::Permissions::from_mode(0o700)).unwrap();
    v.unmount();
}

/// The attacker of `racing_new_backing_entries_never_moves_ownership`, run as `nobody` in a
/// process of its own: every entry that appears in the watched backing directory is replaced
/// at once by a hard link to the victim.
#[test]
#[ignore = "a helper process of racing_new_backing_entries_never_moves_ownership"]
fn race_attacker() {
    let (Ok(dir), Ok(victim), Ok(stop)) = (
        std::env::var("RACE_DIR"),
        std::env::var("RACE_VICTIM"),
        std::env::var("RACE_STOP"),
    ) else {
        return;
    };
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (cdir, cvictim) = (c(&dir), c(&victim));
    // SAFETY: plain inotify and link/rename calls on NUL-terminated paths and our buffer.
    unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK);
        assert!(fd >= 0);
        assert!(libc::inotify_add_watch(fd, cdir.as_ptr(), libc::IN_CREATE) >= 0);
        let mut buf = vec![0u8; 64 * 1024];
        let mut swaps = 0u64;
        while !std::path::Path::new(&stop).exists() {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                std::thread::yield_now();
                continue;
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let ev = &*(buf.as_ptr().add(at) as *const libc::inotify_event);
                let name_len = ev.len as usize;
                let name = std::ffi::CStr::from_ptr(buf.as_ptr().add(at + 16).cast());
                at += 16 + name_len;
                let name = name.to_string_lossy();
                if name.is_empty() || name.starts_with("att.") {
                    continue;
                }
                let tmp = c(&format!("{dir}/att.{swaps}"));
                if libc::link(cvictim.as_ptr(), tmp.as_ptr()) == 0 {
                    let target = c(&format!("{dir}/{name}"));
                    if libc::rename(tmp.as_ptr(), target.as_ptr()) == 0 {
                        swaps += 1;
                    } else {
                        libc::unlink(tmp.as_ptr());
                    }
                }
            }
        }
        println!("attacker: {swaps} entries swapped");
    }
}

/// The daemon's resident memory, from /proc.
fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Finding 2: every directory handle kept its own decrypted copy of the listing: 600
/// handles on a 20,000-entry directory took the daemon from 16 MB to 2.9 GB (locked in
/// memory). Streams that list a directory in the same state share one listing now.
#[test]
fn six_hundred_handles_on_a_large_directory_share_one_listing() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("big")).unwrap();
    for i in 0..20_000 {
        fs::File::create(v.p(&format!(
            "big/a-rather-long-file-name-to-take-some-room-{i:05}"
        )))
        .unwrap();
    }
    let pid = v.daemon_pid();
    let before = rss_kib(pid);
    // Each stream reads one entry: its first read goes to the daemon (the kernel caches a
    // listing only once one stream has read it to the end).
    let mut streams = Vec::new();
    for _ in 0..600 {
        let mut d = fs::read_dir(v.p("big")).unwrap();
        assert!(d.next().is_some());
        streams.push(d);
    }
    let during = rss_kib(pid);
    assert!(
        during < 256 * 1024,
        "daemon RSS {during} KiB with 600 open streams (before: {before} KiB)"
    );
    // Second review: a change before each opendir (a rename back and forth) gave every
    // stream a listing of its own again. Each new listing now replaces the older ones in
    // every stream of the directory.
    let (a, b) = (v.p("big/flip-a"), v.p("big/flip-b"));
    fs::write(&a, b"").unwrap();
    for i in 0..200 {
        if i % 2 == 0 {
            fs::rename(&a, &b).unwrap();
        } else {
            fs::rename(&b, &a).unwrap();
        }
        let mut d = fs::read_dir(v.p("big")).unwrap();
        assert!(d.next().is_some());
        streams.push(d);
    }
    let after = rss_kib(pid);
    assert!(
        after < 256 * 1024,
        "daemon RSS {after} KiB with 800 open streams, 200 of them after a change"
    );
    // The streams still read the whole directory.
    let mut first = streams.swap_remove(0);
    assert_eq!(
        first.by_ref().count(),
        20_000,
        "the rest of the first stream"
    );
    drop((first, streams));
    v.unmount();
}

/// Finding 3: directory nodes always kept their fd, and only files were closed for the
/// budget: 19,000 `mkdir`s by `nobody` took a daemon that could not raise its limit (no
/// CAP_SYS_RESOURCE) to its last fd, and root's own `ls`, `touch` and `mkdir` got EMFILE.
/// Directories are evicted like files now (and reopened by name when needed), the budget is
/// taken after the limit is raised, and an open that hits EMFILE closes a batch and retries.
#[test]
fn one_users_directories_do_not_exhaust_the_daemons_descriptors() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    fs::set_permissions(v.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    mount_held_to_512_fds(&v);
    let pid = v.daemon_pid();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 512 ")),
        "{limits}"
    );
    let log = fs::read_to_string(daemon_log(&v)).unwrap_or_default();
    assert!(
        log.contains("open-file limit is 512"),
        "the low limit is logged: {log}"
    );
    fs::set_permissions(&v.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(v.p("theirs")).unwrap();
    std::os::unix::fs::chown(v.p("theirs"), Some(65534), Some(65534)).unwrap();
    // 2,000 directories by nobody, each looked up again, so the kernel keeps them all;
    // then 600 hard-linked files (second review: a file with two names kept its fd for good).
    let o = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && i=0; while [ $i -lt 2000 ]; do mkdir d$i || exit 1; i=$((i+1)); done; ls -l >/dev/null; \
              mkdir hl && i=0; while [ $i -lt 600 ]; do : > hl/h$i && ln hl/h$i hl/h${i}_l || exit 1; i=$((i+1)); done; ls -l hl >/dev/null")
        .arg("sh")
        .arg(v.p("theirs"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nobody's mkdirs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let open = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(open < 512, "{open} fds open");
    // An evicted hard-linked node is reopened by name: after one of its names is unlinked,
    // through the other. A node that knew only the name it was last listed by failed the
    // times the kernel sets at close: `cat` said EIO for 249 of 600 such files.
    let mut failed = Vec::new();
    for i in 0..600 {
        let (gone, kept) = (format!("theirs/hl/h{i}"), format!("theirs/hl/h{i}_l"));
        let (gone, kept) = if i % 2 == 0 {
            (gone, kept)
        } else {
            (kept, gone)
        };
        fs::remove_file(v.p(&gone)).unwrap();
        let used = (|| {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(i % 4 >= 2)
                .open(v.p(&kept))?;
            if i % 4 >= 2 {
                f.write_all(b"kept")?;
            } else {
                f.read_to_end(&mut Vec::new())?;
            }
            // close(2)'s own result: `File`'s drop ignores it.
            if unsafe { libc::close(f.into_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = used {
            failed.push(format!("{kept}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 600 uses by the other name failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Root still works, in the crowded directory too.
    fs::write(v.p("roots"), b"still works").unwrap();
    fs::create_dir(v.p("root-dir")).unwrap();
    assert_eq!(fs::read_dir(v.p("theirs")).unwrap().count(), 2001);
    fs::write(v.p("theirs/d1999/deep"), b"reopened by name").unwrap();
    assert_eq!(
        fs::read(v.p("theirs/d1999/deep")).unwrap(),
        b"reopened by name"
    );
    // Files a user keeps open hold fds the budget cannot close: a quarter of the limit each.
    for i in 0..300 {
        fs::write(v.p(&format!("theirs/f{i}")), b"x").unwrap();
    }
    let hog_dir = v.tmp.path().join("hog");
    fs::create_dir(&hog_dir).unwrap();
    std::os::unix::fs::chown(&hog_dir, Some(65534), Some(65534)).unwrap();
    let (stop, report) = (hog_dir.join("stop"), hog_dir.join("report"));
    let mut hog = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fd_hog", "--ignored"])
        .env("HOG_DIR", v.p("theirs"))
        .env("HOG_STOP", &stop)
        .env("HOG_REPORT", &report)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !report.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let held = fs::read_to_string(&report).unwrap();
    // Two fds a file: an eighth of the limit each (third review: two users at a quarter
    // each took every fd).
    assert_eq!(held.trim(), "64 24", "opened, then errno (EMFILE)");
    fs::write(v.p("root-file"), b"root still opens files").unwrap();
    assert_eq!(fs::read(v.p("theirs/f299")).unwrap(), b"x");
    // And so does another user (one without an account: uid 65533).
    let o = Command::new("cat")
        .arg(v.p("theirs/f299"))
        .uid(65533)
        .gid(65533)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"x");
    fs::write(&stop, b"").unwrap();
    hog.wait().unwrap();
    v.unmount();
}

/// Mounts `v` (with --allow-other) by a daemon that cannot raise its fd limit past 512:
/// CAP_SYS_RESOURCE dropped.
fn mount_held_to_512_fds(v: &TestVault) {
    let o = std::process::Command::new("setpriv")
        .args(["--bounding-set", "-sys_resource", "--", "sh", "-c"])
        .arg("ulimit -n 512 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["mount", "--allow-other", "--passfile"])
        .arg(&v.passfile)
        .arg(&v.vault)
        .arg(&v.mnt)
        .env("XDG_STATE_HOME", &v.state)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// At the daemon's fd limit, a link or mkdir either succeeds or leaves nothing behind: an
/// entry made in the backing directory that then could not be registered for want of a
/// descriptor used to stay, so that the kernel (which marks its cached listing of the
/// directory changed only on success) listed the directory without a name `stat` found.
/// Such entries are undone now; on this code the closing of node fds on EMFILE
/// (`with_fd_room`) lets both calls succeed, so this checks the outcome, not the undo.
#[test]
fn at_the_fd_limit_an_operation_succeeds_or_leaves_nothing_behind() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    mount_held_to_512_fds(&v);
    for i in 0..400 {
        fs::write(v.p(&format!("f{i}")), b"x").unwrap();
    }
    let listed = |v: &TestVault| -> Vec<String> {
        fs::read_dir(&v.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(listed(&v).len(), 400, "the kernel now keeps this listing");
    // Root (who has no per-user cap) holds files open until the daemon has no fd left.
    let mut held = Vec::new();
    for i in 0..400 {
        match fs::File::open(v.p(&format!("f{i}"))) {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    assert!(held.len() < 400, "the daemon ran out of descriptors");
    let linked = fs::hard_link(v.p("f0"), v.p("new-link"));
    let made_dir = fs::create_dir(v.p("new-dir"));
    drop(held);
    for (name, result) in [("new-link", linked), ("new-dir", made_dir)] {
        let exists = fs::symlink_metadata(v.p(name)).is_ok();
        assert_eq!(
            result.is_ok(),
            exists,
            "{name}: the call said {result:?}, but the name exists: {exists}"
        );
        assert_eq!(
            listed(&v).contains(&name.to_string()),
            exists,
            "{name}: the listing agrees with stat"
        );
    }
    v.unmount();
}

/// The user of `one_users_directories_do_not_exhaust_the_daemons_descriptors`, run as
/// `nobody` in a process of its own: opens the files f0, f1, ... of a directory and keeps
/// them open, writes how many it opened and the errno that stopped it, then waits.
#[test]
#[ignore = "a helper process of one_users_directories_do_not_exhaust_the_daemons_descriptors"]
fn fd_hog() {
    let (Ok(dir), Ok(stop), Ok(report)) = (
        std::env::var("HOG_DIR"),
        std::env::var("HOG_STOP"),
        std::env::var("HOG_REPORT"),
    ) else {
        return;
    };
    let mut held = Vec::new();
    let mut errno = 0;
    for i in 0..300 {
        match fs::File::open(format!("{dir}/f{i}")) {
            Ok(f) => held.push(f),
            Err(e) => {
                errno = e.raw_os_error().unwrap_or(-1);
                break;
            }
        }
    }
    let tmp = format!("{report}.tmp");
    fs::write(&tmp, format!("{} {errno}\n", held.len())).unwrap();
    fs::rename(&tmp, &report).unwrap();
    while !std::path::Path::new(&stop).exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
