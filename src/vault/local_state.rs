//! What this machine remembers about each vault, under `$XDG_STATE_HOME/vaultfs/<vault ID>/`:
//! the highest key-database epoch seen (rollback detection) and the local audit log that
//! read-only operations (mount, unmount) append to and the next writing command merges into
//! the key database.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};

use super::error::{Result, VaultError};
use crate::crypto::VaultId;

/// `$XDG_STATE_HOME/vaultfs`, else `$HOME/.local/state/vaultfs`.
pub fn state_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("vaultfs"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(home).join(".local/state/vaultfs"));
    }
    Err(VaultError::InvalidArgument(
        "cannot find a state directory: set XDG_STATE_HOME or HOME".into(),
    ))
}

fn vault_dir(vault_id: &VaultId) -> Result<PathBuf> {
    let dir = state_root()?.join(HEXLOWER.encode(vault_id));
    fs::create_dir_all(&dir).map_err(VaultError::io(format!(
        "cannot create state directory {}",
        dir.display()
    )))?;
    Ok(dir)
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename).
fn write_atomic(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let err = VaultError::io(format!("cannot write {}", path.display()));
    let mut f = fs::File::create(&tmp)
        .map_err(VaultError::io(format!("cannot write {}", tmp.display())))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(VaultError::io(format!("cannot write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(err)
}

/// The highest epoch this machine has seen for the vault (0 if never).
pub fn seen_epoch(vault_id: &VaultId) -> Result<u64> {
    let path = vault_dir(vault_id)?.join("epoch");
    match fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            VaultError::InvalidArgument(format!(
                "{} is damaged: delete it to trust the current key database",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(VaultError::io(format!("cannot read {}", path.display()))(e)),
    }
}

/// Records `epoch` as seen, if it is higher than what is recorded.
pub fn record_epoch(vault_id: &VaultId, epoch: u64) -> Result<()> {
    if epoch > seen_epoch(vault_id)? {
        write_atomic(
            &vault_dir(vault_id)?.join("epoch"),
            format!("{epoch}\n").as_bytes(),
        )?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalAuditEntry {
    pub time: i64,
    pub event: String,
    pub detail: String,
}

fn audit_path(vault_id: &VaultId) -> Result<PathBuf> {
    Ok(vault_dir(vault_id)?.join("audit.jsonl"))
}

/// Appends an entry to the local audit log (for operations that do not write the database).
pub fn record_local_audit(vault_id: &VaultId, event: &str, detail: &str) -> Result<()> {
    let path = audit_path(vault_id)?;
    let entry = LocalAuditEntry {
        time: super::now(),
        event: event.into(),
        detail: detail.into(),
    };
    let mut line = serde_json::to_string(&entry).expect("audit entries serialize");
    line.push('\n');
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(VaultError::io(format!("cannot open {}", path.display())))?;
    f.write_all(line.as_bytes())
        .map_err(VaultError::io(format!("cannot write {}", path.display())))
}

/// Entries waiting to be merged into the key database. Damaged lines are skipped.
pub fn pending_local_audit(vault_id: &VaultId) -> Result<Vec<LocalAuditEntry>> {
    let path = audit_path(vault_id)?;
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(VaultError::io(format!("cannot read {}", path.display()))(e)),
    }
}

/// Forgets the local entries once they are in the key database.
pub fn clear_local_audit(vault_id: &VaultId) -> Result<()> {
    let path = audit_path(vault_id)?;
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VaultError::io(format!(
            "cannot remove {}",
            path.display()
        ))(e)),
        _ => Ok(()),
    }
}
