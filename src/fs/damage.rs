//! Damaged or planted objects met while serving requests: each is logged once, and all are
//! counted. The set of objects already logged is bounded and starts afresh when full, so no
//! number of junk names switches the logging off (issue 15, finding 5); the daemon log's
//! rate limit bounds what a flood of them writes (`daemon::logfile`), and the running count
//! in every line, and in the line at unmount, leaves a trace of what it dropped.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Objects remembered as logged before the set starts afresh.
const MAX_REMEMBERED: usize = 10_000;

#[derive(Default)]
pub struct DamageReports {
    logged: Mutex<HashSet<String>>,
    count: AtomicU64,
}

impl DamageReports {
    /// Counts one damaged object met, logging `message` if `key` was not logged lately.
    pub fn report(&self, key: String, message: impl FnOnce() -> String) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged = self.logged.lock().expect("damage reports lock");
        if logged.len() >= MAX_REMEMBERED {
            logged.clear();
        }
        if logged.insert(key) {
            let message = message();
            log::error!("{message} (damaged objects met by this mount: {n})");
        }
    }

    /// Damaged objects met so far (with repeats).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_keys_never_switches_logging_off() {
        let reports = DamageReports::default();
        for i in 0..(3 * MAX_REMEMBERED) {
            reports.report(format!("junk {i}"), String::new);
        }
        let mut logged = false;
        reports.report("the damaged file".into(), || {
            logged = true;
            String::new()
        });
        assert!(logged);
        assert_eq!(reports.count(), 3 * MAX_REMEMBERED as u64 + 1);
        assert!(reports.logged.lock().unwrap().len() <= MAX_REMEMBERED);
    }
}
