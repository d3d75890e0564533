//! All of vaultfs's cryptography, as pure functions and small types: no file or FUSE I/O.
//!
//! Key hierarchy (docs/FORMAT.md, "Key hierarchy"):
//! - a keyslot unwraps K_auth and an X25519 private key (`keyslot`),
//! - the private key opens the HPKE seal of each master-key generation (`seal`),
//! - a generation's master key derives the subkeys of `GenerationKeys`,
//! - those wrap per-file content keys (`header`), encrypt names (`names`), directory IDs
//!   (`dirid`), symlink targets and xattrs (`blob`); content keys seal chunks (`chunk`).

pub mod auth;
pub mod blob;
pub mod chunk;
pub mod dirid;
pub mod file;
pub mod header;
pub mod keys;
pub mod keyslot;
pub mod mac;
pub mod names;
pub mod recovery_key;
pub mod seal;
pub mod siv;

use keys::{Key256, SivKey};

/// Errors of the pure crypto layer. Authentication failures carry no detail on purpose.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("authentication failed")]
    Authentication,
    #[error("malformed data: {0}")]
    Malformed(&'static str),
    #[error("invalid length")]
    InvalidLength,
    #[error("the OS random number generator failed")]
    Random,
    #[error("no live key generation {0}")]
    UnknownGeneration(u32),
    #[error("too long")]
    TooLong,
}

/// Length of a vault ID, file ID and directory ID.
pub const ID_LEN: usize = 16;
pub type VaultId = [u8; ID_LEN];
pub type DirId = [u8; ID_LEN];
pub type FileId = [u8; ID_LEN];

/// HKDF labels for the subkeys of a generation's master key (salt: the vault ID).
pub mod labels {
    pub const HEADER_WRAP: &str = "vaultfs v1 header-wrap";
    pub const NAMES: &str = "vaultfs v1 names";
    pub const DIRID: &str = "vaultfs v1 dirid";
    pub const SYMLINK: &str = "vaultfs v1 symlink";
    pub const XATTR_NAME: &str = "vaultfs v1 xattr-name";
    pub const XATTR_VALUE: &str = "vaultfs v1 xattr-value";
    // Subkeys of K_auth (salt: the vault ID).
    pub const DB_MAC: &str = "vaultfs v1 db-mac";
    pub const AUDIT_MAC: &str = "vaultfs v1 audit-mac";
    pub const HPKE_PSK: &str = "vaultfs v1 hpke-psk";
    // Key that wraps K_auth in a recovery slot, from the recovery seed (salt: the vault ID).
    pub const RECOVERY_WRAP: &str = "vaultfs v1 recovery-wrap";
}

/// The subkeys of one master-key generation. Built from the master key and dropped (zeroized)
/// with it; the master key itself is kept only to seal it to new keyslots.
#[derive(Debug, Clone)]
pub struct GenerationKeys {
    pub generation: u32,
    pub master_key: Key256,
    pub header_wrap: SivKey,
    pub names: SivKey,
    pub dirid: SivKey,
    pub symlink: SivKey,
    pub xattr_name: SivKey,
    pub xattr_value: SivKey,
}

impl GenerationKeys {
    pub fn derive(vault_id: &VaultId, generation: u32, master_key: Key256) -> Self {
        let d = |label| master_key.derive::<64>(vault_id, label);
        GenerationKeys {
            generation,
            header_wrap: d(labels::HEADER_WRAP),
            names: d(labels::NAMES),
            dirid: d(labels::DIRID),
            symlink: d(labels::SYMLINK),
            xattr_name: d(labels::XATTR_NAME),
            xattr_value: d(labels::XATTR_VALUE),
            master_key,
        }
    }
}

/// The live generations of a vault: one active (all new writes), and during a rotation one
/// retiring (still read). Lookups try the active generation first.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub vault_id: VaultId,
    active: GenerationKeys,
    retiring: Option<GenerationKeys>,
}

impl Keyring {
    pub fn new(
        vault_id: VaultId,
        active: GenerationKeys,
        retiring: Option<GenerationKeys>,
    ) -> Self {
        Keyring {
            vault_id,
            active,
            retiring,
        }
    }

    pub fn active(&self) -> &GenerationKeys {
        &self.active
    }

    pub fn retiring(&self) -> Option<&GenerationKeys> {
        self.retiring.as_ref()
    }

    /// Live generations, active first: the order in which readers try them.
    pub fn live(&self) -> impl Iterator<Item = &GenerationKeys> {
        std::iter::once(&self.active).chain(self.retiring.as_ref())
    }

    pub fn get(&self, generation: u32) -> Result<&GenerationKeys, CryptoError> {
        self.live()
            .find(|g| g.generation == generation)
            .ok_or(CryptoError::UnknownGeneration(generation))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn keyring_with(generation: u32, seed: u8) -> Keyring {
        let vault_id = [0x11; ID_LEN];
        let mk = Key256::from_slice(&mut [seed; 32]).unwrap();
        Keyring::new(
            vault_id,
            GenerationKeys::derive(&vault_id, generation, mk),
            None,
        )
    }

    pub fn rotating_keyring() -> Keyring {
        let vault_id = [0x11; ID_LEN];
        let new = GenerationKeys::derive(&vault_id, 2, Key256::from_slice(&mut [2; 32]).unwrap());
        let old = GenerationKeys::derive(&vault_id, 1, Key256::from_slice(&mut [1; 32]).unwrap());
        Keyring::new(vault_id, new, Some(old))
    }
}
