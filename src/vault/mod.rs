//! The vault: its key database (configuration, keyslots, generations, rotation progress,
//! audit log), the files in the backing directory's root, and the commands that create,
//! unlock and describe it. No FUSE here.

pub mod audit;
pub mod db;
pub mod error;
pub mod init;
pub mod keyslots;
pub mod keystore;
pub mod layout;
pub mod local_state;
pub mod lock;
pub mod pathmap;
pub mod probe;
pub mod rebuild;
pub mod recovery_file;
pub mod state;
pub mod status;

pub use error::{Result, VaultError};

/// Current time in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
