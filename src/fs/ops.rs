//! FUSE requests, mapped onto `VaultFs`. Every handler answers with an errno on failure and
//! never panics on anything the backing tree holds.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use libc::{EEXIST, EINVAL, EIO, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY, EROFS};

use super::backing::{self, SetTime};
use super::file::OpenFile;
use super::setid::Caller;
use super::{
    DirListing, DirStream, FsResult, Handle, Node, ROOT, VaultFs, errno, order_listing, resume_at,
};
use crate::crypto::dirid::seal_dir_id;
use crate::crypto::header::{FileHeader, NodeType};
use crate::crypto::names::{BackingName, DIRID_FILE, DIRID_NEXT_FILE, NAME_MAX};
use crate::crypto::{blob, keys};

fn e(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn set_time(t: Option<TimeOrNow>) -> SetTime {
    match t {
        None => SetTime::Omit,
        Some(TimeOrNow::Now) => SetTime::Now,
        Some(TimeOrNow::SpecificTime(st)) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(before) => {
                let d = before.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                SetTime::At(sec, nsec)
            }
        },
    }
}

/// Locks two directories for a change, in inode order (one if they are the same).
fn lock_two<'a>(
    a: (u64, &'a super::DirLock),
    b: (u64, &'a super::DirLock),
) -> (super::DirChange<'a>, Option<super::DirChange<'a>>) {
    if a.0 == b.0 {
        (a.1.change(), None)
    } else if a.0 < b.0 {
        let ga = a.1.change();
        (ga, Some(b.1.change()))
    } else {
        let gb = b.1.change();
        (gb, Some(a.1.change()))
    }
}

/// What a `make_node` maker made: a regular file (open), an entry it holds an fd on, or
/// one that can only be found again by name (a symlink).
enum Made {
    File(Box<OpenFile>),
    Fd(std::os::fd::OwnedFd),
    Named,
}

impl Made {
    fn into_file(self) -> Option<OpenFile> {
        match self {
            Made::File(f) => Some(*f),
            _ => None,
        }
    }
}

impl VaultFs {
    /// A directory's entries, "." and ".." first, in offset order.
    fn listing(&self, ino: u64) -> FsResult<Vec<DirListing>> {
        let parent = self
            .nodes
            .lock()
            .expect("lock")
            .get(&ino)
            .map(|n| n.names.parent())
            .ok_or(ENOENT)?;
        let mut listing = vec![
            DirListing {
                name: b".".to_vec(),
                entry: String::new(),
                ino,
                kind: FileType::Directory,
                off: 1,
            },
            DirListing {
                name: b"..".to_vec(),
                entry: String::new(),
                ino: parent,
                kind: FileType::Directory,
                off: 2,
            },
        ];
        listing.extend(self.list_dir(ino)?);
        order_listing(&mut listing);
        Ok(listing)
    }

    /// A handle's first read, or a rewinddir (offset 0), lists the backing directory afresh
    /// (outside any lock) into the handle; later reads page through that snapshot.
    fn snapshot(&self, ino: u64, fh: u64, offset: u64) -> FsResult<()> {
        // A handle's first read may start past 0: a program seeks a new directory stream
        // to a telldir() offset, or the kernel's listing cache has served the start. Offsets
        // are per entry (`entry_offset`), so the fresh listing resumes after the same entry.
        let (_, _, lock) = self.dir(ino)?;
        let changes = lock.changes();
        let current = matches!(
            self.handles.lock().expect("lock").get(&fh),
            Some(Handle::Dir(s)) if !s.listing.is_empty() && !lock.outdated(s.changes)
        );
        if offset != 0 && current {
            return Ok(());
        }
        if offset == 0 {
            lock.listing_from_start(changes);
        }
        // The backing directory's mtime moves with every change by anyone (another writer of
        // shared storage too): with the change count it says whether the last listing is
        // still the directory's.
        let mtime = self
            .node_fd(ino)
            .and_then(|fd| backing::fstat(fd.as_fd()).map_err(errno))
            .map(|st| (st.st_mtime, st.st_mtime_nsec as i64))?;
        let (listing, fresh) = match lock.shared_listing(changes, mtime) {
            Some(listing) => (listing, false),
            None => {
                let listing = Arc::new(self.listing(ino)?);
                lock.share_listing(changes, mtime, &listing);
                (listing, true)
            }
        };
        let mut handles = self.handles.lock().expect("lock");
        if fresh {
            // Every other stream of the directory goes on from the new listing (after the
            // same entry: offsets are per entry), so that a directory is held once however
            // many streams were opened on it between changes (second review: renaming a
            // file before each opendir made one listing per stream again). POSIX leaves it
            // open whether a stream sees entries made or removed since it was opened.
            for h in handles.values_mut() {
                if let Handle::Dir(s) = h
                    && s.ino == ino
                    && !s.listing.is_empty()
                {
                    s.listing = listing.clone();
                    s.changes = changes;
                }
            }
        }
        match handles.get_mut(&fh) {
            Some(Handle::Dir(slot)) => {
                *slot = DirStream {
                    ino,
                    listing,
                    changes,
                };
                Ok(())
            }
            _ => Err(libc::EBADF),
        }
    }

    /// Attributes that carry only an inode number (for "." and ".." in READDIRPLUS).
    fn placeholder_attr(&self, ino: u64) -> fuser::FileAttr {
        fuser::FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Every request passes here: it counts as activity (for --idle) and, at debug level, is
    /// logged with its result. Only inode numbers and errnos, never names or data.
    fn logged<T>(&self, op: &'static str, ino: u64, result: FsResult<T>) -> FsResult<T> {
        self.activity.touch();
        if log::log_enabled!(log::Level::Debug) {
            match &result {
                Ok(_) => log::debug!("{op}(ino {ino}) -> ok"),
                Err(code) => log::debug!(
                    "{op}(ino {ino}) -> {}",
                    std::io::Error::from_raw_os_error(*code)
                ),
            }
        }
        result
    }

    fn check_name(name: &OsStr) -> FsResult<()> {
        if name.len() > NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        Ok(())
    }

    fn writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(EROFS)
        } else {
            Ok(())
        }
    }

    /// Owner of a new entry: the caller, with the parent's group if it is set-group-ID.
    /// Whether `st` can be the entry this daemon just made: of type `kind`, its own, with
    /// the mode it was made with (plus set-group-ID, which a directory inherits) and `links`
    /// links. No one else can make such an entry, so a substituted one is told apart.
    fn just_made(&self, st: &rustix::fs::Stat, kind: u32, mode: u32, links: u64) -> bool {
        st.st_mode & libc::S_IFMT == kind
            && st.st_uid == rustix::process::geteuid().as_raw()
            && st.st_mode & 0o7777 & !libc::S_ISGID == mode
            && st.st_nlink == links
    }

    fn owner_for(&self, req: &Request, parent_fd: std::os::fd::BorrowedFd<'_>) -> (u32, u32, bool) {
        // The parent's set-group-ID bit and group: the root's are not its backing
        // directory's (`root_attr`).
        let parent = backing::fstat(parent_fd).ok().map(|s| {
            if self.is_backing_root(&s) {
                let r = *self.root_attr.lock().expect("lock");
                (r.mode, r.gid)
            } else {
                (s.st_mode, s.st_gid)
            }
        });
        let sgid = parent.is_some_and(|(mode, _)| mode & libc::S_ISGID != 0);
        let gid = match parent {
            Some((_, gid)) if sgid => gid,
            _ => req.gid(),
        };
        (req.uid(), gid, sgid)
    }

    fn do_lookup(&self, parent: u64, name: &OsStr) -> FsResult<(u64, fuser::FileAttr)> {
        Self::check_name(name)?;
        let (pfd, pid, _) = self.dir(parent)?;
        let (bn, fd) = self.open_entry(pfd.as_fd(), &pid, name)?;
        self.register_fd(parent, &pid, bn.entry(), fd, false)
            .map(|(ino, attr, _)| (ino, attr))
    }

    fn do_mkdir(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> FsResult<(u64, fuser::FileAttr)> {
        self.writable()?;
        Self::check_name(name)?;
        let (pfd, pid, lock) = self.dir(parent)?;
        let _g = lock.change();
        let bn = self.new_entry_name(pfd.as_fd(), &pid, name)?;
        let temp = backing::temp_name();
        backing::mkdir(pfd.as_fd(), &temp, 0o700).map_err(errno)?;
        // The directory is found again by name: where others can write the backing directory,
        // another could be in its place by now. Only the one just made is given an ID, an
        // owner and a mode (else a local user could have root chown a directory of its
        // choosing to them); anything else there is left alone.
        let tfd = self
            .with_fd_room(|| backing::open_dir(pfd.as_fd(), &temp).map_err(errno))
            .inspect_err(|_| {
                let _ = backing::rmdir(pfd.as_fd(), &temp);
            })?;
        let st = backing::fstat(tfd.as_fd()).map_err(errno)?;
        let empty = backing::list(tfd.as_fd()).map_err(errno)?.is_empty();
        if !self.just_made(&st, libc::S_IFDIR, 0o700, 2) || !empty {
            log::warn!("a new backing directory was replaced before it was set up: refused");
            return Err(EIO);
        }
        let result = (|| -> FsResult<()> {
            let id: [u8; 16] = keys::random_array().map_err(|_| EIO)?;
            let sealed = seal_dir_id(
                self.keyring.active(),
                &self.keyring.vault_id,
                &pid,
                bn.entry(),
                &id,
            );
            let f = backing::create_regular(tfd.as_fd(), DIRID_FILE, 0o600).map_err(errno)?;
            backing::pwrite_all(f.as_fd(), &sealed, 0).map_err(errno)?;
            backing::fsync(f.as_fd()).map_err(errno)?;
            backing::fsync(tfd.as_fd()).map_err(errno)?;
            let (uid, gid, sgid) = self.owner_for(req, pfd.as_fd());
            if self.is_root {
                backing::chown_fd(tfd.as_fd(), Some(uid), Some(gid)).map_err(errno)?;
            }
            let mode = (mode & 0o7777) | if sgid { libc::S_ISGID } else { 0 };
            backing::chmod_fd(tfd.as_fd(), mode).map_err(errno)?;
            self.write_side_file(pfd.as_fd(), &bn)?;
            backing::rename(
                pfd.as_fd(),
                &temp,
                pfd.as_fd(),
                bn.entry(),
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(errno)
        })();
        if let Err(code) = result {
            if let Ok(tfd) = backing::open_dir(pfd.as_fd(), &temp) {
                let _ = backing::unlink(tfd.as_fd(), DIRID_FILE);
            }
            let _ = backing::rmdir(pfd.as_fd(), &temp);
            return Err(code);
        }
        self.register(parent, pfd.as_fd(), &pid, bn.entry())
            .inspect_err(|_| self.undo_entry(pfd.as_fd(), &bn, true))
    }

    /// Removes an entry just made (with the directory locked for the change) that could not
    /// be registered (out of descriptors): an operation that fails leaves nothing behind,
    /// as the kernel, which marks its cached listing of the directory changed only when an
    /// operation succeeds, expects.
    fn undo_entry(&self, pfd: std::os::fd::BorrowedFd<'_>, bn: &BackingName, dir: bool) {
        if dir {
            if let Ok(fd) = backing::open_dir(pfd, bn.entry()) {
                let _ = backing::unlink(fd.as_fd(), DIRID_FILE);
            }
            let _ = backing::rmdir(pfd, bn.entry());
        } else {
            let _ = backing::unlink(pfd, bn.entry());
        }
        self.remove_side_file(pfd, bn);
    }

    /// Creates a non-directory entry with `make(dir_fd, entry)`, then sets owner and mode
    /// (None for entries without one of their own: symlinks) where they differ.
    fn make_node(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: Option<u32>,
        make: impl Fn(std::os::fd::BorrowedFd<'_>, &str) -> FsResult<Made>,
    ) -> FsResult<(u64, fuser::FileAttr, Option<Arc<OpenFile>>)> {
        self.retry_enospc(|| self.make_node_once(req, parent, name, mode, &make))
    }

    fn make_node_once(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: Option<u32>,
        make: &impl Fn(std::os::fd::BorrowedFd<'_>, &str) -> FsResult<Made>,
    ) -> FsResult<(u64, fuser::FileAttr, Option<Arc<OpenFile>>)> {
        self.writable()?;
        Self::check_name(name)?;
        let (pfd, pid, lock) = self.dir(parent)?;
        let _g = lock.change();
        let bn = self.exclusive_entry_name(pfd.as_fd(), &pid, name)?;
        self.write_side_file(pfd.as_fd(), &bn)?;
        let made = match make(pfd.as_fd(), bn.entry()) {
            Ok(f) => f,
            Err(code) => {
                if code != EEXIST {
                    self.remove_side_file(pfd.as_fd(), &bn);
                }
                return Err(code);
            }
        };
        let (uid, gid, _) = self.owner_for(req, pfd.as_fd());
        let setup = (|| -> FsResult<(std::os::fd::OwnedFd, rustix::fs::Stat)> {
            // The new entry pinned (a new file through its own fd, no second path walk),
            // and its owner and mode set only where what it got differs from what is asked
            // (the backing filesystem's group rules and default ACLs decide what it got).
            let fd = match &made {
                Made::File(f) => {
                    backing::reopen(f.store().as_fd(), rustix::fs::OFlags::PATH).map_err(errno)?
                }
                Made::Fd(fd) => {
                    backing::reopen(fd.as_fd(), rustix::fs::OFlags::PATH).map_err(errno)?
                }
                Made::Named => super::open_path(pfd.as_fd(), bn.entry())?,
            };
            let mut st = backing::fstat(fd.as_fd()).map_err(errno)?;
            // A symlink is found again by name, and where others can write the backing
            // directory another entry could be in its place by now (a hard link to a file of
            // root's): only the symlink just made is given an owner.
            if matches!(made, Made::Named) && !self.just_made(&st, libc::S_IFLNK, 0o777, 1) {
                log::warn!("a new backing symlink was replaced before it was set up: refused");
                return Err(EIO);
            }
            let chown = self.is_root && (st.st_uid, st.st_gid) != (uid, gid);
            if chown {
                backing::chown_fd(fd.as_fd(), Some(uid), Some(gid)).map_err(errno)?;
            }
            // A chown clears set-ID bits, so they are set after it.
            let chmod = mode
                .is_some_and(|m| st.st_mode & 0o7777 != m & 0o7777 || (chown && m & 0o6000 != 0));
            if let Some(m) = mode.filter(|_| chmod) {
                backing::chmod_fd(fd.as_fd(), m & 0o7777).map_err(errno)?;
            }
            if chown || chmod {
                st = backing::fstat(fd.as_fd()).map_err(errno)?;
            }
            Ok((fd, st))
        })();
        let (fd, st) = setup.inspect_err(|_| self.undo_entry(pfd.as_fd(), &bn, false))?;
        let (ino, attr, _) = self
            .register_stat(parent, &pid, bn.entry(), fd, st, false)
            .inspect_err(|_| self.undo_entry(pfd.as_fd(), &bn, false))?;
        let file = made.into_file().map(|f| {
            let f = Arc::new(f);
            self.open_files
                .lock()
                .expect("lock")
                .insert(ino, Arc::downgrade(&f));
            f
        });
        Ok((ino, attr, file))
    }

    /// Stores the ACLs a new entry inherited from its directory; if that fails, the entry
    /// is removed again (a failed call leaves nothing) and the error returned.
    #[allow(clippy::type_complexity)]
    fn with_inherited(
        &self,
        parent: u64,
        name: &OsStr,
        made: (u64, fuser::FileAttr, Option<Arc<OpenFile>>),
        acls: super::xattr::InheritedAcls,
    ) -> FsResult<(u64, fuser::FileAttr, Option<Arc<OpenFile>>)> {
        if let Err(code) = self.store_inherited(made.0, acls) {
            let _ = if made.1.kind == FileType::Directory {
                self.do_rmdir(parent, name)
            } else {
                self.do_unlink(parent, name)
            };
            return Err(code);
        }
        Ok(made)
    }

    /// A new regular file (create, or mknod of S_IFREG), left open and charged to its user.
    fn make_regular_node(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> FsResult<(u64, fuser::FileAttr, Option<Arc<OpenFile>>)> {
        self.make_node(
            req,
            parent,
            name,
            Some(mode),
            self.make_regular(mode, req.uid()),
        )
    }

    /// `make_node`'s maker for a regular file: created with `mode`'s permission bits, with
    /// its header written (or gone again).
    fn make_regular(
        &self,
        mode: u32,
        uid: u32,
    ) -> impl Fn(std::os::fd::BorrowedFd<'_>, &str) -> FsResult<Made> + '_ {
        move |dfd, entry| {
            // The new file stays open with the handle create(2) returns: charged to its user.
            let charge = self.fd_charges.charge(uid)?;
            let fd = backing::create_regular(dfd, entry, mode & 0o777).map_err(errno)?;
            // A half-made file (no header) must not stay behind.
            OpenFile::create(fd, &self.keyring, self.layout)
                .map(|f| Made::File(Box::new(f.with_write_policy(self).with_charge(charge))))
                .inspect_err(|_| {
                    let _ = backing::unlink(dfd, entry);
                })
        }
    }

    /// `make_node`'s maker for a FIFO, socket or device node: a header-only regular file
    /// whose authenticated header names the type and device number (format 2), created with
    /// `mode`'s permission bits. The kernel serves such a node itself; the daemon never
    /// opens it for I/O.
    fn make_special(
        &self,
        node: NodeType,
        mode: u32,
        rdev: u32,
    ) -> impl Fn(std::os::fd::BorrowedFd<'_>, &str) -> FsResult<Made> + '_ {
        move |dfd, entry| {
            let header = FileHeader::create_node(&self.keyring, node, rdev).map_err(|e| {
                log::error!("cannot create a node header: {e}");
                EIO
            })?;
            let fd = backing::create_regular(dfd, entry, mode & 0o777).map_err(errno)?;
            backing::pwrite_all(fd.as_fd(), &header.encode(), 0)
                .map_err(errno)
                .map(|()| Made::Fd(fd))
                .inspect_err(|_| {
                    let _ = backing::unlink(dfd, entry);
                })
        }
    }

    fn do_unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        Self::check_name(name)?;
        let (pfd, pid, lock) = self.dir(parent)?;
        let _g = lock.change();
        // unlinkat itself tells which generation's name exists and refuses a directory
        // (EISDIR): no stat first.
        for bn in self.candidate_names(&pid, name)? {
            match backing::unlink(pfd.as_fd(), bn.entry()) {
                Ok(()) => {
                    self.remove_side_file(pfd.as_fd(), &bn);
                    return Ok(());
                }
                Err(err) if err.raw_os_error() == Some(ENOENT) => continue,
                Err(err) => return Err(errno(err)),
            }
        }
        Err(ENOENT)
    }

    fn do_rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        Self::check_name(name)?;
        let (pfd, pid, lock) = self.dir(parent)?;
        let _g = lock.change();
        let (bn, st) = self.find_entry(pfd.as_fd(), &pid, name)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(ENOTDIR);
        }
        let child = backing::open_dir_path(pfd.as_fd(), bn.entry()).map_err(errno)?;
        let child_ino = self.fuse_ino(st.st_ino);
        let child_lock = self
            .nodes
            .lock()
            .expect("lock")
            .get(&child_ino)
            .map(|n| n.dir_lock.clone());
        let _cg = child_lock.as_ref().map(|l| l.change());
        let saved = self.retry_with_access(child.as_fd(), 0o700, || {
            let saved = backing::read_small(child.as_fd(), DIRID_FILE, 64).map_err(errno)?;
            self.remove_dir_id_if_empty(child.as_fd())?;
            Ok(saved)
        })?;
        if let Err(err) = backing::rmdir(pfd.as_fd(), bn.entry()) {
            // Put the ID back: a directory without it would read as damaged.
            let temp = backing::temp_name();
            let _ = self.retry_with_access(child.as_fd(), 0o300, || {
                backing::write_durable(child.as_fd(), DIRID_FILE, &temp, &saved, 0o600)
                    .map_err(errno)
            });
            return Err(errno(err));
        }
        self.remove_side_file(pfd.as_fd(), &bn);
        Ok(())
    }

    /// Removes a directory's ID files if it holds nothing else (ENOTEMPTY otherwise).
    fn remove_dir_id_if_empty(&self, dir: std::os::fd::BorrowedFd<'_>) -> FsResult<()> {
        let readable = backing::reopen(
            dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        )
        .map_err(errno)?;
        let entries = backing::list(readable.as_fd()).map_err(errno)?;
        if entries
            .iter()
            .any(|e| e.name != DIRID_FILE && e.name != DIRID_NEXT_FILE)
        {
            return Err(ENOTEMPTY);
        }
        let _ = backing::unlink(dir, DIRID_NEXT_FILE);
        backing::unlink(dir, DIRID_FILE).map_err(errno)
    }

    /// Seals `dir`'s ID for a new place into `vaultfs.dirid.new` (step 1 of a directory move).
    fn stage_dir_id(
        &self,
        dir_ino: u64,
        new_parent_id: &[u8; 16],
        new_entry: &str,
    ) -> FsResult<Arc<std::os::fd::OwnedFd>> {
        let (fd, id, _) = self.dir(dir_ino)?;
        let sealed = seal_dir_id(
            self.keyring.active(),
            &self.keyring.vault_id,
            new_parent_id,
            new_entry,
            &id,
        );
        let temp = backing::temp_name();
        self.retry_with_access(fd.as_fd(), 0o300, || {
            backing::write_durable(fd.as_fd(), DIRID_NEXT_FILE, &temp, &sealed, 0o600)
                .map_err(errno)
        })?;
        Ok(fd)
    }

    /// fsync of one or two directories (best effort: a failure only weakens durability).
    fn sync_dirs(&self, a: u64, b: u64) {
        for ino in if a == b { vec![a] } else { vec![a, b] } {
            if let Ok(fd) = self.readable_dir(ino) {
                let _ = backing::fsync(fd.as_fd());
            }
        }
    }

    /// Step 3 of a directory move: the staged ID replaces the old one.
    fn commit_dir_id(&self, fd: &std::os::fd::OwnedFd) {
        let _ = self.retry_with_access(fd.as_fd(), 0o700, || {
            backing::rename_onto_reserved(fd.as_fd(), DIRID_NEXT_FILE, DIRID_FILE)
                .map_err(errno)?;
            let readable = backing::reopen(
                fd.as_fd(),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            )
            .map_err(errno)?;
            backing::fsync(readable.as_fd()).map_err(errno)
        });
    }

    /// Renames; returns the directories it moved to another parent (their ".." changed).
    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<Vec<u64>> {
        self.writable()?;
        Self::check_name(name)?;
        Self::check_name(newname)?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        // A whiteout (overlayfs) is left at the source by the backing rename itself, as a
        // character device 0:0: atomic, and harmless in the backing tree (no driver).
        let whiteout = flags.contains(RenameFlags::RENAME_WHITEOUT);
        if whiteout && exchange {
            return Err(EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (pfd, pid, plock) = self.dir(parent)?;
        let (npfd, npid, nplock) = self.dir(newparent)?;
        let _guards = lock_two((parent, &*plock), (newparent, &*nplock));
        let (src_bn, src_st) = self.find_entry(pfd.as_fd(), &pid, name)?;
        let dst = match self.find_entry(npfd.as_fd(), &npid, newname) {
            Ok(found) => Some(found),
            Err(ENOENT) => None,
            Err(code) => return Err(code),
        };
        let src_ino = self.fuse_ino(src_st.st_ino);
        let src_is_dir = src_st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if let Some((_, dst_st)) = &dst
            && dst_st.st_ino == src_st.st_ino
        {
            // Same inode (same entry, or two hard links): rename does nothing.
            return if noreplace {
                Err(EEXIST)
            } else {
                Ok(Vec::new())
            };
        }
        if exchange {
            let Some((dst_bn, dst_st)) = dst else {
                return Err(ENOENT);
            };
            let dst_ino = self.fuse_ino(dst_st.st_ino);
            let dst_is_dir = dst_st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let staged_src = if src_is_dir {
                Some(self.stage_dir_id(src_ino, &npid, dst_bn.entry())?)
            } else {
                None
            };
            let staged_dst = if dst_is_dir {
                Some(self.stage_dir_id(dst_ino, &pid, src_bn.entry())?)
            } else {
                None
            };
            if let Err(err) = backing::rename(
                pfd.as_fd(),
                src_bn.entry(),
                npfd.as_fd(),
                dst_bn.entry(),
                rustix::fs::RenameFlags::EXCHANGE,
            ) {
                for fd in staged_src.iter().chain(staged_dst.iter()) {
                    let _ = backing::unlink(fd.as_fd(), DIRID_NEXT_FILE);
                }
                return Err(errno(err));
            }
            if staged_src.is_some() || staged_dst.is_some() {
                self.sync_dirs(parent, newparent);
            }
            staged_src
                .iter()
                .chain(staged_dst.iter())
                .for_each(|fd| self.commit_dir_id(fd));
            let mut nodes = self.nodes.lock().expect("lock");
            if let Some(n) = nodes.get_mut(&src_ino) {
                n.names
                    .moved(parent, src_bn.entry(), newparent, dst_bn.entry());
            }
            if let Some(n) = nodes.get_mut(&dst_ino) {
                n.names
                    .moved(newparent, dst_bn.entry(), parent, src_bn.entry());
            }
            let moved: Vec<u64> = [(src_ino, src_is_dir), (dst_ino, dst_is_dir)]
                .into_iter()
                .filter(|&(_, is_dir)| is_dir && parent != newparent)
                .map(|(ino, _)| ino)
                .collect();
            Self::parent_changed(&nodes, &moved);
            return Ok(moved);
        }
        if noreplace && dst.is_some() {
            return Err(EEXIST);
        }
        // The target's backing name: the existing entry's, else a new one (active generation).
        let dst_bn = match &dst {
            Some((bn, _)) => bn.clone(),
            None => self.candidate_names(&npid, newname)?.remove(0),
        };
        // Replacing a directory: it must be empty; its ID files go first (restored on failure).
        let mut removed_dir_id: Option<(std::os::fd::OwnedFd, Vec<u8>)> = None;
        if let Some((bn, st)) = &dst {
            let dst_is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            match (src_is_dir, dst_is_dir) {
                (false, true) => return Err(EISDIR),
                (true, false) => return Err(ENOTDIR),
                (true, true) => {
                    let dfd = backing::open_dir_path(npfd.as_fd(), bn.entry()).map_err(errno)?;
                    let saved = self.retry_with_access(dfd.as_fd(), 0o700, || {
                        let saved =
                            backing::read_small(dfd.as_fd(), DIRID_FILE, 64).map_err(errno)?;
                        self.remove_dir_id_if_empty(dfd.as_fd())?;
                        Ok(saved)
                    })?;
                    removed_dir_id = Some((dfd, saved));
                }
                (false, false) => {}
            }
        }
        let restore = |removed: Option<(std::os::fd::OwnedFd, Vec<u8>)>| {
            if let Some((dfd, saved)) = removed {
                let temp = backing::temp_name();
                let _ = self.retry_with_access(dfd.as_fd(), 0o300, || {
                    backing::write_durable(dfd.as_fd(), DIRID_FILE, &temp, &saved, 0o600)
                        .map_err(errno)
                });
            }
        };
        let staged = if src_is_dir {
            match self.stage_dir_id(src_ino, &npid, dst_bn.entry()) {
                Ok(fd) => Some(fd),
                Err(code) => {
                    restore(removed_dir_id);
                    return Err(code);
                }
            }
        } else {
            None
        };
        if dst.is_none()
            && let Err(code) = self.write_side_file(npfd.as_fd(), &dst_bn)
        {
            restore(removed_dir_id);
            return Err(code);
        }
        let mut rflags = if noreplace {
            rustix::fs::RenameFlags::NOREPLACE
        } else {
            rustix::fs::RenameFlags::empty()
        };
        if whiteout {
            rflags |= rustix::fs::RenameFlags::WHITEOUT;
        }
        if let Err(err) = backing::rename(
            pfd.as_fd(),
            src_bn.entry(),
            npfd.as_fd(),
            dst_bn.entry(),
            rflags,
        ) {
            if let Some(fd) = &staged {
                let _ = backing::unlink(fd.as_fd(), DIRID_NEXT_FILE);
            }
            if dst.is_none() {
                self.remove_side_file(npfd.as_fd(), &dst_bn);
            }
            restore(removed_dir_id);
            return Err(errno(err));
        }
        if let Some(fd) = &staged {
            // The move must be durable before the new ID replaces the old one, or a crash
            // could leave the directory where its (new) ID does not match.
            self.sync_dirs(parent, newparent);
            self.commit_dir_id(fd);
        }
        // (The whiteout keeps the source name, and so its side file.)
        if (parent != newparent || src_bn.entry() != dst_bn.entry()) && !whiteout {
            self.remove_side_file(pfd.as_fd(), &src_bn);
        }
        let mut nodes = self.nodes.lock().expect("lock");
        if let Some(n) = nodes.get_mut(&src_ino) {
            n.names
                .moved(parent, src_bn.entry(), newparent, dst_bn.entry());
        }
        let moved = if src_is_dir && parent != newparent {
            vec![src_ino]
        } else {
            Vec::new()
        };
        Self::parent_changed(&nodes, &moved);
        Ok(moved)
    }

    /// Directories moved to another parent: their listings, which hold "..", are made
    /// again (the kernel's are dropped once the rename is answered).
    fn parent_changed(nodes: &std::collections::HashMap<u64, Node>, moved: &[u64]) {
        for ino in moved {
            if let Some(n) = nodes.get(ino) {
                n.dir_lock.count_change();
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // mirrors FUSE's setattr
    pub(super) fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> FsResult<fuser::FileAttr> {
        let (kind, fd) = self.node_kind_fd(ino)?;
        // The name a symlink's times are set through (below): the one `node_fd` last found.
        let (parent, entry) = {
            let nodes = self.nodes.lock().expect("lock");
            let n = nodes.get(&ino).ok_or(ENOENT)?;
            (n.names.parent(), n.names.entry().to_string())
        };
        if (mode.is_some()
            || uid.is_some()
            || gid.is_some()
            || size.is_some()
            || atime.is_some()
            || mtime.is_some())
            && self.config.read_only
        {
            return Err(EROFS);
        }
        if let Some(size) = size {
            match kind {
                FileType::RegularFile => {
                    self.open_file(ino)?.truncate(&self.keyring, size)?;
                }
                FileType::Directory => return Err(EISDIR),
                _ => return Err(EINVAL),
            }
        }
        if ino == ROOT && (mode.is_some() || uid.is_some() || gid.is_some()) {
            // The root's mode and owner live in `vaultfs.root`; the vault directory stays
            // private.
            let mut r = self.root_attr.lock().expect("lock");
            let mut next = *r;
            next.uid = uid.unwrap_or(next.uid);
            next.gid = gid.unwrap_or(next.gid);
            // (chown(2) leaves a directory's set-ID bits as they are.)
            if let Some(mode) = mode {
                next.mode = mode & 0o7777;
            }
            next.save(fd.as_fd()).map_err(errno)?;
            *r = next;
        } else {
            if uid.is_some() || gid.is_some() {
                backing::chown_fd(fd.as_fd(), uid, gid).map_err(errno)?;
            }
            if let Some(mode) = mode {
                if kind == FileType::Symlink {
                    return Err(libc::EOPNOTSUPP);
                }
                backing::chmod_fd(fd.as_fd(), mode & 0o7777).map_err(errno)?;
            }
        }
        if let Some(mode) = mode {
            self.acl_follows_chmod(ino, mode)?;
        }
        // With the writeback cache the kernel keeps times itself and sends them back, mostly
        // unchanged (on every unlink, rename and link of a file): skip the backing write then.
        let unchanged_times = if atime.is_none()
            && kind == FileType::RegularFile
            && self.config.writeback_cache
            && let SetTime::At(sec, nsec) = set_time(mtime)
        {
            backing::fstat(fd.as_fd())
                .ok()
                .filter(|st| (st.st_mtime, st.st_mtime_nsec as u32) == (sec, nsec))
        } else {
            None
        };
        if let Some(st) = unchanged_times
            && size.is_none()
            && mode.is_none()
            && uid.is_none()
            && gid.is_none()
        {
            // Nothing changed since that fstat: it is the answer.
            return Ok(self.attr_of(ino, kind, &st));
        }
        if (atime.is_some() || mtime.is_some()) && unchanged_times.is_none() {
            let (a, m) = (set_time(atime), set_time(mtime));
            if kind == FileType::Symlink {
                // By name (Linux has no fd-based utimens for a symlink itself), after checking
                // that the name still holds this very inode (hard links, renames, unlinks).
                let pfd = self.node_fd(parent)?;
                let here = backing::lstat(pfd.as_fd(), &entry).map_err(errno)?;
                let pinned = backing::fstat(fd.as_fd()).map_err(errno)?;
                if (here.st_dev, here.st_ino) != (pinned.st_dev, pinned.st_ino) {
                    return Err(libc::ESTALE);
                }
                backing::utimens(pfd.as_fd(), &entry, a, m).map_err(errno)?;
            } else {
                backing::utimens_fd(fd.as_fd(), a, m).map_err(errno)?;
            }
        }
        self.getattr_ino(ino)
    }
}

impl Filesystem for VaultFs {
    /// The last word on damage: how many damaged objects this mount met, however many
    /// lines the log's rate limit dropped.
    fn destroy(&mut self) {
        let met = self.damage.count();
        if met > 0 {
            log::warn!("unmounted; damaged objects met by this mount: {met} (run vaultfs fsck)");
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.closer.start()?;
        self.prefetcher.start()?;
        let _ = config.set_max_write(1 << 20);
        // As much readahead as the kernel offers here (root mounts raise it further through
        // the mount's bdi once mounted).
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        // HANDLE_KILLPRIV_V2: vaultfs clears set-user/group-ID bits and file capabilities on
        // write, truncate and fallocate itself (`drop_setid_for`, `drop_file_caps`), so the
        // kernel stops asking for security.capability before every write.
        // READDIRPLUS for every listing (not only the first page, as READDIRPLUS_AUTO would):
        // `rm -rf`, `find` and `ls -l` then need no LOOKUP per entry.
        // POSIX_ACL: the kernel enforces ACLs and caches each inode's; vaultfs stores them,
        // keeps them in step with modes and inherits them (`acl`, `xattr`), with the umask
        // its own to apply (DONT_MASK, below). The kernel turns default_permissions on with it, so
        // it is asked for only where the kernel checks permissions anyway
        // (`MountSettings::kernel_checks_permissions`).
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.config.kernel_checks_permissions {
            wanted |= InitFlags::FUSE_POSIX_ACL;
        }
        if !self.config.shared_storage {
            wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
        }
        if self.config.writeback_cache {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        // Each one the kernel lacks is simply not used.
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                log::info!("the kernel does not offer {flag:?}");
            } else if flag == InitFlags::FUSE_POSIX_ACL {
                self.kernel_acls = true;
            }
        }
        // With ACLs, the umask is vaultfs's to apply: a directory's default ACL replaces it.
        if self.kernel_acls && config.add_capabilities(InitFlags::FUSE_DONT_MASK).is_ok() {
            self.dont_mask = true;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.logged("lookup", parent.0, self.do_lookup(parent.0, name)) {
            Ok((_, attr)) => reply.entry(&self.config.ttl(), &attr, Generation(0)),
            Err(code) => reply.error(e(code)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.forget_node(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.logged("getattr", ino.0, self.getattr_ino(ino.0)) {
            Ok(attr) => reply.attr(&self.config.ttl(), &attr),
            Err(code) => reply.error(e(code)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A truncate by an unprivileged caller drops the set-ID bits, and any truncate or
        // chown the file's capabilities, as the kernel's own rules would
        // (HANDLE_KILLPRIV_V2 leaves it to us).
        let result = self
            .retry_enospc(|| self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime))
            .and_then(|attr| {
                if size.is_some() || uid.is_some() || gid.is_some() {
                    self.drop_file_caps(ino.0)?;
                }
                if size.is_some() && mode.is_none() {
                    self.drop_setid_for(ino.0, &Caller::of(req), false)?;
                    self.getattr_ino(ino.0)
                } else {
                    Ok(attr)
                }
            });
        match self.logged("setattr", ino.0, result) {
            Ok(attr) => reply.attr(&self.config.ttl(), &attr),
            Err(code) => reply.error(e(code)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = (|| {
            // The node's own O_PATH fd: right even after renames and for hard links.
            let fd = self.node_fd(ino.0)?;
            let target = backing::readlink(fd.as_fd(), "").map_err(errno)?;
            blob::open_symlink(&self.keyring, &target)
                .map_err(|err| self.damaged(ino.0, "symlink target", err))
        })();
        match self.logged("readlink", ino.0, result) {
            Ok(t) => reply.data(&t),
            Err(code) => reply.error(e(code)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = mode & libc::S_IFMT;
        let (mode, acls) = match self.inherit_acls(parent.0, mode, umask, false) {
            Ok(inherited) => inherited,
            Err(code) => return reply.error(e(code)),
        };
        if kind == libc::S_IFREG || kind == 0 {
            // A regular file through mknod: same as create, then closed.
            let result = self
                .make_regular_node(req, parent.0, name, mode)
                .and_then(|made| self.with_inherited(parent.0, name, made, acls));
            return match self.logged("mknod", parent.0, result) {
                Ok((_, attr, _)) => reply.entry(&self.config.ttl(), &attr, Generation(0)),
                Err(code) => reply.error(e(code)),
            };
        }
        let Some(node) = NodeType::from_mode(mode) else {
            return reply.error(e(EINVAL));
        };
        let result = self
            .make_node(
                req,
                parent.0,
                name,
                Some(mode),
                self.make_special(node, mode, rdev),
            )
            .and_then(|made| self.with_inherited(parent.0, name, made, acls));
        match self.logged("mknod", parent.0, result) {
            Ok((_, attr, _)) => reply.entry(&self.config.ttl(), &attr, Generation(0)),
            Err(code) => reply.error(e(code)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self
            .inherit_acls(parent.0, mode, umask, true)
            .and_then(|(mode, acls)| {
                let (ino, attr) = self.retry_enospc(|| self.do_mkdir(req, parent.0, name, mode))?;
                let (ino, attr, _) =
                    self.with_inherited(parent.0, name, (ino, attr, None), acls)?;
                Ok((ino, attr))
            });
        match self.logged("mkdir", parent.0, result) {
            Ok((_, attr)) => reply.entry(&self.config.ttl(), &attr, Generation(0)),
            Err(code) => reply.error(e(code)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.logged("unlink", parent.0, self.do_unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(e(code)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.logged("rmdir", parent.0, self.do_rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(e(code)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let sealed = match blob::seal_symlink(self.keyring.active(), target.as_os_str().as_bytes())
        {
            Ok(s) => s,
            Err(crate::crypto::CryptoError::TooLong) => return reply.error(e(libc::ENAMETOOLONG)),
            Err(_) => return reply.error(e(EINVAL)),
        };
        let result = self.make_node(req, parent.0, link_name, None, |dfd, entry| {
            backing::symlink(&sealed, dfd, entry)
                .map_err(errno)
                .map(|_| Made::Named)
        });
        match self.logged("symlink", parent.0, result) {
            Ok((_, attr, _)) => reply.entry(&self.config.ttl(), &attr, Generation(0)),
            Err(code) => reply.error(e(code)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.logged(
            "rename",
            parent.0,
            self.retry_enospc(|| self.do_rename(parent.0, name, newparent.0, newname, flags)),
        ) {
            Ok(moved_dirs) => {
                reply.ok();
                // Their ".." changed: the kernel drops the listings it keeps of them.
                for ino in moved_dirs {
                    self.invalidate_kernel_cache(ino);
                }
            }
            Err(code) => reply.error(e(code)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            self.writable()?;
            Self::check_name(newname)?;
            let fd = self.node_fd(ino.0)?;
            let (pfd, pid, lock) = self.dir(newparent.0)?;
            let _g = lock.change();
            let bn: BackingName = self.new_entry_name(pfd.as_fd(), &pid, newname)?;
            self.write_side_file(pfd.as_fd(), &bn)?;
            if let Err(err) = backing::link_fd(fd.as_fd(), pfd.as_fd(), bn.entry()) {
                self.remove_side_file(pfd.as_fd(), &bn);
                return Err(errno(err));
            }
            self.register(newparent.0, pfd.as_fd(), &pid, bn.entry())
                .inspect_err(|_| self.undo_entry(pfd.as_fd(), &bn, false))
        })();
        match self.logged("link", ino.0, result) {
            Ok((_, attr)) => reply.entry(&self.config.ttl(), &attr, Generation(0)),
            Err(code) => reply.error(e(code)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        if acc != libc::O_RDONLY && self.config.read_only {
            return reply.error(e(EROFS));
        }
        match self.logged("open", ino.0, self.open_file_for(ino.0, req.uid())) {
            Ok(f) => {
                self.prefetch_after(ino.0);
                let flags = if self.page_cache_valid(ino.0) {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(self.add_handle(Handle::File(f))), flags)
            }
            Err(code) => reply.error(e(code)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self
            .file_handle(fh.0)
            .and_then(|f| f.read(offset, size as usize));
        match self.logged("read", ino.0, result) {
            Ok(data) => reply.data(&data),
            Err(EIO) => reply.error(e(self.damaged(
                ino.0,
                "content",
                format!("bytes {offset}..+{size}: a chunk does not authenticate, or the backing read failed"),
            ))),
            Err(code) => reply.error(e(code)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let caller = Caller::of(req);
        let result = self
            .file_handle(fh.0)
            .and_then(|f| self.retry_enospc(|| f.write(&self.keyring, offset, data)))
            .and_then(|()| {
                self.drop_file_caps(ino.0)?;
                if wf.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                    self.drop_setid_for(ino.0, &caller, true)
                } else {
                    Ok(())
                }
            });
        match self.logged("write", ino.0, result) {
            Ok(()) => reply.written(data.len() as u32),
            Err(EIO) => reply.error(e(self.damaged(
                ino.0,
                "content",
                format!("write at {offset}: a chunk it rewrites does not authenticate, or backing I/O failed"),
            ))),
            Err(code) => reply.error(e(code)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to write: before it sends FLUSH the kernel has written back its cached
        // pages and waited for their replies. But FLUSH must be answered, not refused with
        // ENOSYS (which stops the kernel sending it): if the daemon dies, the kernel drops
        // dirty pages it can no longer send without recording an error, so a close after
        // the crash would return 0 for writes that never arrived (the kill -9 test caught
        // it, 4 runs in 30). A FLUSH over the dead connection fails, and close says so.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.close_handle(fh.0);
        // The kernel's pages now match the backing file (its writes have all come through).
        self.page_cache_valid(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.logged(
            "fsync",
            _ino.0,
            self.file_handle(fh.0).and_then(|f| f.fsync(datasync)),
        ) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(e(code)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.dir(ino.0).map(|_| {
            self.add_handle(Handle::Dir(DirStream {
                ino: ino.0,
                ..Default::default()
            }))
        });
        // The kernel may keep listings (and keep them across opens): it drops one when the
        // directory changes through the mount or its mtime moves, and a reader it served
        // from one resumes here at an offset that stays valid (`entry_offset`). Not for
        // shared storage, where others change directories behind the kernel's back.
        let flags = if self.config.shared_storage {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        };
        match self.logged("opendir", ino.0, result) {
            Ok(fh) => reply.opened(FileHandle(fh), flags),
            Err(code) => reply.error(e(code)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(code) = self.logged("readdir", ino.0, self.snapshot(ino.0, fh.0, offset)) {
            return reply.error(e(code));
        }
        let handles = self.handles.lock().expect("lock");
        let Some(Handle::Dir(DirStream { listing, .. })) = handles.get(&fh.0) else {
            return reply.error(e(libc::EBADF));
        };
        for entry in &listing[resume_at(listing, offset)..] {
            if reply.add(
                INodeNo(entry.ino),
                entry.off,
                entry.kind,
                OsStr::from_bytes(&entry.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let result = self.snapshot(ino.0, fh.0, offset).and_then(|()| {
            let handles = self.handles.lock().expect("lock");
            match handles.get(&fh.0) {
                // At most what one reply can hold (a name takes at least 8 of its 4 KiB),
                // and the regular file the previous page ended with (to chain the order).
                Some(Handle::Dir(DirStream { listing, .. })) => {
                    let at = resume_at(listing, offset);
                    Ok((
                        listing[at..]
                            .iter()
                            .take(512)
                            .map(|l| (l.off, l.name.clone(), l.entry.clone(), l.ino))
                            .collect::<Vec<_>>(),
                        at.checked_sub(1)
                            .and_then(|i| listing.get(i))
                            .filter(|l| l.kind == FileType::RegularFile)
                            .map(|l| l.ino),
                    ))
                }
                _ => Err(libc::EBADF),
            }
        });
        let (entries, previous_file) = match self.logged("readdirplus", ino.0, result) {
            Ok(found) => found,
            Err(code) => return reply.error(e(code)),
        };
        let (pfd, pid, _) = match self.dir(ino.0) {
            Ok(d) => d,
            Err(code) => return reply.error(e(code)),
        };
        let mut files: Vec<u64> = previous_file.into_iter().collect();
        for (next, name, entry, entry_ino) in entries {
            let name = OsStr::from_bytes(&name);
            if entry.is_empty() {
                // "." and "..": the kernel neither links nor counts them; only the number is read.
                let attr = self.placeholder_attr(entry_ino);
                if reply.add(
                    INodeNo(entry_ino),
                    next,
                    name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            // Each entry sent counts as a lookup of its node, as in LOOKUP. A damaged
            // directory is sent with no caching, so its next use looks it up (and gets EIO).
            let (node, attr, damaged) =
                match self.register_as(ino.0, pfd.as_fd(), &pid, &entry, true) {
                    Ok(found) => found,
                    Err(_) => continue, // gone since the listing, or not ours to show
                };
            let ttl = if damaged {
                Duration::ZERO
            } else {
                self.config.ttl()
            };
            if reply.add(INodeNo(node), next, name, &ttl, &attr, Generation(0)) {
                self.forget_node(node, 1);
                break;
            }
            if attr.kind == FileType::RegularFile {
                files.push(node);
            }
        }
        self.link_listing_order(&files);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.close_handle(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self
            .readable_dir(ino.0)
            .and_then(|fd| backing::fsync(fd.as_fd()).map_err(errno));
        match self.logged("fsyncdir", ino.0, result) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(e(code)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let result = self
            .node_fd(ROOT)
            .and_then(|fd| backing::fstatvfs(fd.as_fd()).map_err(errno));
        match self.logged("statfs", ROOT, result) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                NAME_MAX as u32,
                s.f_frsize as u32,
            ),
            Err(code) => reply.error(e(code)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        super::xattr::reply_sized(
            reply,
            size,
            self.logged("getxattr", ino.0, self.do_getxattr(ino.0, name)),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        super::xattr::reply_sized(
            reply,
            size,
            self.logged("listxattr", ino.0, self.do_listxattr(ino.0, req.uid())),
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.logged(
            "setxattr",
            ino.0,
            self.retry_enospc(|| self.do_setxattr(ino.0, name, value, flags, &Caller::of(req))),
        ) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(e(code)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.logged("removexattr", ino.0, self.do_removexattr(ino.0, name)) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(e(code)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Any fallocate changes the file as a write does (the kernel's file_modified), so
        // it drops set-ID bits too; the kernel sends no flag for it.
        let result = self
            .writable()
            .and_then(|_| self.file_handle(fh.0))
            .and_then(|f| self.retry_enospc(|| f.fallocate(&self.keyring, offset, length, mode)))
            .and_then(|()| self.drop_file_caps(ino.0))
            .and_then(|()| self.drop_setid_for(ino.0, &Caller::of(req), false));
        match self.logged("fallocate", ino.0, result) {
            Ok(()) => reply.ok(),
            Err(EIO) => reply.error(e(self.damaged(
                ino.0,
                "content",
                "fallocate needs a chunk that fails authentication",
            ))),
            Err(code) => reply.error(e(code)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return reply.error(e(EINVAL));
        }
        let result = if offset < 0 {
            Err(libc::ENXIO)
        } else {
            self.file_handle(fh.0)
                .and_then(|f| f.seek_data_hole(offset as u64, whence))
        };
        match self.logged("lseek", _ino.0, result) {
            Ok(off) => reply.offset(off as i64),
            Err(code) => reply.error(e(code)),
        }
    }

    /// No ioctl is supported: ENOTTY, as on a plain file, quietly (fuser's default logs a
    /// warning for each, which any user of a shared mount could repeat until the log fills
    /// the disk).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(e(libc::ENOTTY));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel has checked the bits and never asks. Without
        // it only root can be here, and root passes every check but one: executing needs an
        // x bit somewhere, except on a directory.
        let result =
            if self.config.kernel_checks_permissions || !mask.contains(fuser::AccessFlags::X_OK) {
                Ok(())
            } else {
                self.getattr_ino(ino.0).and_then(|attr| {
                    if attr.kind != FileType::Directory && attr.perm & 0o111 == 0 {
                        Err(libc::EACCES)
                    } else {
                        Ok(())
                    }
                })
            };
        match self.logged("access", ino.0, result) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(e(code)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self
            .inherit_acls(parent.0, mode, umask, false)
            .and_then(|(mode, acls)| {
                let made = self.make_regular_node(req, parent.0, name, mode)?;
                self.with_inherited(parent.0, name, made, acls)
            });
        let _ = flags;
        match self.logged("create", parent.0, result) {
            Ok((_, attr, Some(f))) => {
                let fh = self.add_handle(Handle::File(f));
                reply.created(
                    &self.config.ttl(),
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Ok((_, _, None)) => reply.error(e(EIO)),
            Err(code) => reply.error(e(code)),
        }
    }
}
