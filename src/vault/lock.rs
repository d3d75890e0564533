//! The vault lock: an advisory lock on the vault's marker file, held by a mount's daemon for
//! its whole life and by the offline commands that change keys (`rotate`, `passwd`, keyslot
//! and recovery changes), so that no two of them work on one vault at once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::layout::MARKER_FILE;
use super::{Result, VaultError};

/// How long to wait for a daemon whose mount is gone to exit. `umount` returns once the
/// kernel lets go of the mount; the daemon then still flushes and closes, and a mount or
/// rotation started right after (a script, xfstests generic/162 under load) met its lock.
pub const EXITING_DAEMON_WAIT: Duration = Duration::from_secs(10);

/// Takes the lock on `vault` and returns the file that holds it (the lock
/// goes with it). If another process holds it while no mount of this vault exists (a daemon
/// on its way out), waits up to `EXITING_DAEMON_WAIT`; otherwise fails at once with
/// `MountFailed(held)`.
pub fn lock(vault: &Path, held: impl FnOnce() -> String) -> Result<File> {
    let marker = File::open(vault.join(MARKER_FILE))
        .map_err(VaultError::io(format!("cannot open {}", vault.display())))?;
    let canonical = std::fs::canonicalize(vault).unwrap_or_else(|_| vault.to_path_buf());
    let start = Instant::now();
    loop {
        // SAFETY: flock on an fd we own; released when `marker` closes.
        if unsafe { libc::flock(marker.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(marker);
        }
        if start.elapsed() >= EXITING_DAEMON_WAIT || crate::mountinfo::vault_is_mounted(&canonical)
        {
            return Err(VaultError::MountFailed(held()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
