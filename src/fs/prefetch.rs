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

/// What to read ahead.
pub(crate) enum Job {
    /// The start of the file an O_PATH fd of a node pins.
    File(Arc<OwnedFd>),
    /// `vaultfs.dirid` of each of these subdirectories of a directory.
    DirIds(Arc<OwnedFd>, Vec<String>),
}

pub(crate) struct Prefetcher {
    queue: std::sync::OnceLock<SyncSender<Job>>,
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

    /// Queues `job` (dropped if the queue is full: read-ahead is only a hint).
    pub fn hint(&self, job: Job) {
        if let Some(q) = self.queue.get()
            && let Err(TrySendError::Disconnected(_)) = q.try_send(job)
        {
            log::debug!("prefetch thread gone");
        }
    }
}

fn run(rx: Receiver<Job>) {
    for job in rx {
        match job {
            Job::File(path_fd) => {
                // O_PATH fds take no fadvise: open the pinned inode itself for reading.
                let proc = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
                will_need(rustix::fs::CWD, &proc);
            }
            Job::DirIds(dir, subdirs) => {
                for sub in subdirs {
                    let id_file = format!("{sub}/{}", crate::crypto::names::DIRID_FILE);
                    will_need(dir.as_fd(), &id_file);
                }
            }
        }
    }
}

/// Starts reading the first `BYTES_PER_FILE` of `path` (relative to `dir`).
fn will_need(dir: impl AsFd, path: &str) {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    // NOATIME needs ownership of the backing file (or root).
    let Ok(fd) = rustix::fs::openat(dir.as_fd(), path, flags | OFlags::NOATIME, Mode::empty())
        .or_else(|_| rustix::fs::openat(dir.as_fd(), path, flags, Mode::empty()))
    else {
        return;
    };
    let _ = rustix::fs::fadvise(
        fd.as_fd(),
        0,
        std::num::NonZeroU64::new(BYTES_PER_FILE),
        rustix::fs::Advice::WillNeed,
    );
}
