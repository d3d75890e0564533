//! What the kernel caches and what it must not: listings follow every change;
//! `--shared-storage` sees changes another writer makes to the backing directory;
//! READDIRPLUS lists a damaged directory without making it usable; set-ID bits drop on
//! unprivileged writes and truncates (vaultfs does that itself under HANDLE_KILLPRIV_V2).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::{TestVault, backing_of, errno_of, fuse_available, run_ok, vaultfs};

/// A second machine's change, delivered by a sync client: a copy of the vault is mounted
/// elsewhere and written, and its backing files are copied over the first vault's.
#[test]
fn shared_storage_sees_changes_made_behind_its_back() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount_args(&["--shared-storage"]);
    assert!(v.is_mounted());
    fs::write(v.p("f"), b"first version").unwrap();
    fs::create_dir(v.p("d")).unwrap();
    assert_eq!(fs::read(v.p("f")).unwrap(), b"first version");
    let listed = |v: &TestVault| {
        let mut names: Vec<String> = fs::read_dir(v.p("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert!(listed(&v).is_empty());

    // The other machine: a copy of the vault, changed through its own mount.
    let other_vault = v.tmp.path().join("other-vault");
    let other_mnt = v.tmp.path().join("other-mnt");
    fs::create_dir(&other_mnt).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(&v.vault).arg(&other_vault));
    run_ok(
        vaultfs(&v.state)
            .arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg(&other_vault)
            .arg(&other_mnt),
    );
    fs::write(other_mnt.join("f"), b"second version, longer").unwrap();
    fs::write(other_mnt.join("d/new"), b"made elsewhere").unwrap();
    run_ok(vaultfs(&v.state).arg("unmount").arg(&other_mnt));

    // The sync client copies the changed files in place (a copy has the same keys and
    // directory IDs, so the same backing paths).
    for rel in ["f", "d/new"] {
        let here = backing_of(&v, rel);
        let there = other_vault.join(here.strip_prefix(&v.vault).unwrap());
        run_ok(Command::new("cp").arg(there).arg(here));
    }
    assert_eq!(
        fs::metadata(v.p("f")).unwrap().len(),
        22,
        "size from the backing file, not the kernel's cache"
    );
    assert_eq!(fs::read(v.p("f")).unwrap(), b"second version, longer");
    assert_eq!(listed(&v), ["new"]);
    assert_eq!(fs::read(v.p("d/new")).unwrap(), b"made elsewhere");
    v.unmount();
}

#[test]
fn readdirplus_lists_a_damaged_directory_that_still_gives_eio() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("bad")).unwrap();
    fs::write(v.p("bad/inside"), b"x").unwrap();
    fs::create_dir(v.p("good")).unwrap();
    fs::write(v.p("plain"), b"ok").unwrap();
    v.unmount();
    let id_file = backing_of(&v, "bad").join("vaultfs.dirid");
    let mut id = fs::read(&id_file).unwrap();
    id[20] ^= 1;
    fs::write(&id_file, &id).unwrap();

    v.mount();
    // A listing with attributes (ls -l reads through READDIRPLUS) still names it...
    // (ls fails on its lstat of the damaged one: its listing entry is not cached).
    let out = Command::new("ls").arg("-l").arg(&v.mnt).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Input/output error"));
    for name in ["bad", "good", "plain"] {
        assert!(text.contains(name), "ls -l lists {name}: {text}");
    }
    // ...but using it gives EIO, every time, while its neighbours work.
    for _ in 0..3 {
        assert_eq!(errno_of(fs::metadata(v.p("bad"))), libc::EIO);
        assert_eq!(errno_of(fs::read_dir(v.p("bad"))), libc::EIO);
        assert_eq!(errno_of(fs::read(v.p("bad/inside"))), libc::EIO);
    }
    assert!(fs::metadata(v.p("good")).unwrap().is_dir());
    assert_eq!(fs::read(v.p("plain")).unwrap(), b"ok");
    v.unmount();

    // Repaired (the ID put back), it works again.
    id[20] ^= 1;
    fs::write(&id_file, &id).unwrap();
    v.mount();
    run_ok(Command::new("ls").arg("-l").arg(&v.mnt));
    assert_eq!(fs::read(v.p("bad/inside")).unwrap(), b"x");
    v.unmount();
}

#[test]
fn unprivileged_write_and_truncate_drop_set_id_bits() {
    if !fuse_available() || !rustix::process::geteuid().is_root() {
        return; // needs root to act as another user
    }
    let v = TestVault::new(4096);
    v.mount_for_everyone();
    let f = v.p("prog");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    let set = |mode: u32| fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
    let mode = || fs::metadata(&f).unwrap().mode() & 0o7777;
    let as_nobody = |script: &str| {
        run_ok(
            Command::new("setpriv")
                .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                .args(["sh", "-c", script, "sh"])
                .arg(&f),
        )
    };

    set(0o6777);
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"# root\n"))
        .unwrap();
    assert_eq!(mode(), 0o6777, "root keeps the bits (CAP_FSETID)");
    as_nobody("printf 'echo hi\\n' >> \"$1\"");
    assert_eq!(mode(), 0o0777, "a write by another user drops both");
    set(0o6767);
    as_nobody("printf 'echo hi\\n' >> \"$1\"");
    assert_eq!(
        mode(),
        0o0767,
        "set-group-ID without group execute, writer outside the group: dropped"
    );
    std::os::unix::fs::chown(&f, None, Some(65534)).unwrap();
    set(0o6767);
    as_nobody("printf 'echo hi\\n' >> \"$1\"");
    assert_eq!(
        mode(),
        0o2767,
        "set-group-ID without group execute, writer in the group: kept"
    );
    std::os::unix::fs::chown(&f, None, Some(0)).unwrap();
    set(0o6777);
    as_nobody("truncate -s 3 \"$1\"");
    assert_eq!(mode(), 0o0777, "a truncate by another user drops both");
    assert_eq!(fs::read(&f).unwrap(), b"#!/");
    v.unmount();
    // What the mount showed is what the backing inode holds.
    assert_eq!(
        fs::metadata(backing_of(&v, "prog")).unwrap().mode() & 0o7777,
        0o0777
    );
}

/// A daemon allowed few fds (512: 256 for non-directory nodes) serving thousands of files:
/// nodes beyond the budget close their fds and reopen by name, renames and hard links keep
/// working, an open file that is unlinked stays readable, and the fd count stays bounded.
#[test]
fn more_files_than_the_fd_budget() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    let mount = Command::new("prlimit")
        .arg("--nofile=512:512")
        .arg(env!("CARGO_BIN_EXE_vaultfs"))
        .env("XDG_STATE_HOME", &v.state)
        .arg("mount")
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&v.vault)
        .arg(&v.mnt)
        .status()
        .unwrap();
    assert!(mount.success());
    let n = 3000;
    for i in 0..n {
        fs::write(v.p(&format!("f{i}")), format!("contents of {i}")).unwrap();
    }
    // Early files were evicted long ago: each reopens by name.
    for i in (0..n).step_by(7) {
        assert_eq!(
            fs::read_to_string(v.p(&format!("f{i}"))).unwrap(),
            format!("contents of {i}")
        );
        let m = fs::metadata(v.p(&format!("f{i}"))).unwrap();
        assert_eq!(m.len(), format!("contents of {i}").len() as u64);
    }
    let listed = run_ok(Command::new("ls").arg("-l").arg(&v.mnt));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        n + 1
    );
    // Renamed, and replaced by a rename, after eviction.
    fs::rename(v.p("f1"), v.p("renamed")).unwrap();
    fs::rename(v.p("f2"), v.p("f3")).unwrap();
    assert_eq!(fs::read_to_string(v.p("renamed")).unwrap(), "contents of 1");
    assert_eq!(fs::read_to_string(v.p("f3")).unwrap(), "contents of 2");
    // A hard link, its first name removed: the other name still works.
    fs::hard_link(v.p("f4"), v.p("link")).unwrap();
    fs::remove_file(v.p("f4")).unwrap();
    for i in 10..n {
        fs::metadata(v.p(&format!("f{i}"))).unwrap();
    }
    assert_eq!(fs::read_to_string(v.p("link")).unwrap(), "contents of 4");
    // Open, unlinked, then read and stat through the fd after thousands of other lookups.
    let mut open = fs::File::open(v.p("f5")).unwrap();
    fs::remove_file(v.p("f5")).unwrap();
    for i in 10..n {
        fs::metadata(v.p(&format!("f{i}"))).unwrap();
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut open, &mut s).unwrap();
    assert_eq!(s, "contents of 5");
    assert_eq!(open.metadata().unwrap().len(), 13);
    drop(open);
    let pid = v.daemon_pid();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(fds < 400, "{fds} fds open in the daemon");
    v.unmount();
}

/// Names in a directory, read through libc with a fresh handle: up to `limit` entries, from
/// `seek` (a telldir() cookie) if given; returns them with the cookie after the last.
fn read_names(dir: &std::path::Path, seek: Option<i64>, limit: usize) -> (Vec<String>, i64) {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path; the DIR is closed below and its entries copied before that.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir {}", dir.display());
        if let Some(pos) = seek {
            libc::seekdir(d, pos);
        }
        let mut names = Vec::new();
        while names.len() < limit {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
            let name = name.to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        let pos = libc::telldir(d);
        libc::closedir(d);
        (names, pos)
    }
}

/// Listings follow every change made through the mount, and a telldir() cookie works on a
/// fresh directory stream (its first read then starts past 0).
#[test]
fn listings_follow_changes_and_telldir_cookies_work_on_fresh_streams() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let d = v.p("d");
    fs::create_dir(&d).unwrap();
    let mut want: Vec<String> = (0..1500).map(|i| format!("file-{i:04}")).collect();
    for n in &want {
        fs::write(d.join(n), b"").unwrap();
    }
    let full = |d: &std::path::Path| {
        let mut names = read_names(d, None, usize::MAX).0;
        names.sort();
        names
    };
    // Compares listings, naming only the differences (listings are long).
    let same = |got: Vec<String>, want: &[String], what: &str| {
        let extra: Vec<_> = got.iter().filter(|n| !want.contains(n)).collect();
        let missing: Vec<_> = want.iter().filter(|n| !got.contains(n)).collect();
        assert!(
            extra.is_empty() && missing.is_empty() && got.len() == want.len(),
            "{what}: extra {:?}, missing {:?} (first 5 of {} and {}), {} listed for {}",
            &extra[..extra.len().min(5)],
            &missing[..missing.len().min(5)],
            extra.len(),
            missing.len(),
            got.len(),
            want.len()
        );
    };
    for round in 0..3 {
        // Resuming a listing on a fresh handle from a telldir() cookie: the daemon is asked
        // to start past 0 on a handle that never listed.
        let (first, pos) = read_names(&d, None, 300);
        let (rest, _) = read_names(&d, Some(pos), usize::MAX);
        let mut both: Vec<String> = first.into_iter().chain(rest).collect();
        both.sort();
        same(both, &want, &format!("round {round}, resumed"));
        // A reader that stops after a few entries, then whole listings.
        let (some, _) = read_names(&d, None, 7);
        assert_eq!(some.len(), 7);
        same(full(&d), &want, &format!("round {round}"));
        same(full(&d), &want, &format!("round {round}, again"));
        // Changes of every kind, then the next listing must show them.
        fs::remove_file(d.join(&want[round])).unwrap();
        fs::rename(
            d.join(&want[10 + round]),
            d.join(format!("renamed-{round}")),
        )
        .unwrap();
        fs::write(d.join(format!("new-{round}")), b"x").unwrap();
        fs::create_dir(d.join(format!("sub-{round}"))).unwrap();
        let moved = want[20 + round].clone();
        fs::rename(d.join(&moved), v.p(&moved)).unwrap();
        let gone = [want[round].clone(), want[10 + round].clone(), moved];
        want.retain(|n| !gone.contains(n));
        want.extend([
            format!("renamed-{round}"),
            format!("new-{round}"),
            format!("sub-{round}"),
        ]);
        want.sort();
        same(full(&d), &want, &format!("round {round}, after changes"));
    }
    // A remount lists the same.
    v.unmount();
    v.mount();
    same(full(&d), &want, "after a remount");
}

/// Reads up to `limit` names (without "." and "..") from an open directory stream.
///
/// # Safety
/// `d` must be an open stream.
unsafe fn next_names(d: *mut libc::DIR, limit: usize) -> Vec<String> {
    let mut names = Vec::new();
    while names.len() < limit {
        // SAFETY: per the contract, `d` is open; the entry is copied before the next call.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        let name = name.to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names
}

/// The kernel keeps listings (FOPEN_CACHE_DIR): a stream it started from its cache and
/// that continues at the daemon after the directory changed (another reader's opendir
/// dropped the old cache) resumes after the same entry: nothing it already returned comes
/// again and nothing that stayed is skipped. With offsets that counted positions in one
/// listing, removing entries the stream had passed shifted it past as many others.
#[test]
fn a_stream_served_from_the_kernel_cache_resumes_after_changes() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    // Each case removes 300 entries the stream has returned, 300 it has not, or both.
    for case in ["passed", "ahead", "both"] {
        let d = v.p(case);
        fs::create_dir(&d).unwrap();
        for i in 0..2000 {
            fs::write(d.join(format!("entry-{i:04}")), b"").unwrap();
        }
        // Fill the kernel's cache with a whole listing; the stream starts from it.
        let had = read_names(&d, None, usize::MAX).0;
        assert_eq!(had.len(), 2000);
        let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path; the stream is closed below.
        let stream = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!stream.is_null());
        // SAFETY: `stream` is open.
        let mut seen = unsafe { next_names(stream, 1000) };
        let ahead: Vec<String> = had.iter().filter(|n| !seen.contains(n)).cloned().collect();
        let mut gone = Vec::new();
        if case != "ahead" {
            gone.extend_from_slice(&seen[..300]);
        }
        if case != "passed" {
            gone.extend_from_slice(&ahead[..300]);
        }
        for n in &gone {
            fs::remove_file(d.join(n)).unwrap();
        }
        for i in 0..300 {
            fs::write(d.join(format!("added-{i:03}")), b"").unwrap();
        }
        // Another reader's opendir finds the cache stale and refills it.
        let now = read_names(&d, None, usize::MAX).0;
        assert_eq!(
            now.len(),
            2000 - gone.len() + 300,
            "{case}: the other reader"
        );
        // SAFETY: `stream` is open; closed right after.
        seen.extend(unsafe { next_names(stream, usize::MAX) });
        // SAFETY: opened above.
        unsafe { libc::closedir(stream) };
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "{case}: an entry came twice");
        let missing: Vec<&String> = had
            .iter()
            .filter(|n| !gone.contains(n) && sorted.binary_search(n).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "{case}: {} entries that stayed were skipped, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

/// One getdents64 call on `fd` with a `size`-byte buffer: (name, offset after it) of each
/// entry returned ("." and ".." included); empty at the end.
fn getdents(fd: i32, size: usize) -> Vec<(String, i64)> {
    let mut buf = vec![0u8; size];
    // SAFETY: a valid fd and a buffer of `size` bytes.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), size) };
    assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
    let mut out = Vec::new();
    let mut at = 0;
    while at < n as usize {
        // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, NUL-terminated name.
        let off = i64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap()) as usize;
        let name = &buf[at + 19..at + reclen];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
        out.push((String::from_utf8_lossy(name).into_owned(), off));
        at += reclen;
    }
    out
}

/// getdents64 on `fd` until the end of the directory.
fn getdents_to_end(fd: i32) -> Vec<(String, i64)> {
    let mut all = Vec::new();
    loop {
        let chunk = getdents(fd, 32768);
        if chunk.is_empty() {
            return all;
        }
        all.extend(chunk);
    }
}

fn open_dir(d: &std::path::Path) -> i32 {
    let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd >= 0, "open {}", d.display());
    fd
}

/// A stream listed before a change and resumed after it must not fill the kernel's listing
/// cache with its old listing: stream A reads a first chunk; a whole listing completes the
/// cache; files are created after A's position; stream D's opendir finds the cache stale
/// and restarts it with a first chunk ending where A's did; A reads on from there. If A were
/// served its old listing, the kernel would complete the new cache with it, and every later
/// listing would lack the new files.
#[test]
fn a_stream_listed_before_a_change_does_not_fill_the_cache_after_it() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let d = v.p("d");
    fs::create_dir(&d).unwrap();
    for i in 0..2000 {
        fs::write(d.join(format!("entry-{i:04}")), b"").unwrap();
    }
    // Learn the offsets the new names will have (offsets belong to names), then remove them.
    let new: Vec<String> = (0..100).map(|i| format!("new-{i:03}")).collect();
    for n in &new {
        fs::write(d.join(n), b"").unwrap();
    }
    let fd = open_dir(&d);
    let offsets: std::collections::HashMap<String, i64> = getdents_to_end(fd).into_iter().collect();
    // SAFETY: opened above.
    unsafe { libc::close(fd) };
    for n in &new {
        fs::remove_file(d.join(n)).unwrap();
    }
    // A reads a first small chunk: it ends at offset x.
    let a = open_dir(&d);
    let first = getdents(a, 1024);
    let x = first.last().unwrap().1;
    // A whole listing completes the kernel's cache.
    assert_eq!(read_names(&d, None, usize::MAX).0.len(), 2000);
    // Files that sort after A's position appear.
    let after: Vec<&String> = new.iter().filter(|n| offsets[*n] > x).collect();
    assert!(
        after.len() > 50,
        "{} of 100 new names sort after {x}",
        after.len()
    );
    for n in &after {
        fs::write(d.join(n), b"").unwrap();
    }
    // D restarts the cache; its first chunk ends where A's did.
    let dd = open_dir(&d);
    assert_eq!(getdents(dd, 1024), first, "D's first chunk");
    // A reads on to the end.
    let rest = getdents_to_end(a);
    // SAFETY: opened above.
    unsafe {
        libc::close(a);
        libc::close(dd);
    }
    // Whatever A saw, listings from now on show the new files. (Raw reads: glibc's
    // opendir fstats the directory, and a new mtime would make the kernel drop its cache.)
    let e = open_dir(&d);
    let names: Vec<String> = getdents_to_end(e)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "." && n != "..")
        .collect();
    // SAFETY: opened above.
    unsafe { libc::close(e) };
    let missing: Vec<&&String> = after.iter().filter(|n| !names.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} new files missing from a later listing (A saw {} entries after {x})",
        missing.len(),
        after.len(),
        rest.len()
    );
    assert_eq!(names.len(), 2000 + after.len());
}

/// The inode number getdents64 gives for ".." when `fd` is read from its start.
fn dotdot_ino(fd: i32) -> u64 {
    // SAFETY: a valid fd.
    assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_SET) }, 0);
    let mut buf = vec![0u8; 32768];
    // SAFETY: a valid fd and a buffer of its length.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0, "getdents64: {}", std::io::Error::last_os_error());
    let mut at = 0;
    while at < n as usize {
        let ino = u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap()) as usize;
        if &buf[at + 19..at + 22] == b"..\0" {
            return ino;
        }
        at += reclen;
    }
    panic!("no \"..\" entry");
}

/// A directory moved to another parent lists the new parent as "..": through a stream
/// kept open across the move and read again from its start (its listing, shared by every
/// stream of the directory, was made before the move), and through a new stream.
#[test]
fn a_moved_directory_lists_its_new_parent() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir_all(v.p("a/sub")).unwrap();
    fs::create_dir(v.p("b")).unwrap();
    fs::write(v.p("a/sub/f"), b"x").unwrap();
    let ino = |rel: &str| fs::metadata(v.p(rel)).unwrap().ino();
    let (a, b) = (ino("a"), ino("b"));
    let held = open_dir(&v.p("a/sub"));
    assert_eq!(dotdot_ino(held), a);
    assert_eq!(fs::read_dir(v.p("a/sub")).unwrap().count(), 1);
    fs::rename(v.p("a/sub"), v.p("b/sub")).unwrap();
    assert_eq!(dotdot_ino(held), b, "the stream kept open across the move");
    let fresh = open_dir(&v.p("b/sub"));
    assert_eq!(dotdot_ino(fresh), b, "a new stream");
    // SAFETY: fds this test opened.
    unsafe {
        libc::close(held);
        libc::close(fresh);
    }
    v.unmount();
}
