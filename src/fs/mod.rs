//! The FUSE adapter: presents a vault's plaintext view. `backing` is the only code that
//! touches the backing tree; `file` holds open-file state and the content protocols; `ops`
//! maps FUSE requests onto this module's helpers.
//!
//! Inodes: a node the kernel knows holds an O_PATH fd on its backing inode while the fd
//! budget allows (`LooseFds`; open files and the root always), and is reopened otherwise by
//! one of the names it was found by (`node_names`), checked to be the same inode (ESTALE if
//! none is: the kernel then looks the path up again). The FUSE inode number is simply the backing one
//! (with the backing root's number swapped with 1, FUSE's root): stable while mounted,
//! shared by hard links, immune to renames.

mod acl;
pub mod backing;
pub mod buffers;
mod closer;
mod damage;
pub(crate) mod fd_charges;
pub mod file;
pub mod mount;
mod node_names;
mod ops;
mod prefetch;
pub(crate) mod root_attr;
pub(crate) mod setid;
mod xattr;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use libc::{EIO, ENAMETOOLONG, ENOENT};
use rustix::fs::{Mode, OFlags, Stat};

use crate::crypto::chunk::ChunkLayout;
use crate::crypto::dirid::{ROOT_PARENT, open_dir_id};
use crate::crypto::header::{FileHeader, HEADER_LEN, NodeType};
use crate::crypto::names::{
    self, BackingName, DIRID_FILE, DIRID_NEXT_FILE, EntryKind, NameError, decrypt_name,
    encrypt_name, read_side_file,
};
use crate::crypto::{DirId, Keyring, blob};
use file::OpenFile;
use node_names::NodeNames;

/// An errno.
pub type FsResult<T> = Result<T, i32>;

pub(crate) fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(EIO)
}

/// Settings of one mount.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub read_only: bool,
    /// Others also write the backing directory (`--shared-storage`): the kernel may not
    /// cache attributes, names or pages across opens, and gets no writeback cache. Otherwise
    /// this mount is the backing tree's only writer and the kernel caches freely.
    pub shared_storage: bool,
    /// The kernel's writeback cache: small writes are gathered into large requests, but
    /// they reach the daemon (and their errors, such as ENOSPC, the application) only at
    /// writeback, close or fsync.
    pub writeback_cache: bool,
    /// The kernel checks permission bits (`default_permissions`); without it only root (all
    /// uids 0, gids root's) can enter, and vaultfs answers access(2) as root's.
    pub kernel_checks_permissions: bool,
    /// The vault may hold FIFOs, sockets and device nodes as format 1 made them: backing
    /// nodes of that type, unauthenticated. Otherwise (a vault made by format 2) such a
    /// backing node was planted, and reads as damage; format 2 stores them as header-only
    /// files (`crypto::header::NodeType`).
    pub legacy_nodes: bool,
    /// Files may store holes (`init --sparse`, `OpenFile::with_sparse`).
    pub sparse: bool,
    /// Which of the daemon's backing reads may update access times.
    pub atime: mount::AtimePolicy,
}

impl FsConfig {
    /// Entry and attribute cache time given to the kernel. Long when this mount is the only
    /// writer: every change passes through the kernel, which updates or drops what it cached.
    pub fn ttl(&self) -> Duration {
        if self.shared_storage {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        }
    }
}

/// When the mount was last used and how many files and directories are open: what
/// `--idle` watches from outside the FUSE session.
#[derive(Debug, Default)]
pub struct Activity {
    last: std::sync::atomic::AtomicU64,
    pub open: std::sync::atomic::AtomicI64,
}

impl Activity {
    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    pub fn touch(&self) {
        self.last
            .store(Self::now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last request, if nothing is open.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return None;
        }
        Some(Duration::from_secs(Self::now().saturating_sub(
            self.last.load(std::sync::atomic::Ordering::Relaxed),
        )))
    }
}

pub(crate) struct Node {
    /// The (directory, backing entry) names this node was found by, latest first.
    pub names: NodeNames,
    pub kind: FileType,
    /// Device number of a device node stored as a header-only file (from its header).
    pub rdev: u32,
    /// O_PATH fd on the backing inode. Directories always hold theirs; other nodes may have
    /// it closed when too many are open (`LooseFds`) and reopened by name on next use.
    pub fd: Option<Arc<OwnedFd>>,
    pub dir_id: Option<DirId>,
    pub lookups: u64,
    /// Serializes and counts changes to a directory's entries.
    pub dir_lock: Arc<DirLock>,
    /// A directory whose ID does not check out, registered only because READDIRPLUS must
    /// name a node for every entry it lists: each use of it as a directory gives EIO, and
    /// each lookup checks its ID again.
    pub damaged: bool,
    /// The backing file's (mtime, ctime, size) when the kernel last had its pages: equal at
    /// the next open means the kernel's page cache is still right (FOPEN_KEEP_CACHE).
    pub page_stamp: Option<PageStamp>,
    /// The regular file listed after this one in its directory's last READDIRPLUS, and
    /// whether a read-ahead was asked for since this file was last opened (`prefetch`).
    pub next_in_dir: Option<u64>,
    pub prefetched: bool,
    /// Whether the file may hold file capabilities (`security.capability`), which every
    /// content or owner change removes: true until a change finds none, and again once
    /// they are set.
    pub may_have_caps: bool,
}

pub(crate) type PageStamp = (i64, i64, i64, i64, i64);

fn page_stamp(st: &Stat) -> PageStamp {
    (
        st.st_mtime,
        st.st_mtime_nsec as i64,
        st.st_ctime,
        st.st_ctime_nsec as i64,
        st.st_size,
    )
}

pub struct VaultFs {
    pub(crate) keyring: Keyring,
    pub(crate) layout: ChunkLayout,
    pub(crate) longname_max: usize,
    pub(crate) config: FsConfig,
    pub(crate) root_dev: u64,
    root_backing_ino: u64,
    /// The plaintext root's mode and owner (`root_attr`): never the vault directory's own.
    pub(crate) root_attr: Mutex<root_attr::RootAttr>,
    pub(crate) nodes: Mutex<HashMap<u64, Node>>,
    /// Open files by inode, shared by all handles of the inode.
    pub(crate) open_files: Mutex<HashMap<u64, Weak<OpenFile>>>,
    pub(crate) handles: Mutex<HashMap<u64, Handle>>,
    next_fh: std::sync::atomic::AtomicU64,
    /// Open files' backing fds, per user (`fd_charges`).
    pub(crate) fd_charges: fd_charges::FdCharges,
    /// Damaged objects met: counted, each logged once.
    pub(crate) damage: damage::DamageReports,
    pub(crate) is_root: bool,
    /// The kernel enforces POSIX ACLs (FUSE_POSIX_ACL was granted at init); vaultfs stores
    /// them, keeps them in step with modes and inherits default ACLs (`acl`).
    pub(crate) kernel_acls: bool,
    /// FUSE_DONT_MASK was granted: requests carry the umask, which vaultfs applies.
    pub(crate) dont_mask: bool,
    pub(crate) activity: Arc<Activity>,
    /// Closes the fds of nodes the kernel forgot (started at FUSE init).
    pub(crate) closer: closer::Closer<Node>,
    /// Which non-directory nodes hold an fd, and how many may.
    loose: LooseFds,
    pub(crate) prefetcher: prefetch::Prefetcher,
    /// The session's notifier, once the daemon has a session (`setid`).
    notifier: setid::NotifierSlot,
}

pub(crate) enum Handle {
    File(Arc<OpenFile>),
    Dir(DirStream),
}

/// An open directory stream: the listing its reads page through.
#[derive(Default)]
pub(crate) struct DirStream {
    /// The directory.
    pub ino: u64,
    /// Shared by every stream that listed the directory in the same state
    /// (`DirLock::shared_listing`).
    pub listing: Arc<Vec<DirListing>>,
    /// The directory's change count (`DirLock::changes`) before it was listed.
    pub changes: u64,
}

/// Serializes changes to a directory's entries (create, unlink, rename, rmdir, link) and
/// counts them, to tell which open streams list an older directory than a listing the
/// kernel may have started caching since (`DirLock::outdated`).
#[derive(Default)]
pub(crate) struct DirLock {
    entries: Mutex<()>,
    changes: std::sync::atomic::AtomicU64,
    /// The most changes any listing from the start has seen: the kernel starts a listing
    /// cache only with a read from offset 0.
    started_at: std::sync::atomic::AtomicU64,
    /// The last listing made, for streams that find the directory in the same state.
    shared: Mutex<Option<SharedListing>>,
}

/// A directory's listing as of a state: its change count (changes through this mount) and
/// its backing modification time (changes by anyone), shared by the streams that read it
/// while it lives. However many streams a user opens on a directory, it is decrypted and
/// held once (issue 15, finding 2: one full copy per handle took the daemon to 2.9 GB).
struct SharedListing {
    changes: u64,
    mtime: (i64, i64),
    listing: Weak<Vec<DirListing>>,
}

/// A directory locked for a change; counted when released, once the change is made.
pub(crate) struct DirChange<'a> {
    _entries: std::sync::MutexGuard<'a, ()>,
    changes: &'a std::sync::atomic::AtomicU64,
}

impl Drop for DirChange<'_> {
    fn drop(&mut self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl DirLock {
    /// Locks the directory's entries for a change.
    pub(crate) fn change(&self) -> DirChange<'_> {
        DirChange {
            _entries: self.entries.lock().expect("lock"),
            changes: &self.changes,
        }
    }

    /// Counts a change that needs no lock of the entries (a move of the directory itself:
    /// its ".." changed).
    pub(crate) fn count_change(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many changes were made so far.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A listing from offset 0 is made after `changes` changes.
    pub(crate) fn listing_from_start(&self, changes: u64) {
        self.started_at
            .fetch_max(changes, std::sync::atomic::Ordering::SeqCst);
    }

    /// The listing made when the directory was last in this state, if a stream still holds it.
    pub(crate) fn shared_listing(
        &self,
        changes: u64,
        mtime: (i64, i64),
    ) -> Option<Arc<Vec<DirListing>>> {
        let shared = self.shared.lock().expect("lock");
        shared
            .as_ref()
            .filter(|s| s.changes == changes && s.mtime == mtime)
            .and_then(|s| s.listing.upgrade())
    }

    /// Offers `listing`, made after `changes` changes with the directory at `mtime`, to the
    /// streams that come next.
    pub(crate) fn share_listing(
        &self,
        changes: u64,
        mtime: (i64, i64),
        listing: &Arc<Vec<DirListing>>,
    ) {
        *self.shared.lock().expect("lock") = Some(SharedListing {
            changes,
            mtime,
            listing: Arc::downgrade(listing),
        });
    }

    /// Whether a stream listed after `changes` changes must list again before it goes on:
    /// a listing from the start has seen more changes since, and the kernel, which caches
    /// a listing from its start onwards whatever stream the rest comes from, could complete
    /// that newer cache with this older listing (the entries made in between would then be
    /// missing from every cached listing). A stream that only sees changes it makes itself
    /// (read, unlink, read on) goes on with its own listing.
    pub(crate) fn outdated(&self, changes: u64) -> bool {
        self.started_at.load(std::sync::atomic::Ordering::SeqCst) > changes
    }
}

pub(crate) struct DirListing {
    pub name: Vec<u8>,
    /// The backing entry name (empty for "." and "..").
    pub entry: String,
    pub ino: u64,
    pub kind: FileType,
    /// Where a reader resumes after this entry: see `entry_offset`.
    pub off: u64,
}

/// The directory offset (telldir cookie) of a backing entry: a hash of its name, the same in
/// every listing of the directory, so that a reader resuming at an offset continues after
/// the same entry however the directory changed meanwhile (the kernel's listing cache
/// resumes at the daemon with offsets from an older listing). 1 and 2 are "." and "..";
/// listings are sorted by offset.
pub(crate) fn entry_offset(entry: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entry.hash(&mut h);
    // Below 2^62 + 3: positive as the kernel's signed offsets, with room above for
    // `order_listing` to step past a collision.
    3 + (h.finish() >> 2)
}

/// Sorts a listing by offset, moving each offset that collides with its predecessor's one
/// up (two names with one 62-bit hash: practically never, but a reader must not lose one).
pub(crate) fn order_listing(listing: &mut [DirListing]) {
    listing.sort_unstable_by(|a, b| (a.off, &a.entry).cmp(&(b.off, &b.entry)));
    for i in 1..listing.len() {
        if listing[i].off <= listing[i - 1].off {
            listing[i].off = listing[i - 1].off + 1;
        }
    }
}

/// Index of the first entry of a sorted listing that comes after offset `off`.
pub(crate) fn resume_at(listing: &[DirListing], off: u64) -> usize {
    listing.partition_point(|l| l.off <= off)
}

pub(crate) const ROOT: u64 = 1;

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// A backing character device 0:0: a whiteout, which `rename` with RENAME_WHITEOUT leaves at
/// the source (overlayfs uses a vault as its upper layer so). Format 2 keeps every other
/// FIFO, socket and device node in a header-only file.
pub fn is_whiteout(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// How many non-directory nodes may hold an fd: half the process's fd limit (the rest is
/// for directories, open files and the work of requests).
fn loose_fd_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (limit / 2).clamp(256, 1 << 20) as usize
}

/// The nodes holding an fd, the root's aside, oldest first (an approximate LRU: a node is
/// queued when it gets its fd). Entries of nodes forgotten since are skipped when met and
/// dropped when the queue is compacted. Directories count too (issue 15, finding 3: 19,000
/// `mkdir`s by one user took the daemon to its fd limit, and everyone got EMFILE).
struct LooseFds {
    queue: Mutex<std::collections::VecDeque<u64>>,
    open: std::sync::atomic::AtomicUsize,
    budget: usize,
}

impl LooseFds {
    fn new(budget: usize) -> LooseFds {
        LooseFds {
            queue: Mutex::default(),
            open: 0.into(),
            budget,
        }
    }

    fn opened(&self, ino: u64) {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queue.lock().expect("lock").push_back(ino);
    }

    fn requeue(&self, ino: u64) {
        self.queue.lock().expect("lock").push_back(ino);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn oldest(&self) -> Option<u64> {
        self.queue.lock().expect("lock").pop_front()
    }

    fn over_budget(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Relaxed) > self.budget
    }

    /// Entries in the queue (live or stale).
    fn queued(&self) -> usize {
        self.queue.lock().expect("lock").len()
    }
}

/// An O_PATH fd on the backing entry itself (never what a symlink points to).
/// The first of `names` that exists in `dir` (its index and lstat), if any.
fn first_existing(dir: BorrowedFd<'_>, names: &[BackingName]) -> FsResult<Option<(usize, Stat)>> {
    for (i, bn) in names.iter().enumerate() {
        match backing::lstat(dir, bn.entry()) {
            Ok(st) => return Ok(Some((i, st))),
            Err(e) if e.raw_os_error() == Some(ENOENT) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
    Ok(None)
}

fn open_path(dir: BorrowedFd<'_>, entry: &str) -> FsResult<OwnedFd> {
    rustix::fs::openat(
        dir,
        entry,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| e.raw_os_error())
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

impl VaultFs {
    /// Prepares a filesystem over the backing directory `root` (already opened).
    pub fn new(
        keyring: Keyring,
        layout: ChunkLayout,
        longname_max: usize,
        root: OwnedFd,
        config: FsConfig,
        activity: Arc<Activity>,
    ) -> std::io::Result<VaultFs> {
        let st = backing::fstat(root.as_fd())?;
        let root_attr = root_attr::RootAttr::load(root.as_fd(), !config.read_only)?;
        let id_file = backing::read_small(root.as_fd(), DIRID_FILE, 64)?;
        let (root_id, _) = open_dir_id(&keyring, &ROOT_PARENT, "", &id_file).map_err(|e| {
            std::io::Error::other(format!("the vault's root directory ID does not open: {e}"))
        })?;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                names: NodeNames::new(ROOT, ""),
                kind: FileType::Directory,
                rdev: 0,
                fd: Some(Arc::new(root)),
                dir_id: Some(root_id),
                lookups: 1,
                dir_lock: Arc::default(),
                damaged: false,
                page_stamp: None,
                next_in_dir: None,
                prefetched: false,
                may_have_caps: true,
            },
        );

        Ok(VaultFs {
            keyring,
            layout,
            longname_max,
            config,
            root_dev: st.st_dev,
            root_backing_ino: st.st_ino,
            root_attr: Mutex::new(root_attr),
            nodes: Mutex::new(nodes),
            open_files: Mutex::default(),
            handles: Mutex::default(),
            next_fh: 1.into(),
            damage: Default::default(),
            fd_charges: Default::default(),
            is_root: rustix::process::geteuid().is_root(),
            kernel_acls: false,
            dont_mask: false,
            activity,
            closer: closer::Closer::new(),
            loose: LooseFds::new(loose_fd_budget()),
            prefetcher: prefetch::Prefetcher::new(),
            notifier: Arc::default(),
        })
    }

    /// Whether `st` is the vault directory itself.
    pub(crate) fn is_backing_root(&self, st: &Stat) -> bool {
        (st.st_dev, st.st_ino) == (self.root_dev, self.root_backing_ino)
    }

    /// FUSE inode number of a backing inode number.
    pub(crate) fn fuse_ino(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT
        } else if backing_ino == ROOT {
            self.root_backing_ino
        } else {
            backing_ino
        }
    }

    /// Logs a damaged backing object once (with its backing path), and gives EIO.
    pub(crate) fn damaged(&self, ino: u64, what: &str, detail: impl std::fmt::Display) -> i32 {
        let path = self.backing_path(ino);
        self.damage.report(format!("{path}: {what}"), || {
            format!("{path}: {what}: {detail}")
        });
        EIO
    }

    /// Best-effort backing path of a node, relative to the vault root, for messages.
    pub(crate) fn backing_path(&self, ino: u64) -> String {
        let nodes = self.nodes.lock().expect("lock");
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT && parts.len() < 4096 {
            match nodes.get(&cur) {
                Some(n) => {
                    parts.push(n.names.entry().to_string());
                    cur = n.names.parent();
                }
                None => {
                    parts.push("?".into());
                    break;
                }
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// The O_PATH fd of a node's backing inode, reopened by name if it was closed: by the
    /// first of its names that still holds the same inode (ESTALE if none does, e.g. after
    /// a replacing rename; the kernel then looks the path up again).
    pub(crate) fn node_fd(&self, ino: u64) -> FsResult<Arc<OwnedFd>> {
        let names = {
            let nodes = self.nodes.lock().expect("lock");
            let n = nodes.get(&ino).ok_or(ENOENT)?;
            if let Some(fd) = &n.fd {
                return Ok(fd.clone());
            }
            n.names.all()
        };
        let mut found = None;
        for (parent, entry) in names {
            match self.reopen_by_name(ino, parent, &entry) {
                Ok(fd) => {
                    found = Some((parent, entry, fd));
                    break;
                }
                Err(libc::ESTALE) => {
                    if let Some(n) = self.nodes.lock().expect("lock").get_mut(&ino) {
                        n.names.forget(parent, &entry);
                    }
                }
                // Out of descriptors or memory, or no right to search the directory: the
                // name may still be good, and the next one would fail the same way.
                Err(code) => return Err(code),
            }
        }
        let (parent, entry, fd) = found.ok_or(libc::ESTALE)?;
        let fd = Arc::new(fd);
        let stored = {
            let mut nodes = self.nodes.lock().expect("lock");
            match nodes.get_mut(&ino) {
                Some(n) if n.fd.is_none() => {
                    n.names.saw(parent, &entry);
                    n.fd = Some(fd.clone());
                    true
                }
                Some(n) => return Ok(n.fd.clone().unwrap_or(fd)),
                None => false,
            }
        };
        if stored {
            self.loose_fd_opened(ino);
        }
        Ok(fd)
    }

    /// Opens (O_PATH) the backing entry `entry` of directory `parent` if it is still node
    /// `ino`'s inode: ESTALE if the name is gone, holds another inode, or its directory is
    /// no longer known.
    fn reopen_by_name(&self, ino: u64, parent: u64, entry: &str) -> FsResult<OwnedFd> {
        let stale = |code| if code == ENOENT { libc::ESTALE } else { code };
        let (pfd, _, _) = self.dir(parent).map_err(stale)?;
        let fd = self
            .with_fd_room(|| open_path(pfd.as_fd(), entry))
            .map_err(stale)?;
        let st = backing::fstat(fd.as_fd()).map_err(errno)?;
        if st.st_dev != self.root_dev || self.fuse_ino(st.st_ino) != ino {
            return Err(libc::ESTALE);
        }
        Ok(fd)
    }

    /// A node's type and backing fd.
    pub(crate) fn node_kind_fd(&self, ino: u64) -> FsResult<(FileType, Arc<OwnedFd>)> {
        let kind = self
            .nodes
            .lock()
            .expect("lock")
            .get(&ino)
            .ok_or(ENOENT)?
            .kind;
        Ok((kind, self.node_fd(ino)?))
    }

    /// A node `ino` (not the root) was given an fd: counts it, and closes the fds of the
    /// longest-open nodes while more than the budget are open. Open files keep theirs;
    /// any other node is reopened by name when next needed (`node_fd`, `dir`).
    fn loose_fd_opened(&self, ino: u64) {
        self.loose.opened(ino);
        self.evict_fds(false);
    }

    /// Closes node fds, oldest first: while over the budget, or (`pressure`: an open just
    /// failed with EMFILE) at least a batch of them whatever the budget says.
    fn evict_fds(&self, pressure: bool) {
        let mut wanted: usize = if pressure { 64 } else { 0 };
        if self.loose.queued() > 4 * self.loose.budget {
            // Forgotten nodes and requeued ones leave stale entries: keep each live one once.
            let nodes = self.nodes.lock().expect("lock");
            let mut seen = HashSet::new();
            self.loose
                .queue
                .lock()
                .expect("lock")
                .retain(|ino| nodes.get(ino).is_some_and(|n| n.fd.is_some()) && seen.insert(*ino));
        }
        let mut tries = self.loose.queued();
        while tries > 0 && (wanted > 0 || self.loose.over_budget()) {
            tries -= 1;
            let Some(ino) = self.loose.oldest() else {
                return;
            };
            let mut nodes = self.nodes.lock().expect("lock");
            let Some(n) = nodes.get_mut(&ino) else {
                continue; // forgotten since (and counted out then)
            };
            if n.fd.is_none() {
                continue;
            }
            let open = self
                .open_files
                .lock()
                .expect("lock")
                .get(&ino)
                .is_some_and(|w| w.strong_count() > 0);
            // A file with several names is closed too (second review: 600 hard links by
            // one user pinned every fd): reopened by any name it is still found by.
            if open {
                drop(nodes);
                self.loose.requeue(ino);
                continue;
            }
            let fd = n.fd.take();
            drop(nodes);
            self.loose.closed();
            drop(fd);
            wanted = wanted.saturating_sub(1);
        }
    }

    /// Runs `op`, which opens an fd, once more after closing a batch of node fds if it
    /// fails with EMFILE or ENFILE: whoever filled the table, the next request still gets one.
    pub(crate) fn with_fd_room<T>(&self, op: impl Fn() -> FsResult<T>) -> FsResult<T> {
        match op() {
            Err(libc::EMFILE | libc::ENFILE) => {
                self.evict_fds(true);
                op()
            }
            other => other,
        }
    }

    /// A directory node's fd, ID and entry lock.
    pub(crate) fn dir(&self, ino: u64) -> FsResult<(Arc<OwnedFd>, DirId, Arc<DirLock>)> {
        let (id, lock) = {
            let nodes = self.nodes.lock().expect("lock");
            let n = nodes.get(&ino).ok_or(ENOENT)?;
            match (n.kind, n.dir_id) {
                (FileType::Directory, Some(id)) => {
                    if let Some(fd) = &n.fd {
                        return Ok((fd.clone(), id, n.dir_lock.clone()));
                    }
                    (id, n.dir_lock.clone())
                }
                (FileType::Directory, None) => return Err(EIO),
                _ => return Err(libc::ENOTDIR),
            }
        };
        // Its fd was closed for the budget: reopened by name, checked to be the same inode.
        Ok((self.node_fd(ino)?, id, lock))
    }

    /// The backing name of plaintext `name` in a directory, under each live generation
    /// (active first).
    pub(crate) fn candidate_names(
        &self,
        dir_id: &DirId,
        name: &OsStr,
    ) -> FsResult<Vec<BackingName>> {
        let mut out = Vec::with_capacity(2);
        for keys in self.keyring.live() {
            let encoded = encrypt_name(keys, dir_id, name.as_bytes()).map_err(|e| match e {
                NameError::TooLong => ENAMETOOLONG,
                _ => libc::EINVAL,
            })?;
            out.push(BackingName::new(encoded, self.longname_max));
        }
        Ok(out)
    }

    /// Finds the existing backing entry of `name` in a directory.
    pub(crate) fn find_entry(
        &self,
        dir_fd: BorrowedFd<'_>,
        dir_id: &DirId,
        name: &OsStr,
    ) -> FsResult<(BackingName, Stat)> {
        let mut names = self.candidate_names(dir_id, name)?;
        let (i, st) = first_existing(dir_fd, &names)?.ok_or(ENOENT)?;
        Ok((names.swap_remove(i), st))
    }

    /// Opens (O_PATH) the existing backing entry of `name` in a directory: a lookup's one
    /// path walk (no separate stat).
    pub(crate) fn open_entry(
        &self,
        dir_fd: BorrowedFd<'_>,
        dir_id: &DirId,
        name: &OsStr,
    ) -> FsResult<(BackingName, OwnedFd)> {
        for bn in self.candidate_names(dir_id, name)? {
            match self.with_fd_room(|| open_path(dir_fd, bn.entry())) {
                Ok(fd) => return Ok((bn, fd)),
                Err(ENOENT) => continue,
                Err(code) => return Err(code),
            }
        }
        Err(ENOENT)
    }

    /// The backing name for a new entry `name` (active generation), failing with EEXIST if
    /// the name exists under any live generation.
    pub(crate) fn new_entry_name(
        &self,
        dir_fd: BorrowedFd<'_>,
        dir_id: &DirId,
        name: &OsStr,
    ) -> FsResult<BackingName> {
        let mut names = self.candidate_names(dir_id, name)?;
        if first_existing(dir_fd, &names)?.is_some() {
            return Err(libc::EEXIST);
        }
        Ok(names.swap_remove(0))
    }

    /// `new_entry_name` for a maker that fails with EEXIST by itself (O_EXCL create, mknod,
    /// symlink): with one key generation live there is no other name to check first.
    pub(crate) fn exclusive_entry_name(
        &self,
        dir_fd: BorrowedFd<'_>,
        dir_id: &DirId,
        name: &OsStr,
    ) -> FsResult<BackingName> {
        if self.keyring.live().count() == 1 {
            let bn = self.candidate_names(dir_id, name)?.swap_remove(0);
            // A long name's side file is written before its maker runs: check first, so
            // an existing entry's side file is not rewritten on the way to EEXIST.
            if bn.side_file().is_none() {
                return Ok(bn);
            }
        }
        self.new_entry_name(dir_fd, dir_id, name)
    }

    /// Writes a long name's side file (before its entry appears).
    pub(crate) fn write_side_file(&self, dir_fd: BorrowedFd<'_>, bn: &BackingName) -> FsResult<()> {
        if let BackingName::Long {
            side_file, encoded, ..
        } = bn
        {
            let temp = backing::temp_name();
            backing::write_durable(dir_fd, side_file, &temp, encoded.as_bytes(), 0o600)
                .map_err(errno)?;
            // The side file's entry must be durable before the entry it names can be.
            let readable =
                backing::reopen(dir_fd, OFlags::RDONLY | OFlags::DIRECTORY).map_err(errno)?;
            backing::fsync(readable.as_fd()).map_err(errno)?;
        }
        Ok(())
    }

    pub(crate) fn remove_side_file(&self, dir_fd: BorrowedFd<'_>, bn: &BackingName) {
        if let Some(side) = bn.side_file() {
            let _ = backing::unlink(dir_fd, side);
        }
    }

    /// Reads and checks the directory ID of the directory `fd` found at (`parent_id`, `entry`):
    /// `vaultfs.dirid`, or during a rename `vaultfs.dirid.new`, whichever matches its place.
    pub(crate) fn read_dir_id(
        &self,
        fd: BorrowedFd<'_>,
        parent_id: &DirId,
        entry: &str,
    ) -> Result<DirId, (i32, String)> {
        let mut why = (EIO, String::from("no directory ID file"));
        for file in [DIRID_FILE, DIRID_NEXT_FILE] {
            match backing::read_small(fd, file, 64) {
                Ok(bytes) => match open_dir_id(&self.keyring, parent_id, entry, &bytes) {
                    Ok((id, _)) => return Ok(id),
                    Err(e) => {
                        why = (
                            EIO,
                            format!("{file}: {e} (moved or copied from elsewhere?)"),
                        )
                    }
                },
                Err(e) if e.raw_os_error() == Some(ENOENT) => {}
                Err(e) => why = (e.raw_os_error().unwrap_or(EIO), format!("{file}: {e}")),
            }
        }
        Err(why)
    }

    /// Runs `op`; if it fails with EACCES in a daemon that is not root, gives the owner
    /// `bits` on the entry `fd` pins for the span of one retry, then restores the mode. A
    /// non-root daemon owns every backing entry but obeys its mode bits, while vaultfs's own
    /// I/O (headers, directory IDs, side files) must not depend on them (SPEC section 4).
    pub(crate) fn retry_with_access<T>(
        &self,
        fd: BorrowedFd<'_>,
        bits: u32,
        op: impl Fn() -> FsResult<T>,
    ) -> FsResult<T> {
        match op() {
            Err(libc::EACCES) if !self.is_root => {
                let mode = backing::fstat(fd).map_err(errno)?.st_mode & 0o7777;
                if mode & bits == bits {
                    return Err(libc::EACCES);
                }
                backing::chmod_fd(fd, mode | bits).map_err(errno)?;
                let result = op();
                let _ = backing::chmod_fd(fd, mode);
                result
            }
            other => other,
        }
    }

    /// A readable fd on a directory node (for listing and fsync).
    pub(crate) fn readable_dir(&self, ino: u64) -> FsResult<OwnedFd> {
        let fd = self.node_fd(ino)?;
        let proc = backing::proc_path(fd.as_fd());
        self.retry_with_access(fd.as_fd(), 0o500, || {
            backing::open_noatime(
                &proc,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                !self.config.atime.dirs,
            )
            .map_err(errno)
        })
    }

    /// Opens the backing inode of `entry` in the directory `parent` and registers it (or
    /// bumps the lookup count of the node that has it). Returns its inode and attributes.
    pub(crate) fn register(
        &self,
        parent: u64,
        parent_fd: BorrowedFd<'_>,
        parent_id: &DirId,
        entry: &str,
    ) -> FsResult<(u64, FileAttr)> {
        self.register_as(parent, parent_fd, parent_id, entry, false)
            .map(|(ino, attr, _)| (ino, attr))
    }

    /// `register`, but a directory whose ID does not check out is registered marked damaged
    /// (the third value) instead of failing, for READDIRPLUS.
    pub(crate) fn register_as(
        &self,
        parent: u64,
        parent_fd: BorrowedFd<'_>,
        parent_id: &DirId,
        entry: &str,
        keep_damaged: bool,
    ) -> FsResult<(u64, FileAttr, bool)> {
        let path_fd = self.with_fd_room(|| open_path(parent_fd, entry))?;
        self.register_fd(parent, parent_id, entry, path_fd, keep_damaged)
    }

    /// `register_as` with the entry already opened (O_PATH).
    pub(crate) fn register_fd(
        &self,
        parent: u64,
        parent_id: &DirId,
        entry: &str,
        path_fd: OwnedFd,
        keep_damaged: bool,
    ) -> FsResult<(u64, FileAttr, bool)> {
        let st = backing::fstat(path_fd.as_fd()).map_err(errno)?;
        self.register_stat(parent, parent_id, entry, path_fd, st, keep_damaged)
    }

    /// `register_fd` with the fd's stat already made.
    pub(crate) fn register_stat(
        &self,
        parent: u64,
        parent_id: &DirId,
        entry: &str,
        path_fd: OwnedFd,
        st: Stat,
        keep_damaged: bool,
    ) -> FsResult<(u64, FileAttr, bool)> {
        if st.st_dev != self.root_dev {
            log::error!(
                "{}/{entry}: on another filesystem; refusing to cross into it",
                self.backing_path(parent)
            );
            return Err(EIO);
        }
        let ino = self.fuse_ino(st.st_ino);
        let backing_kind = file_type(st.st_mode);
        if !matches!(
            backing_kind,
            FileType::RegularFile | FileType::Directory | FileType::Symlink
        ) && !self.config.legacy_nodes
            && !is_whiteout(&st)
        {
            // Format 2 keeps FIFOs, sockets and device nodes in header-only files: a backing
            // node of such a type was planted (and a FIFO would make readers hang).
            return Err(self.damaged(
                parent,
                &format!("entry {entry}"),
                "a backing FIFO, socket or device node, which this vault never makes",
            ));
        }
        let mut kind = backing_kind;
        {
            let mut nodes = self.nodes.lock().expect("lock");
            // A node whose fd was closed may meet a new backing object that reuses its
            // inode number: unless the type shows it is still a plain file or symlink, it is
            // identified again below (kind, directory ID, node header).
            if let Some(n) = nodes.get_mut(&ino)
                && !n.damaged
                && (n.fd.is_some()
                    || (n.kind == backing_kind
                        && matches!(n.kind, FileType::RegularFile | FileType::Symlink)
                        && st.st_size != HEADER_LEN as i64))
            {
                if backing_kind == FileType::RegularFile && st.st_size == HEADER_LEN as i64 {
                    kind = n.kind;
                }
                n.lookups += 1;
                n.names.saw(parent, entry);
                let reopened = n.fd.is_none();
                if reopened {
                    n.fd = Some(Arc::new(path_fd));
                }
                drop(nodes);
                if reopened {
                    self.loose_fd_opened(ino);
                }
                return Ok((ino, self.attr_of(ino, kind, &st), false));
            }
        }
        let dir_id = if kind == FileType::Directory {
            // Directory nodes keep the O_PATH fd: enough for every *at call, and needs only
            // search permission (a mode-0151 directory is still usable by its owner).
            let id = self.retry_with_access(path_fd.as_fd(), 0o100, || {
                self.read_dir_id(path_fd.as_fd(), parent_id, entry)
                    .map_err(|(code, why)| {
                        // Damage, not a lack of rights or of descriptors or memory.
                        if !matches!(
                            code,
                            libc::EACCES | libc::EMFILE | libc::ENFILE | libc::ENOMEM
                        ) {
                            let path = format!("{}/{entry}", self.backing_path(parent));
                            self.damage.report(path.clone(), || {
                                format!("{path}: directory ID does not check out: {why}")
                            });
                        }
                        code
                    })
            });
            match id {
                Ok(id) => Some(id),
                Err(_) if keep_damaged => None,
                Err(code) => return Err(code),
            }
        } else {
            None
        };
        let damaged = kind == FileType::Directory && dir_id.is_none();
        // A regular backing file of exactly a header's length is a FIFO, socket or device
        // node if its (authenticated) header says so; otherwise a damaged file, as before.
        let mut rdev = 0;
        if kind == FileType::RegularFile
            && st.st_size == HEADER_LEN as i64
            && let Some((node_kind, node_rdev)) = self.read_node_header(path_fd.as_fd())
        {
            kind = node_kind;
            rdev = node_rdev;
        }
        let mut nodes = self.nodes.lock().expect("lock");
        let n = nodes.entry(ino).or_insert_with(|| Node {
            names: NodeNames::new(parent, entry),
            kind,
            rdev,
            fd: None,
            dir_id,
            lookups: 0,
            dir_lock: Arc::default(),
            damaged,
            page_stamp: None,
            next_in_dir: None,
            prefetched: false,
            may_have_caps: true,
        });
        n.names.saw(parent, entry);
        if n.kind != kind || n.dir_id != dir_id || n.rdev != rdev || (n.damaged && !damaged) {
            // Another object under the same inode number (or a damaged directory that
            // checks out now): what the node knew of the old one no longer holds.
            n.kind = kind;
            n.rdev = rdev;
            n.dir_id = dir_id;
            n.damaged = damaged;
            n.page_stamp = None;
            n.next_in_dir = None;
            n.may_have_caps = true;
        }
        let gave_fd = n.fd.is_none();
        if gave_fd {
            n.fd = Some(Arc::new(path_fd));
        }
        n.lookups += 1;
        let damaged = n.damaged;
        drop(nodes);
        if gave_fd {
            self.loose_fd_opened(ino);
        }
        Ok((ino, self.attr_of(ino, kind, &st), damaged))
    }

    /// Drops `n` lookups of a node (FORGET, or an entry READDIRPLUS could not send); a node
    /// left with none is closed on the closer thread.
    pub(crate) fn forget_node(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut nodes = self.nodes.lock().expect("lock");
        if let Some(node) = nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0
                && let Some(node) = nodes.remove(&ino)
            {
                drop(nodes);
                if node.fd.is_some() {
                    self.loose.closed();
                }
                self.closer.retire(node);
            }
        }
    }

    /// Runs `op`, and once more if it fails with ENOSPC after the closer thread has caught up:
    /// space that a just-deleted file frees comes back only when its node is closed (a
    /// FORGET that may still be on its way), and a deletion followed at once by a write must
    /// find that space as it would on the backing filesystem itself.
    pub(crate) fn retry_enospc<T>(&self, op: impl Fn() -> FsResult<T>) -> FsResult<T> {
        match op() {
            Err(libc::ENOSPC) => {
                // The FORGET may still be on its way from another worker thread.
                std::thread::sleep(Duration::from_millis(10));
                self.closer.wait_idle(Duration::from_secs(1));
                op()
            }
            other => other,
        }
    }

    /// Records the listing order of regular files (for `prefetch_after`).
    pub(crate) fn link_listing_order(&self, files: &[u64]) {
        let mut nodes = self.nodes.lock().expect("lock");
        for pair in files.windows(2) {
            if let Some(n) = nodes.get_mut(&pair[0]) {
                n.next_in_dir = Some(pair[1]);
            }
        }
    }

    /// `ino` is being opened: asks for the backing data of the next files in its
    /// directory's listing order to be read ahead.
    pub(crate) fn prefetch_after(&self, ino: u64) {
        let mut wanted = Vec::new();
        {
            let mut nodes = self.nodes.lock().expect("lock");
            let mut next = nodes.get_mut(&ino).and_then(|n| {
                n.prefetched = false;
                n.next_in_dir
            });
            for _ in 0..prefetch::FILES_AHEAD {
                let Some(n) = next.and_then(|i| nodes.get_mut(&i)) else {
                    break;
                };
                if !n.prefetched
                    && let Some(fd) = &n.fd
                {
                    n.prefetched = true;
                    wanted.push(fd.clone());
                }
                next = n.next_in_dir;
            }
        }
        for fd in wanted {
            self.prefetcher.hint(fd);
        }
    }

    /// Whether the kernel's cached pages of a regular file are still its contents: the
    /// backing file is as it was when they were last known right. Records the current state.
    pub(crate) fn page_cache_valid(&self, ino: u64) -> bool {
        if self.config.shared_storage {
            return false;
        }
        let Ok(fd) = self.node_fd(ino) else {
            return false;
        };
        let Ok(st) = backing::fstat(fd.as_fd()) else {
            return false;
        };
        let now = page_stamp(&st);
        let mut nodes = self.nodes.lock().expect("lock");
        let Some(n) = nodes.get_mut(&ino) else {
            return false;
        };
        n.page_stamp.replace(now) == Some(now)
    }

    /// The node type and device number a header-only backing file stands for, if its header
    /// authenticates and names one.
    fn read_node_header(&self, path_fd: BorrowedFd<'_>) -> Option<(FileType, u32)> {
        let read = || -> FsResult<[u8; HEADER_LEN]> {
            // A lookup is no access: the header read must not touch the atime.
            let proc = backing::proc_path(path_fd);
            let fd = backing::open_noatime(&proc, OFlags::RDONLY | OFlags::CLOEXEC, true)
                .map_err(errno)?;
            let mut head = [0u8; HEADER_LEN];
            let n = backing::pread_full(fd.as_fd(), &mut head, 0).map_err(errno)?;
            if n == HEADER_LEN { Ok(head) } else { Err(EIO) }
        };
        let head = self.retry_with_access(path_fd, 0o400, read).ok()?;
        let header = FileHeader::decode(&head).ok()?;
        let node = header.node()?;
        header.unwrap_key(&self.keyring).ok()?;
        let kind = match node {
            NodeType::Fifo => FileType::NamedPipe,
            NodeType::Socket => FileType::Socket,
            NodeType::CharDevice => FileType::CharDevice,
            NodeType::BlockDevice => FileType::BlockDevice,
        };
        Some((kind, header.rdev))
    }

    /// Attributes of a node from a backing stat (sizes translated to plaintext).
    pub(crate) fn attr_of(&self, ino: u64, kind: FileType, st: &Stat) -> FileAttr {
        // A FIFO, socket or device node kept in a header-only file: no size, and its device
        // number from the header.
        let header_node = !matches!(
            kind,
            FileType::RegularFile | FileType::Directory | FileType::Symlink
        ) && st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let rdev = if header_node {
            self.nodes
                .lock()
                .expect("lock")
                .get(&ino)
                .map_or(0, |n| n.rdev)
        } else {
            st.st_rdev as u32
        };
        let size = match kind {
            _ if header_node => 0,
            FileType::RegularFile => {
                let open = self
                    .open_files
                    .lock()
                    .expect("lock")
                    .get(&ino)
                    .and_then(Weak::upgrade);
                match open {
                    Some(f) => f.size(),
                    None => self.layout.plaintext_size_lenient(st.st_size as u64),
                }
            }
            // The backing target is base64url of (overhead + n) bytes.
            FileType::Symlink => {
                (st.st_size as u64 * 3 / 4).saturating_sub(blob::BLOB_OVERHEAD as u64)
            }
            _ => st.st_size as u64,
        };
        let (perm, uid, gid) = if ino == ROOT {
            let r = *self.root_attr.lock().expect("lock");
            (r.mode, r.uid, r.gid)
        } else {
            (st.st_mode & 0o7777, st.st_uid, st.st_gid)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: st.st_blocks as u64,
            atime: system_time(st.st_atime, st.st_atime_nsec as i64),
            mtime: system_time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: system_time(st.st_ctime, st.st_ctime_nsec as i64),
            crtime: UNIX_EPOCH,
            kind,
            perm: perm as u16,
            nlink: st.st_nlink as u32,
            uid,
            gid,
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Current attributes of a node, from its pinned backing inode.
    pub(crate) fn getattr_ino(&self, ino: u64) -> FsResult<FileAttr> {
        let (kind, fd) = self.node_kind_fd(ino)?;
        let st = backing::fstat(fd.as_fd()).map_err(errno)?;
        Ok(self.attr_of(ino, kind, &st))
    }

    /// The shared open state of a regular file, opening its backing file if needed.
    pub(crate) fn open_file(&self, ino: u64) -> FsResult<Arc<OpenFile>> {
        self.open_file_for(ino, 0)
    }

    /// `open_file` for an open(2) by `uid`: a backing fd it opens is charged to that user
    /// (`FdCharges`) for as long as the file stays open.
    pub(crate) fn open_file_for(&self, ino: u64, uid: u32) -> FsResult<Arc<OpenFile>> {
        if let Some(f) = self
            .open_files
            .lock()
            .expect("lock")
            .get(&ino)
            .and_then(Weak::upgrade)
        {
            return Ok(f);
        }
        let (kind, fd) = self.node_kind_fd(ino)?;
        if kind != FileType::RegularFile {
            return Err(if kind == FileType::Directory {
                libc::EISDIR
            } else {
                libc::EINVAL
            });
        }
        let charge = self.fd_charges.charge(uid)?;
        // Reopen the pinned inode itself: no path lookup, so nothing can be swapped in.
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let access = if self.config.read_only {
            OFlags::RDONLY
        } else {
            OFlags::RDWR
        };
        let file_fd = self.with_fd_room(|| {
            self.retry_with_access(fd.as_fd(), 0o600, || {
                backing::open_noatime(
                    &proc,
                    access | OFlags::CLOEXEC | OFlags::NONBLOCK,
                    !self.config.atime.files,
                )
                .map_err(errno)
            })
        })?;
        let f = OpenFile::open(file_fd, &self.keyring, self.layout)
            .map_err(|why| self.damaged(ino, "unreadable file", why))?
            .with_write_policy(self)
            .with_charge(charge);
        let mut open = self.open_files.lock().expect("lock");
        // Another thread may have opened it meanwhile: keep one state per inode.
        if let Some(existing) = open.get(&ino).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let f = Arc::new(f);
        open.insert(ino, Arc::downgrade(&f));
        Ok(f)
    }

    /// How long a write past the end waits for the writes before it (`OpenFile::
    /// with_gap_wait`): only the writeback cache sends one file's writes out of order.
    fn gap_wait(&self) -> Duration {
        if self.config.writeback_cache {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        }
    }

    /// How this mount's files grow: the gap wait and whether they may store holes.
    pub(crate) fn write_policy(&self) -> (Duration, bool) {
        (self.gap_wait(), self.config.sparse)
    }

    pub(crate) fn add_handle(&self, h: Handle) -> u64 {
        let fh = self
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handles.lock().expect("lock").insert(fh, h);
        self.activity
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fh
    }

    pub(crate) fn close_handle(&self, fh: u64) {
        // Removed under the lock, dropped (and so closed) outside it.
        let removed = self.handles.lock().expect("lock").remove(&fh);
        if let Some(handle) = removed {
            self.activity
                .open
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(handle);
            self.open_files
                .lock()
                .expect("lock")
                .retain(|_, w| w.strong_count() > 0);
        }
        self.activity.touch();
    }

    pub(crate) fn file_handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        match self.handles.lock().expect("lock").get(&fh) {
            Some(Handle::File(f)) => Ok(f.clone()),
            _ => Err(libc::EBADF),
        }
    }

    /// Decrypted listing of a backing directory: (plaintext name, FUSE inode, type).
    /// Entries that do not decrypt here are skipped (and logged once).
    pub(crate) fn list_dir(&self, ino: u64) -> FsResult<Vec<DirListing>> {
        let (fd, dir_id, _) = self.dir(ino)?;
        let entries = backing::list(self.readable_dir(ino)?.as_fd()).map_err(errno)?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let encoded = match names::classify(&e.name) {
                EntryKind::Encrypted => e.name.clone(),
                EntryKind::LongName { side_file } => {
                    match backing::read_small(fd.as_fd(), &side_file, 4096)
                        .map_err(|e| e.to_string())
                        .and_then(|b| read_side_file(&e.name, &b).map_err(|e| e.to_string()))
                    {
                        Ok(enc) => enc,
                        Err(why) => {
                            self.damaged(ino, &format!("long name {}", e.name), why);
                            continue;
                        }
                    }
                }
                EntryKind::Reserved | EntryKind::Foreign => continue,
            };
            match decrypt_name(&self.keyring, &dir_id, &encoded) {
                Ok((name, _)) => {
                    let mut kind = if e.file_type == rustix::fs::FileType::Unknown {
                        match backing::lstat(fd.as_fd(), &e.name) {
                            Ok(st) => file_type(st.st_mode),
                            Err(_) => continue,
                        }
                    } else {
                        file_type(e.file_type.as_raw_mode())
                    };
                    // A FIFO, socket or device node in a header-only file lists as a regular
                    // file in the backing directory; a known node says what it is.
                    if kind == FileType::RegularFile
                        && let Some(n) = self.nodes.lock().expect("lock").get(&self.fuse_ino(e.ino))
                    {
                        kind = n.kind;
                    }
                    out.push(DirListing {
                        name,
                        off: entry_offset(&e.name),
                        entry: e.name.clone(),
                        ino: self.fuse_ino(e.ino),
                        kind,
                    });
                }
                Err(_) => {
                    self.damaged(
                        ino,
                        &format!("entry {}", e.name),
                        "name does not decrypt in this directory",
                    );
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, off: u64) -> DirListing {
        DirListing {
            name: name.as_bytes().to_vec(),
            entry: name.to_string(),
            ino: 0,
            kind: FileType::RegularFile,
            off,
        }
    }

    #[test]
    fn offsets_are_per_entry_and_collisions_still_order_strictly() {
        assert_eq!(entry_offset("abc"), entry_offset("abc"));
        assert_ne!(entry_offset("abc"), entry_offset("abd"));
        assert!((3..(1 << 62) + 3).contains(&entry_offset("x")));
        let mut l = vec![entry("c", 9), entry("a", 5), entry("b", 5), entry("d", 6)];
        order_listing(&mut l);
        let offs: Vec<u64> = l.iter().map(|e| e.off).collect();
        assert_eq!(offs, [5, 6, 7, 9], "a collision steps past its neighbour");
        assert_eq!(resume_at(&l, 0), 0);
        assert_eq!(resume_at(&l, 6), 2);
        assert_eq!(
            resume_at(&l, 8),
            3,
            "an offset no longer listed resumes after it"
        );
        assert_eq!(resume_at(&l, 9), 4);
    }
}
