//! Every access to the backing tree, in one narrow module (a later object-store backend
//! replaces this). The tree is hostile (SPEC section 1): all access is relative to directory
//! fds, never follows a symlink (O_NOFOLLOW / AT_SYMLINK_NOFOLLOW on the last component, and
//! directories are opened one component at a time), opens use O_NONBLOCK so a planted FIFO
//! cannot hang a request, and the type is checked before any I/O.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, Stat, StatVfs, Timespec, Timestamps,
};

fn err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

const OPEN_BASE: OFlags = OFlags::NOFOLLOW
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK);

/// Opens the backing root (the user named it, so symlinks in that path are followed).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Opens subdirectory `name` of `dir`; fails (ENOTDIR/ELOOP) if it is anything else.
pub fn open_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OPEN_BASE | OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .map_err(err)
}

/// An O_PATH fd on subdirectory `name` (needs only search permission on `dir`).
pub fn open_dir_path(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Opens regular file `name`; anything else (symlink, FIFO, device, directory) gives EIO.
pub fn open_regular(dir: BorrowedFd<'_>, name: &str, write: bool) -> io::Result<OwnedFd> {
    // O_PATH first: opening a planted device node or FIFO for real would run its driver's
    // open (a tty could even become the daemon's controlling terminal).
    let path_fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let st = fstat(path_fd.as_fd())?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(eio());
    }
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    reopen(path_fd.as_fd(), access | OFlags::NONBLOCK | OFlags::NOCTTY)
}

/// Creates regular file `name` exclusively, for reading and writing.
pub fn create_regular(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OPEN_BASE | OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(mode),
    )
    .map_err(err)
}

pub fn lstat(dir: BorrowedFd<'_>, name: &str) -> io::Result<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    rustix::fs::fstat(fd).map_err(err)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<StatVfs> {
    rustix::fs::fstatvfs(fd).map_err(err)
}

/// Reads a small regular file whole; longer than `max` bytes gives EIO.
pub fn read_small(dir: BorrowedFd<'_>, name: &str, max: usize) -> io::Result<Vec<u8>> {
    let fd = open_regular(dir, name, false)?;
    let mut buf = vec![0u8; max + 1];
    let mut len = 0;
    while len < buf.len() {
        let n = rustix::io::pread(&fd, &mut buf[len..], len as u64).map_err(err)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    if len > max {
        return Err(eio());
    }
    buf.truncate(len);
    Ok(buf)
}

/// Writes `data` to `name` atomically and durably: a temp file, fsync, rename over `name`.
pub fn write_durable(
    dir: BorrowedFd<'_>,
    name: &str,
    temp: &str,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    let fd = create_regular(dir, temp, mode)?;
    let result = pwrite_all(fd.as_fd(), data, 0)
        .and_then(|_| fsync(fd.as_fd()))
        .and_then(|_| rename_onto_reserved(dir, temp, name));
    if result.is_err() {
        let _ = unlink(dir, temp);
    }
    result
}

/// Clears a directory that someone planted under `name`, a file name vaultfs owns (a
/// directory ID, a long name's side file, a root file): a rename of a file onto it would
/// fail with EISDIR every time, stalling what needs it (a rotation, and with it every
/// revocation). The directory is first renamed aside to a `vaultfs.tmp.` name, which frees
/// `name` whatever it holds (however deep, whatever cannot be deleted), then removed as far
/// as it can be; what is left stays hidden under the temporary name, for fsck to list.
/// Anything else under `name` is left for the rename to replace.
pub fn clear_planted_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match lstat(dir, name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
        _ => return Ok(()),
    }
    log::warn!("moving aside a directory planted in the backing store as '{name}'");
    let aside = temp_name();
    rename(dir, name, dir, &aside, RenameFlags::NOREPLACE)?;
    if let Err(e) = remove_planted_tree(dir, &aside) {
        log::warn!("a planted directory stays as '{aside}': {e}");
    }
    Ok(())
}

/// Renames `from` over `to`, a name vaultfs owns, in `dir`, clearing a directory planted at
/// `to` first, and again each time one reappears there before the rename (third review: a
/// process re-creating it every millisecond won the race every time): the planter has to
/// win every one of 100 attempts in a row.
pub fn rename_onto_reserved(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        clear_planted_dir(dir, to)?;
        match rename(dir, from, dir, to, RenameFlags::empty()) {
            Err(e)
                if attempts < 100
                    && matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENOTEMPTY)) =>
            {
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// A fresh `vaultfs.tmp.<24 hex digits>` name for an entry under construction or moved aside.
pub fn temp_name() -> String {
    let r: [u8; 12] = crate::crypto::keys::random_array().unwrap_or([0; 12]);
    format!(
        "{}{}",
        crate::crypto::names::TEMP_PREFIX,
        data_encoding::HEXLOWER.encode(&r)
    )
}

/// Removes the directory tree `name` in `dir` without recursion and with one fd at a time:
/// each subdirectory met is moved up beside it (under a temporary name) and removed in its
/// turn, so neither depth nor size exhausts the stack or the fd table. Names are raw bytes.
fn remove_planted_tree(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut pending: Vec<std::ffi::CString> =
        vec![std::ffi::CString::new(name).map_err(io::Error::other)?];
    let mut failed = Vec::new();
    while let Some(current) = pending.pop() {
        let sub = rustix::fs::openat(
            dir,
            current.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        let mut entries = Vec::new();
        let mut d = Dir::read_from(&sub).map_err(err)?;
        while let Some(e) = d.read() {
            let e = e.map_err(err)?;
            if !matches!(e.file_name().to_bytes(), b"." | b"..") {
                entries.push((e.file_name().to_owned(), e.file_type()));
            }
        }
        // What cannot be removed (an immutable file) stays where it is, in this directory,
        // and the rest goes on: nothing is left scattered.
        let mut stuck = false;
        for (child, kind) in entries {
            let is_dir = match kind {
                FileType::Directory => true,
                FileType::Unknown => {
                    rustix::fs::statat(&sub, child.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                }
                _ => false,
            };
            if is_dir {
                // Empty ones go at once; others move up to be taken in their turn.
                if rustix::fs::unlinkat(&sub, child.as_c_str(), AtFlags::REMOVEDIR).is_ok() {
                    continue;
                }
                let up = std::ffi::CString::new(temp_name()).map_err(io::Error::other)?;
                match rustix::fs::renameat(&sub, child.as_c_str(), dir, up.as_c_str()) {
                    Ok(()) => pending.push(up),
                    Err(_) => stuck = true,
                }
            } else if rustix::fs::unlinkat(&sub, child.as_c_str(), AtFlags::empty()).is_err() {
                stuck = true;
            }
        }
        drop(sub);
        if stuck || rustix::fs::unlinkat(dir, current.as_c_str(), AtFlags::REMOVEDIR).is_err() {
            failed.push(current);
        }
    }
    match failed.len() {
        0 => Ok(()),
        n => Err(io::Error::other(format!(
            "{n} directories could not be removed (an immutable file?)"
        ))),
    }
}

/// One entry of a backing directory.
pub struct DirEntry {
    pub name: String,
    pub file_type: FileType,
    pub ino: u64,
}

/// Lists a directory. Names that are not UTF-8 are not vaultfs's and are reported as such.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    let mut d = Dir::read_from(dir).map_err(err)?;
    let mut out = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry.map_err(err)?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let name = String::from_utf8(bytes.to_vec()).unwrap_or_else(|_| "\u{fffd}".into());
        out.push(DirEntry {
            name,
            file_type: entry.file_type(),
            ino: entry.ino(),
        });
    }
    Ok(out)
}

pub fn mkdir(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)).map_err(err)
}

pub fn unlink(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(err)
}

pub fn rmdir(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(err)
}

pub fn rename(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
    flags: RenameFlags,
) -> io::Result<()> {
    rustix::fs::renameat_with(from_dir, from, to_dir, to, flags).map_err(err)
}

pub fn symlink(target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(err)
}

pub fn readlink(dir: BorrowedFd<'_>, name: &str) -> io::Result<Vec<u8>> {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|c| c.into_bytes())
        .map_err(err)
}

pub fn link(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> io::Result<()> {
    rustix::fs::linkat(from_dir, from, to_dir, to, AtFlags::empty()).map_err(err)
}

pub fn mknod(dir: BorrowedFd<'_>, name: &str, mode: u32, rdev: u64) -> io::Result<()> {
    let ft = FileType::from_raw_mode(mode);
    rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(mode & 0o7777), rdev).map_err(err)
}

/// chown without following a symlink; `None` leaves that id unchanged.
pub fn chown(
    dir: BorrowedFd<'_>,
    name: &str,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let (uid, gid) = (
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
    );
    rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW).map_err(err)
}

/// A time for `utimens`: a specific time, now, or unchanged.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    At(i64, u32),
    Now,
    Omit,
}

fn timespec(t: SetTime) -> Timespec {
    match t {
        SetTime::At(sec, nsec) => Timespec {
            tv_sec: sec,
            tv_nsec: nsec.into(),
        },
        SetTime::Now => Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::Omit => Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

pub fn utimens(dir: BorrowedFd<'_>, name: &str, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let times = Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    };
    rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(err)
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(done)
}

pub fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(fd, &buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    rustix::fs::ftruncate(fd, len).map_err(err)
}

pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fsync(fd).map_err(err)
}

pub fn fdatasync(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fdatasync(fd).map_err(err)
}

/// The path that reopens or operates on exactly the inode an fd pins.
pub fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// chmod of the inode `fd` pins (not for symlinks: Linux cannot chmod them).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rustix::fs::chmod(proc_path(fd).as_str(), Mode::from_raw_mode(mode)).map_err(err)
}

/// chown of the inode `fd` pins (symlinks included).
pub fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (uid, gid) = (
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
    );
    rustix::fs::chownat(
        fd,
        "",
        uid,
        gid,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(err)
}

/// utimens of the inode `fd` pins (not for symlinks: use `utimens` on the entry).
pub fn utimens_fd(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let times = Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        proc_path(fd).as_str(),
        &times,
        AtFlags::empty(),
    )
    .map_err(err)
}

/// Hard-links the inode `fd` pins as `name` in `dir`.
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path(fd).as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(err)
}

/// Reopens the inode `fd` pins with other flags (no path lookup involved).
/// Opens `path` (a /proc/self/fd path), with O_NOATIME if `noatime`: reads through it then
/// leave the backing atime alone. O_NOATIME needs the file's owner or CAP_FOWNER; without
/// either the open is made without it.
pub fn open_noatime(path: &str, flags: OFlags, noatime: bool) -> io::Result<OwnedFd> {
    if noatime {
        match rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty()) {
            Err(rustix::io::Errno::PERM) => {}
            other => return other.map_err(err),
        }
    }
    rustix::fs::open(path, flags, Mode::empty()).map_err(err)
}

pub fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> io::Result<OwnedFd> {
    rustix::fs::open(
        proc_path(fd).as_str(),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}
