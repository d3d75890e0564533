//! Where the daemon's log lines go: rate-limited, and in the state directory also
//! size-capped, so that nothing a user of the mount does (a flood of failing requests, junk
//! names, unsupported ioctls) can fill the disk that holds the state directory or drown the
//! lines that matter. Dropped lines are counted, and the count is the next line written.

use std::io::{self, Write};
use std::time::Instant;

use crate::vault::local_state::StateDir;

/// Lines allowed in a burst, and refilled per second after it.
const BURST: f64 = 200.0;
const PER_SECOND: f64 = 10.0;
/// `daemon.log` is moved to `daemon.log.1` (replacing it) when it would grow past this:
/// at most twice this on disk.
pub const MAX_LOG_BYTES: u64 = 4 << 20;
/// A longer line is cut (names can be long, but no line needs more).
const MAX_LINE: usize = 4096;

/// A token bucket of log lines.
pub struct RateLimit {
    tokens: f64,
    last: Instant,
    dropped: u64,
    /// RUST_LOG was set: whoever started the daemon asked for every line (a debug log
    /// would be useless with most of it dropped). The size cap still holds.
    unlimited: bool,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            tokens: BURST,
            last: Instant::now(),
            dropped: 0,
            unlimited: std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty()),
        }
    }
}

impl RateLimit {
    /// Whether one more line may go out now; if so, how many were dropped before it.
    fn admit(&mut self) -> Option<u64> {
        if self.unlimited {
            return Some(0);
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + refill).min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.dropped))
    }
}

/// Formats what goes out for one record: the drop notice (if any) and the record, cut to
/// `MAX_LINE`.
fn line(dropped: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len().min(MAX_LINE) + 80);
    if dropped > 0 {
        out.extend_from_slice(
            format!("[vaultfs] {dropped} log lines dropped (over {PER_SECOND} a second)\n")
                .as_bytes(),
        );
    }
    if record.len() > MAX_LINE {
        out.extend_from_slice(&record[..MAX_LINE]);
        out.extend_from_slice(b" [cut]\n");
    } else {
        out.extend_from_slice(record);
    }
    out
}

/// `daemon.log` in the vault's state directory, rate-limited and rotated at `MAX_LOG_BYTES`.
/// env_logger writes each record with one call.
pub struct DaemonLog {
    dir: StateDir,
    file: std::fs::File,
    size: u64,
    limit: RateLimit,
}

impl DaemonLog {
    pub const NAME: &'static str = "daemon.log";

    pub fn open(dir: StateDir) -> crate::vault::Result<DaemonLog> {
        let file = dir.append(Self::NAME)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(DaemonLog {
            dir,
            file,
            size,
            limit: RateLimit::default(),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let old = format!("{}.1", Self::NAME);
        rustix::fs::renameat(self.dir.as_fd(), Self::NAME, self.dir.as_fd(), old.as_str())?;
        self.file = self
            .dir
            .append(Self::NAME)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.size = 0;
        Ok(())
    }
}

impl Write for DaemonLog {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        let Some(dropped) = self.limit.admit() else {
            return Ok(record.len());
        };
        let out = line(dropped, record);
        if self.size + out.len() as u64 > MAX_LOG_BYTES {
            self.rotate()?;
        }
        self.file.write_all(&out)?;
        self.size += out.len() as u64;
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Standard error (a foreground daemon under systemd, or a command), rate-limited.
#[derive(Default)]
pub struct LimitedStderr(RateLimit);

impl Write for LimitedStderr {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        if let Some(dropped) = self.0.admit() {
            io::stderr().write_all(&line(dropped, record))?;
        }
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_counted() {
        let mut limit = RateLimit {
            unlimited: false,
            ..RateLimit::default()
        };
        let passed = (0..1000).filter(|_| limit.admit().is_some()).count();
        assert!((200..=202).contains(&passed), "{passed}");
        limit.last -= std::time::Duration::from_secs(1);
        let dropped = limit.admit().expect("refilled after a second");
        assert!(dropped >= 798, "{dropped}");
        let out = line(dropped, b"next\n");
        assert!(String::from_utf8_lossy(&out).contains("log lines dropped"));
        assert!(line(0, &vec![b'x'; 10_000]).len() < MAX_LINE + 16);
    }
}
