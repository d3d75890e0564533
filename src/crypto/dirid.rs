//! Directory IDs. Each backing directory holds `vaultfs.dirid`: its random 16-byte ID, sealed
//! with associated data (vault ID, parent directory's ID, the directory's own backing entry
//! name, generation). A valid ID file copied into another directory, or a directory moved elsewhere in the
//! backing tree, therefore fails to open.
//!
//! ```text
//! offset len field
//!      0   1 version (1)
//!      1   4 generation (u32 BE)
//!      5  32 AES-256-SIV(dirid key, AD = [vault ID, parent ID, entry name, generation (u32 BE)],
//!            directory ID)
//! ```
//! The root directory's parent ID is 16 zero bytes and its entry name is empty.

use super::{CryptoError, DirId, GenerationKeys, Keyring, siv};

pub const DIRID_FILE_LEN: usize = 37;
const VERSION: u8 = 1;
pub const ROOT_PARENT: DirId = [0u8; 16];

/// Seals `dir_id` for the place `(parent, entry_name)` under `keys`.
pub fn seal_dir_id(
    keys: &GenerationKeys,
    vault_id: &[u8; 16],
    parent: &DirId,
    entry_name: &str,
    dir_id: &DirId,
) -> [u8; DIRID_FILE_LEN] {
    let mut out = [0u8; DIRID_FILE_LEN];
    out[0] = VERSION;
    out[1..5].copy_from_slice(&keys.generation.to_be_bytes());
    let gen_bytes = keys.generation.to_be_bytes();
    let sealed = siv::seal(
        &keys.dirid,
        &[vault_id, parent, entry_name.as_bytes(), &gen_bytes],
        dir_id,
    );
    out[5..].copy_from_slice(&sealed);
    out
}

/// Opens a directory ID file found at `(parent, entry_name)`. Returns the ID and generation.
pub fn open_dir_id(
    keyring: &Keyring,
    parent: &DirId,
    entry_name: &str,
    bytes: &[u8],
) -> Result<(DirId, u32), CryptoError> {
    if bytes.len() != DIRID_FILE_LEN {
        return Err(CryptoError::Malformed(
            "directory ID file has the wrong length",
        ));
    }
    if bytes[0] != VERSION {
        return Err(CryptoError::Malformed(
            "directory ID file of another format version (a newer vaultfs?)",
        ));
    }
    let generation = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
    let keys = keyring.get(generation)?;
    let gen_bytes = generation.to_be_bytes();
    let plain = siv::open(
        &keys.dirid,
        &[&keyring.vault_id, parent, entry_name.as_bytes(), &gen_bytes],
        &bytes[5..],
    )?;
    let id: DirId = plain.try_into().map_err(|_| CryptoError::Authentication)?;
    Ok((id, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::keyring_with;

    #[test]
    fn round_trip_and_binding() {
        let kr = keyring_with(1, 4);
        let id = [0x42u8; 16];
        let sealed = seal_dir_id(kr.active(), &kr.vault_id, &[1; 16], "ABCD", &id);
        assert_eq!(
            open_dir_id(&kr, &[1; 16], "ABCD", &sealed).unwrap(),
            (id, 1)
        );
        // Copied into another parent, or found under another name: refused.
        assert!(open_dir_id(&kr, &[2; 16], "ABCD", &sealed).is_err());
        assert!(open_dir_id(&kr, &[1; 16], "ABCE", &sealed).is_err());
        for bit in 0..DIRID_FILE_LEN * 8 {
            let mut bad = sealed;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                open_dir_id(&kr, &[1; 16], "ABCD", &bad).is_err(),
                "bit {bit}"
            );
        }
    }
}
