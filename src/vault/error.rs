//! Errors of vault operations. Every message is one line that says what is wrong and, where
//! there is one, what to do next; each variant maps to one exit status.

use std::path::PathBuf;

use crate::crypto::CryptoError;
use crate::exitcodes;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("wrong password: it opens none of this vault's keyslots")]
    WrongPassword,
    #[error("{0}")]
    PasswordSource(String),
    #[error(
        "{0} is not a vaultfs vault (no vaultfs.vault marker); run `vaultfs init` to create one"
    )]
    NotAVault(PathBuf),
    #[error("{0} keeps its key database elsewhere: pass --keystore PATH")]
    ExternalKeystore(PathBuf),
    #[error("key database {0} not found")]
    KeystoreMissing(PathBuf),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("key database {path} refused: {reason}")]
    KeystoreRefused { path: PathBuf, reason: String },
    #[error(
        "key database {path} has been tampered with ({what}); restore it from a backup or run `vaultfs recover --rebuild-keystore`"
    )]
    Tampered { path: PathBuf, what: String },
    #[error(
        "key database {path} is older than one this machine has already used (epoch {found} < {seen}): possible rollback attack; restore the newest copy"
    )]
    Rollback {
        path: PathBuf,
        found: u64,
        seen: u64,
    },
    #[error(
        "key database {path} has a sync-conflict copy {conflict}: keep the right one, delete the other, then retry"
    )]
    SyncConflict { path: PathBuf, conflict: PathBuf },
    #[error(
        "{what} was made by a newer vaultfs ({found} > {supported}, the newest this version reads); upgrade vaultfs"
    )]
    NewerFormat {
        what: String,
        found: i64,
        supported: i64,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    MountFailed(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0} is not a vaultfs mount")]
    NotMounted(PathBuf),
    #[error("cryptography failed: {0}")]
    Crypto(#[from] CryptoError),
}

impl VaultError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VaultError {
        let context = context.into();
        move |source| VaultError::Io { context, source }
    }

    pub fn refused(path: &std::path::Path, reason: impl Into<String>) -> VaultError {
        VaultError::KeystoreRefused {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub fn tampered(path: &std::path::Path, what: impl Into<String>) -> VaultError {
        VaultError::Tampered {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            VaultError::WrongPassword => exitcodes::WRONG_PASSWORD,
            VaultError::PasswordSource(_) => exitcodes::PASSWORD_SOURCE,
            VaultError::NotAVault(_)
            | VaultError::ExternalKeystore(_)
            | VaultError::KeystoreMissing(_) => exitcodes::NOT_A_VAULT,
            VaultError::AlreadyExists(_) => exitcodes::ALREADY_EXISTS,
            VaultError::KeystoreRefused { .. }
            | VaultError::Tampered { .. }
            | VaultError::Rollback { .. }
            | VaultError::SyncConflict { .. } => exitcodes::KEYSTORE_REFUSED,
            VaultError::NewerFormat { .. } => exitcodes::NEWER_FORMAT,
            VaultError::InvalidArgument(_) => exitcodes::USAGE,
            VaultError::Io { .. } => exitcodes::IO,
            VaultError::Crypto(_) => exitcodes::GENERAL,
            VaultError::MountFailed(_) => exitcodes::MOUNT_FAILED,
            VaultError::Busy(_) => exitcodes::BUSY,
            VaultError::NotMounted(_) => exitcodes::NOT_MOUNTED,
        }
    }
}

pub type Result<T, E = VaultError> = std::result::Result<T, E>;
