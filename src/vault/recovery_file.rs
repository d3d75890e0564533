//! The recovery-sealed generation file, `vaultfs.recovery.<generation>` in the backing
//! directory's root: with the recovery key, everything `recover --rebuild-keystore` needs to
//! recreate a lost key database. One immutable file per live generation; it can be written
//! without the recovery secret (rotation does), since it copies the recovery slot's blob.
//!
//! ```text
//! offset len field
//!      0   8 magic "VFSRECOV"
//!      8   2 format version (u16 BE)
//!     10  16 vault ID
//!     26   4 chunk size (u32 BE)
//!     30   2 long-name threshold (u16 BE)
//!     32   4 generation (u32 BE)
//!     36   4 recovery slot ID (u32 BE)
//!     40  32 recovery public key
//!     72  48 recovery slot blob: K_auth wrapped under the recovery seed (crypto::keyslot)
//!    120  32 HPKE enc
//!    152  48 the generation's master key, HPKE mode_psk-sealed to the recovery public key
//!            (crypto::seal; aad = bytes 0..120, so every field above is authenticated)
//! ```

use crate::crypto::keys::Key256;
use crate::crypto::keyslot::{RECOVERY_BLOB_LEN, RecoverySlotBinding, SlotSecrets};
use crate::crypto::seal;
use crate::crypto::{CryptoError, VaultId};

pub const MAGIC: &[u8; 8] = b"VFSRECOV";
pub const LEN: usize = 200;
const AAD_END: usize = 120;

/// The recovery file's own structure version (unchanged since format 1).
pub const RECOVERY_FILE_VERSION: u16 = 1;

pub fn file_name(generation: u32) -> String {
    format!("vaultfs.recovery.{generation}")
}

/// The fields of a recovery file before the sealed master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFileInfo {
    pub format_version: u16,
    pub vault_id: VaultId,
    pub chunk_size: u32,
    pub longname_max: u16,
    pub generation: u32,
    pub slot_id: u32,
    pub public_key: [u8; 32],
    pub slot_blob: [u8; RECOVERY_BLOB_LEN],
}

impl RecoveryFileInfo {
    /// The file for `generation` of a vault with `config`, for its recovery slot `slot`.
    pub fn for_slot(
        config: &super::state::Config,
        slot: &super::state::Slot,
        generation: u32,
    ) -> Result<Self, CryptoError> {
        Ok(RecoveryFileInfo {
            format_version: RECOVERY_FILE_VERSION,
            vault_id: config.vault_id,
            chunk_size: config.chunk_size,
            longname_max: config.longname_max as u16,
            generation,
            slot_id: slot.slot_id,
            public_key: slot.public_key,
            slot_blob: slot
                .wrapped
                .clone()
                .try_into()
                .map_err(|_| CryptoError::Malformed("recovery slot blob"))?,
        })
    }

    fn encode_head(&self) -> [u8; AAD_END] {
        let mut b = [0u8; AAD_END];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&self.format_version.to_be_bytes());
        b[10..26].copy_from_slice(&self.vault_id);
        b[26..30].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[30..32].copy_from_slice(&self.longname_max.to_be_bytes());
        b[32..36].copy_from_slice(&self.generation.to_be_bytes());
        b[36..40].copy_from_slice(&self.slot_id.to_be_bytes());
        b[40..72].copy_from_slice(&self.public_key);
        b[72..120].copy_from_slice(&self.slot_blob);
        b
    }

    /// Builds the file: needs K_auth (for the PSK) and the master key, not the recovery seed.
    pub fn seal(&self, k_auth: &Key256, master_key: &Key256) -> Result<[u8; LEN], CryptoError> {
        let head = self.encode_head();
        let psk = seal::psk_from_k_auth(k_auth, &self.vault_id);
        let (enc, sealed) = seal::seal_master_key(
            &self.public_key,
            &psk,
            &self.vault_id,
            self.generation,
            &head,
            master_key,
        )?;
        let mut out = [0u8; LEN];
        out[..AAD_END].copy_from_slice(&head);
        out[AAD_END..AAD_END + 32].copy_from_slice(&enc);
        out[AAD_END + 32..].copy_from_slice(&sealed);
        Ok(out)
    }

    /// Parses the public fields (not yet authenticated: see `open`).
    pub fn decode(bytes: &[u8]) -> Result<RecoveryFileInfo, CryptoError> {
        if bytes.len() != LEN || &bytes[..8] != MAGIC {
            return Err(CryptoError::Malformed("not a vaultfs recovery file"));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != RECOVERY_FILE_VERSION {
            return Err(CryptoError::Malformed(
                "recovery file of another format version (a newer vaultfs?)",
            ));
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Ok(RecoveryFileInfo {
            format_version: version,
            vault_id: bytes[10..26].try_into().expect("16 bytes"),
            chunk_size: u32_at(26),
            longname_max: u16::from_be_bytes([bytes[30], bytes[31]]),
            generation: u32_at(32),
            slot_id: u32_at(36),
            public_key: bytes[40..72].try_into().expect("32 bytes"),
            slot_blob: bytes[72..120].try_into().expect("48 bytes"),
        })
    }
}

/// Opens a recovery file with the recovery seed: returns its fields, the slot secrets
/// (private key, K_auth) and the generation's master key. Any change to the file fails.
pub fn open(
    bytes: &[u8],
    seed: &Key256,
) -> Result<(RecoveryFileInfo, SlotSecrets, Key256), CryptoError> {
    let info = RecoveryFileInfo::decode(bytes)?;
    let binding = RecoverySlotBinding {
        vault_id: &info.vault_id,
        slot_id: info.slot_id,
        public_key: &info.public_key,
    };
    let secrets = binding.unwrap(seed, &info.slot_blob)?;
    let psk = seal::psk_from_k_auth(&secrets.k_auth, &info.vault_id);
    let master = seal::open_master_key(
        &secrets.private_key,
        &psk,
        &info.vault_id,
        info.generation,
        &bytes[..AAD_END],
        &bytes[AAD_END..AAD_END + 32],
        &bytes[AAD_END + 32..],
    )?;
    Ok((info, secrets, master))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::seal::keypair_from_seed;

    #[test]
    fn round_trip_and_every_bit_flip() {
        let seed = Key256::random().unwrap();
        let (_, public_key) = keypair_from_seed(&seed);
        let k_auth = Key256::random().unwrap();
        let vault_id = [7u8; 16];
        let binding = RecoverySlotBinding {
            vault_id: &vault_id,
            slot_id: 2,
            public_key: &public_key,
        };
        let slot_blob: [u8; RECOVERY_BLOB_LEN] = binding.wrap(&seed, &k_auth).try_into().unwrap();
        let info = RecoveryFileInfo {
            format_version: 1,
            vault_id,
            chunk_size: 4096,
            longname_max: 255,
            generation: 3,
            slot_id: 2,
            public_key,
            slot_blob,
        };
        let mk = Key256::random().unwrap();
        let file = info.seal(&k_auth, &mk).unwrap();
        let (back, secrets, master) = open(&file, &seed).unwrap();
        assert_eq!(back, info);
        assert_eq!(secrets.k_auth.expose(), k_auth.expose());
        assert_eq!(master.expose(), mk.expose());
        assert!(open(&file, &Key256::random().unwrap()).is_err());
        for bit in 0..LEN * 8 {
            let mut bad = file;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&bad, &seed).is_err(), "bit {bit}");
        }
    }
}
