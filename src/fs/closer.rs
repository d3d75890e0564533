//! Drops forgotten nodes on a thread of their own. Closing a node's fd can be slow: the last
//! close of an unlinked backing inode frees its blocks, which must not hold up the FUSE
//! request (FORGET) or the worker thread that serves it. Nodes queue up in batches; the
//! thread is woken only when the queue goes from empty to not empty.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

const BATCH_PAUSE: Duration = Duration::from_millis(5);

pub(crate) struct Closer<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    /// Set once the thread runs (in the serving process: a daemon forks after setup).
    started: OnceLock<()>,
}

struct Shared<T> {
    queue: Mutex<Vec<T>>,
    wake: Condvar,
    /// Queued or being dropped.
    pending: AtomicUsize,
}

impl<T: Send + 'static> Closer<T> {
    pub fn new() -> Closer<T> {
        Closer {
            shared: Arc::new(Shared {
                queue: Mutex::new(Vec::new()),
                wake: Condvar::new(),
                pending: AtomicUsize::new(0),
            }),
            started: OnceLock::new(),
        }
    }

    pub fn start(&self) -> std::io::Result<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("vaultfs-closer".into())
            .spawn(move || {
                loop {
                    let batch = {
                        let mut q = shared.queue.lock().expect("lock");
                        while q.is_empty() {
                            q = shared.wake.wait(q).expect("lock");
                        }
                        std::mem::take(&mut *q)
                    };
                    let n = batch.len();
                    drop(batch);
                    shared.pending.fetch_sub(n, Ordering::Release);
                    // Let the next batch gather: one wake-up per batch, not per node.
                    std::thread::sleep(BATCH_PAUSE);
                }
            })?;
        let _ = self.started.set(());
        Ok(())
    }

    /// Hands `item` to the thread to drop (drops it here if the thread is not running).
    pub fn retire(&self, item: T) {
        if self.started.get().is_none() {
            return drop(item);
        }
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        let mut q = self.shared.queue.lock().expect("lock");
        q.push(item);
        if q.len() == 1 {
            self.shared.wake.notify_one();
        }
    }

    /// Waits until everything retired so far is dropped, or until `limit` has passed.
    pub fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.shared.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops, to see where and when they happen.
    struct Probe(Arc<AtomicUsize>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drops_inline_until_started_then_on_the_thread() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let closer = Closer::new();
        closer.retire(Probe(dropped.clone()));
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "not started: dropped at once"
        );
        closer.start().unwrap();
        for _ in 0..1000 {
            closer.retire(Probe(dropped.clone()));
        }
        closer.wait_idle(Duration::from_secs(10));
        assert_eq!(dropped.load(Ordering::SeqCst), 1001);
        assert_eq!(closer.shared.pending.load(Ordering::SeqCst), 0);
    }
}
