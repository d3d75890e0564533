//! Where a vault's files are: the backing directory's root files and the key database.
//!
//! Root of the backing directory (all names start with `vaultfs.`, which no encrypted name
//! can, see `crypto::names`):
//! - `vaultfs.vault`      marker: says this is a vault, its ID and where its keystore is
//! - `vaultfs.db`         the key database, unless it lives elsewhere (`--keystore`)
//! - `vaultfs.dirid`      the root directory's sealed ID
//! - `vaultfs.recovery.N` recovery-sealed generation N (if the vault has a recovery key)

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;

use super::error::{Result, VaultError};
use crate::crypto::VaultId;

pub const MARKER_FILE: &str = "vaultfs.vault";
pub const DB_FILE: &str = "vaultfs.db";

/// The vault's backing directory and key database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultPaths {
    pub backing: PathBuf,
    pub keystore: PathBuf,
    pub external_keystore: bool,
}

/// The marker's contents. Informational (not authenticated): the key database is the
/// authority, and its vault ID must match the marker's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub format_version: i64,
    pub vault_id: VaultId,
    pub external_keystore: bool,
}

impl Marker {
    pub fn render(&self) -> String {
        format!(
            "vaultfs vault\nformat-version: {}\nvault-id: {}\nkeystore: {}\n",
            self.format_version,
            HEXLOWER.encode(&self.vault_id),
            if self.external_keystore {
                "external"
            } else {
                "internal"
            }
        )
    }

    pub fn parse(text: &str) -> Option<Marker> {
        let mut lines = text.lines();
        if lines.next()? != "vaultfs vault" {
            return None;
        }
        let (mut version, mut id, mut external) = (None, None, None);
        for line in lines {
            let (k, v) = line.split_once(": ")?;
            match k {
                "format-version" => version = v.parse().ok(),
                "vault-id" => id = HEXLOWER.decode(v.as_bytes()).ok()?.try_into().ok(),
                "keystore" => external = Some(v == "external"),
                _ => {}
            }
        }
        Some(Marker {
            format_version: version?,
            vault_id: id?,
            external_keystore: external?,
        })
    }
}

impl VaultPaths {
    /// Finds an existing vault's files; `keystore` overrides the database location.
    pub fn resolve(vault: &Path, keystore: Option<&Path>) -> Result<(VaultPaths, Marker)> {
        if !vault.is_dir() {
            return Err(VaultError::NotAVault(vault.into()));
        }
        let marker_path = vault.join(MARKER_FILE);
        let text = match fs::read_to_string(&marker_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaultError::NotAVault(vault.into()));
            }
            Err(e) => {
                return Err(VaultError::io(format!(
                    "cannot read {}",
                    marker_path.display()
                ))(e));
            }
        };
        let marker = Marker::parse(&text).ok_or_else(|| {
            VaultError::InvalidArgument(format!(
                "{} is damaged; it should read as `vaultfs vault` plus three lines",
                marker_path.display()
            ))
        })?;
        if marker.format_version > super::state::FORMAT_VERSION {
            return Err(VaultError::NewerFormat {
                what: format!("vault {}", vault.display()),
                found: marker.format_version,
                supported: super::state::FORMAT_VERSION,
            });
        }
        let paths = match keystore {
            Some(k) => VaultPaths {
                backing: vault.into(),
                keystore: k.into(),
                external_keystore: true,
            },
            None if marker.external_keystore => {
                return Err(VaultError::ExternalKeystore(vault.into()));
            }
            None => VaultPaths {
                backing: vault.into(),
                keystore: vault.join(DB_FILE),
                external_keystore: false,
            },
        };
        Ok((paths, marker))
    }
}

/// Raises the marker's format version to this build's before this build writes objects
/// that an older vaultfs cannot read (format 2: file headers of version 2), so that an older
/// vaultfs refuses the vault with one message instead of failing file by file. Durable
/// before it returns; a marker already at the current version is left alone.
pub fn upgrade_marker(vault: &Path) -> Result<()> {
    let path = vault.join(MARKER_FILE);
    let text = fs::read_to_string(&path)
        .map_err(VaultError::io(format!("cannot read {}", path.display())))?;
    let marker = Marker::parse(&text).ok_or_else(|| VaultError::NotAVault(vault.into()))?;
    if marker.format_version >= super::state::FORMAT_VERSION {
        return Ok(());
    }
    let upgraded = Marker {
        format_version: super::state::FORMAT_VERSION,
        ..marker
    };
    write_file_durably(vault, MARKER_FILE, upgraded.render().as_bytes(), 0o644)
}

/// Writes a new file atomically and durably: temp name, fsync, rename, fsync of the directory.
pub fn write_file_durably(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    let tmp_name = format!(
        "{}{}",
        crate::crypto::names::TEMP_PREFIX,
        HEXLOWER.encode(&crate::crypto::keys::random_array::<8>()?)
    );
    let tmp = dir.join(&tmp_name);
    let target = dir.join(name);
    let err = || VaultError::io(format!("cannot write {}", target.display()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        // A directory planted under the name would make every rename onto it fail.
        crate::fs::backing::rename_onto_reserved(
            std::os::fd::AsFd::as_fd(&fs::File::open(dir)?),
            &tmp_name,
            name,
        )?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err())
}
