//! Mapping paths between the plaintext view and the backing directory without mounting
//! (`vaultfs decrypt-path` / `encrypt-path`): for finding a file named in a sync log or a
//! backup, as gocryptfs-xray and Cryptomator's "decrypt file name" do.

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::error::{Result, VaultError};
use crate::crypto::dirid::{ROOT_PARENT, open_dir_id};
use crate::crypto::names::{
    BackingName, DIRID_FILE, DIRID_NEXT_FILE, EntryKind, classify, decrypt_name, encrypt_name,
    read_side_file,
};
use crate::crypto::{DirId, Keyring};

fn invalid(msg: String) -> VaultError {
    VaultError::InvalidArgument(msg)
}

/// The ID of the backing directory `dir`, found at (`parent`, `entry`).
fn dir_id_at(keyring: &Keyring, dir: &Path, parent: &DirId, entry: &str) -> Result<DirId> {
    for file in [DIRID_FILE, DIRID_NEXT_FILE] {
        if let Ok(bytes) = fs::read(dir.join(file))
            && let Ok((id, _)) = open_dir_id(keyring, parent, entry, &bytes)
        {
            return Ok(id);
        }
    }
    Err(invalid(format!(
        "{}: directory ID missing or does not match its place",
        dir.display()
    )))
}

fn root_id(vault: &Path, keyring: &Keyring) -> Result<DirId> {
    let bytes = fs::read(vault.join(DIRID_FILE))
        .map_err(VaultError::io("cannot read the root directory ID"))?;
    open_dir_id(keyring, &ROOT_PARENT, "", &bytes)
        .map(|(id, _)| id)
        .map_err(|e| invalid(format!("root directory ID: {e}")))
}

fn components(p: &Path) -> Result<Vec<String>> {
    p.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| match c {
            Component::Normal(s) => s
                .to_str()
                .map(String::from)
                .ok_or_else(|| invalid(format!("{}: not a vaultfs name", p.display()))),
            _ => Err(invalid(format!("{}: '..' is not allowed", p.display()))),
        })
        .collect()
}

/// Plaintext path (relative to the mount root) of a backing path (absolute, or relative to
/// the vault).
pub fn decrypt_path(vault: &Path, keyring: &Keyring, backing: &Path) -> Result<PathBuf> {
    let rel = if backing.is_absolute() {
        let vault_abs = fs::canonicalize(vault)
            .map_err(VaultError::io(format!("cannot read {}", vault.display())))?;
        backing
            .strip_prefix(&vault_abs)
            .or_else(|_| backing.strip_prefix(vault))
            .map_err(|_| {
                invalid(format!(
                    "{} is not inside the vault {}",
                    backing.display(),
                    vault.display()
                ))
            })?
            .to_path_buf()
    } else {
        backing.to_path_buf()
    };
    let parts = components(&rel)?;
    let mut id = root_id(vault, keyring)?;
    let mut dir = vault.to_path_buf();
    let mut out = PathBuf::new();
    for (i, entry) in parts.iter().enumerate() {
        let encoded = match classify(entry) {
            EntryKind::Encrypted => entry.clone(),
            EntryKind::LongName { side_file } => {
                let side = fs::read(dir.join(&side_file))
                    .map_err(VaultError::io(format!("cannot read {side_file}")))?;
                read_side_file(entry, &side).map_err(|e| invalid(format!("{side_file}: {e}")))?
            }
            EntryKind::Reserved => {
                return Err(invalid(format!(
                    "{entry} is a vaultfs file, not an encrypted name"
                )));
            }
            EntryKind::Foreign => return Err(invalid(format!("{entry} is not an encrypted name"))),
        };
        let (name, _) = decrypt_name(keyring, &id, &encoded).map_err(|_| {
            invalid(format!(
                "{entry} does not decrypt in this directory (wrong vault, or moved here?)"
            ))
        })?;
        out.push(String::from_utf8_lossy(&name).into_owned());
        let next = dir.join(entry);
        if i + 1 < parts.len() {
            id = dir_id_at(keyring, &next, &id, entry)?;
        }
        dir = next;
    }
    Ok(out)
}

/// Backing path (relative to the vault) of a plaintext path (relative to the mount root).
/// The last component need not exist; directories on the way must.
pub fn encrypt_path(
    vault: &Path,
    keyring: &Keyring,
    longname_max: usize,
    plain: &Path,
) -> Result<PathBuf> {
    let parts = components(plain)?;
    let mut id = root_id(vault, keyring)?;
    let mut dir = vault.to_path_buf();
    let mut out = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        // An entry still under the retiring generation (mid-rotation) is where it is.
        let mut chosen = None;
        for keys in keyring.live() {
            let encoded = encrypt_name(keys, &id, part.as_bytes())
                .map_err(|e| invalid(format!("{part}: {e}")))?;
            let bn = BackingName::new(encoded, longname_max);
            if chosen.is_none() || fs::symlink_metadata(dir.join(bn.entry())).is_ok() {
                let exists = fs::symlink_metadata(dir.join(bn.entry())).is_ok();
                chosen = Some(bn);
                if exists {
                    break;
                }
            }
        }
        let bn = chosen.expect("at least one live generation");
        out.push(bn.entry());
        let next = dir.join(bn.entry());
        if i + 1 < parts.len() {
            id = dir_id_at(keyring, &next, &id, bn.entry())
                .map_err(|_| invalid(format!("{part}: no such directory in the vault")))?;
        }
        dir = next;
    }
    Ok(out)
}
