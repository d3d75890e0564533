//! Read-ahead across files: when a program opens the files of a directory one after another
//! in listing order (md5sum, grep -r, cp -r, backups), the next few files' backing data is
//! requested from the disk while it still works on the current one, so each open does not
//! wait for its own cold read. A background thread asks the backing filesystem for it with
//! posix_fadvise(WILLNEED), which starts the reads and returns at once.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Files read ahead of the one being opened.
pub(crate) const FILES_AHEAD: usize = 8;
/// At most this much of each file (its header and first chunks).
const BYTES_PER_FILE: u64 = 256 * 1024;
/// Requests waiting for the thread; more are dropped (read-ahead is only a hint).
const QUEUE: usize = 64;

pub(crate) struct Prefetcher {
    queue: std::sync::OnceLock<SyncSender<Arc<OwnedFd>>>,
}

impl Prefetcher {
    pub fn new() -> Prefetcher {
        Prefetcher {
            queue: std::sync::OnceLock::new(),
        }
    }

    /// Starts the thread (in the serving process; see `Closer::start`).
    pub fn start(&self) -> std::io::Result<()> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("vaultfs-prefetch".into())
            .spawn(move || run(rx))?;
        let _ = self.queue.set(tx);
        Ok(())
    }

    /// Asks for the start of the backing file `fd` (an O_PATH fd of a node) to be read.
    pub fn hint(&self, fd: Arc<OwnedFd>) {
        if let Some(q) = self.queue.get()
            && let Err(TrySendError::Disconnected(_)) = q.try_send(fd)
        {
            log::debug!("prefetch thread gone");
        }
    }
}

fn run(rx: Receiver<Arc<OwnedFd>>) {
    for path_fd in rx {
        // O_PATH fds take no fadvise: open the pinned inode itself for reading.
        let proc = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
        let Ok(fd) = rustix::fs::open(
            proc.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOATIME,
            rustix::fs::Mode::empty(),
        )
        .or_else(|_| {
            // NOATIME needs ownership of the backing file (or root).
            rustix::fs::open(
                proc.as_str(),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
        }) else {
            continue;
        };
        let _ = rustix::fs::fadvise(
            fd.as_fd(),
            0,
            std::num::NonZeroU64::new(BYTES_PER_FILE),
            rustix::fs::Advice::WillNeed,
        );
    }
}
