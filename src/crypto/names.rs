//! File and directory names.
//!
//! A name is padded (PKCS#7, to a multiple of 16 bytes, so lengths leak only in 16-byte
//! steps), encrypted with AES-256-SIV under the generation's name key with the parent
//! directory's ID as associated data, and encoded as base64url without padding. An encoded
//! name longer than the vault's `longname_max` is stored under `vaultfs.L.<hash>` with a side
//! file `vaultfs.L.<hash>.name` holding the full encoded name; hash = base64url(SHA-256(encoded
//! name)). Every reserved backing name starts with `vaultfs.`: base64url has no '.', so no
//! encrypted name can collide with one.

use data_encoding::BASE64URL_NOPAD;
use sha2::{Digest, Sha256};

use super::keys::ct_eq;
use super::{CryptoError, DirId, GenerationKeys, Keyring, siv};

/// Longest plaintext name (bytes), as on Linux.
pub const NAME_MAX: usize = 255;
pub const DEFAULT_LONGNAME_MAX: usize = 255;
pub const MIN_LONGNAME_MAX: usize = 62;
pub const RESERVED_PREFIX: &str = "vaultfs.";
pub const LONGNAME_PREFIX: &str = "vaultfs.L.";
pub const LONGNAME_SIDE_SUFFIX: &str = ".name";
/// The directory ID file in every backing directory, and its replacement during a rename.
pub const DIRID_FILE: &str = "vaultfs.dirid";
pub const DIRID_NEXT_FILE: &str = "vaultfs.dirid.new";
/// Entries under construction (mkdir, rotation, --reencrypt) live under this prefix.
pub const TEMP_PREFIX: &str = "vaultfs.tmp.";
const PAD: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name too long")]
    TooLong,
    #[error("invalid name")]
    Invalid,
    #[error("name does not decrypt in this directory")]
    Authentication,
}

/// Checks a plaintext name: 1-255 bytes, no '/' or NUL, not "." or "..".
pub fn validate_plain_name(name: &[u8]) -> Result<(), NameError> {
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(NameError::Invalid);
    }
    Ok(())
}

/// Encrypts a plaintext name for directory `dir_id` under `keys`, returning the encoded name.
pub fn encrypt_name(
    keys: &GenerationKeys,
    dir_id: &DirId,
    name: &[u8],
) -> Result<String, NameError> {
    validate_plain_name(name)?;
    let pad = PAD - name.len() % PAD;
    let mut padded = Vec::with_capacity(name.len() + pad);
    padded.extend_from_slice(name);
    padded.resize(name.len() + pad, pad as u8);
    Ok(BASE64URL_NOPAD.encode(&siv::seal(&keys.names, &[dir_id], &padded)))
}

/// Decrypts an encoded name found in directory `dir_id`, trying each live generation.
/// Returns the plaintext and the generation it was under.
pub fn decrypt_name(
    keyring: &Keyring,
    dir_id: &DirId,
    encoded: &str,
) -> Result<(Vec<u8>, u32), NameError> {
    let sealed = BASE64URL_NOPAD
        .decode(encoded.as_bytes())
        .map_err(|_| NameError::Invalid)?;
    for keys in keyring.live() {
        if let Ok(mut padded) = siv::open(&keys.names, &[dir_id], &sealed) {
            let pad = *padded.last().ok_or(NameError::Invalid)? as usize;
            if pad == 0 || pad > PAD || pad > padded.len() {
                return Err(NameError::Invalid);
            }
            padded.truncate(padded.len() - pad);
            validate_plain_name(&padded)?;
            return Ok((padded, keys.generation));
        }
    }
    Err(NameError::Authentication)
}

/// Where an encoded name lives in the backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingName {
    /// Stored as is.
    Short(String),
    /// Stored as `entry`, with the full encoded name in the side file `side_file`.
    Long {
        entry: String,
        side_file: String,
        encoded: String,
    },
}

impl BackingName {
    pub fn new(encoded: String, longname_max: usize) -> BackingName {
        if encoded.len() <= longname_max {
            return BackingName::Short(encoded);
        }
        let entry = format!("{LONGNAME_PREFIX}{}", long_name_hash(&encoded));
        let side_file = format!("{entry}{LONGNAME_SIDE_SUFFIX}");
        BackingName::Long {
            entry,
            side_file,
            encoded,
        }
    }

    /// The directory entry's name in the backing directory.
    pub fn entry(&self) -> &str {
        match self {
            BackingName::Short(s) => s,
            BackingName::Long { entry, .. } => entry,
        }
    }

    pub fn side_file(&self) -> Option<&str> {
        match self {
            BackingName::Short(_) => None,
            BackingName::Long { side_file, .. } => Some(side_file),
        }
    }
}

fn long_name_hash(encoded: &str) -> String {
    BASE64URL_NOPAD.encode(&Sha256::digest(encoded.as_bytes()))
}

/// What a name found in a backing directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// An encoded name, to decrypt.
    Encrypted,
    /// A long-name entry; its side file has this name.
    LongName { side_file: String },
    /// A vaultfs file that is not a directory entry (ID file, side file, temp entry, root
    /// files): hidden from listings.
    Reserved,
    /// Something vaultfs never writes: hidden, and reported by fsck.
    Foreign,
}

pub fn classify(backing_name: &str) -> EntryKind {
    if let Some(rest) = backing_name.strip_prefix(LONGNAME_PREFIX) {
        let (hash, side) = match rest.strip_suffix(LONGNAME_SIDE_SUFFIX) {
            Some(hash) => (hash, true),
            None => (rest, false),
        };
        if hash.len() != 43 || !is_base64url(hash) {
            return EntryKind::Foreign;
        }
        if side {
            return EntryKind::Reserved;
        }
        return EntryKind::LongName {
            side_file: format!("{backing_name}{LONGNAME_SIDE_SUFFIX}"),
        };
    }
    if backing_name.starts_with(RESERVED_PREFIX) {
        return if is_known_reserved(backing_name) {
            EntryKind::Reserved
        } else {
            EntryKind::Foreign
        };
    }
    if is_base64url(backing_name) && !backing_name.is_empty() {
        EntryKind::Encrypted
    } else {
        EntryKind::Foreign
    }
}

/// Names vaultfs itself writes (besides long-name entries and their side files).
fn is_known_reserved(name: &str) -> bool {
    const ROOT_FILES: [&str; 4] = [
        "vaultfs.vault",
        "vaultfs.db",
        "vaultfs.db-journal",
        "vaultfs.root",
    ];
    name == DIRID_FILE
        || name == DIRID_NEXT_FILE
        || ROOT_FILES.contains(&name)
        || name
            .strip_prefix(TEMP_PREFIX)
            .is_some_and(|t| !t.is_empty())
        || name
            .strip_prefix("vaultfs.recovery.")
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
}

fn is_base64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a long-name side file against the entry it belongs to and returns the encoded name.
pub fn read_side_file(entry: &str, contents: &[u8]) -> Result<String, CryptoError> {
    let hash = entry
        .strip_prefix(LONGNAME_PREFIX)
        .ok_or(CryptoError::Malformed("not a long name"))?;
    let encoded = std::str::from_utf8(contents).map_err(|_| CryptoError::Malformed("side file"))?;
    if !is_base64url(encoded) || !ct_eq(long_name_hash(encoded).as_bytes(), hash.as_bytes()) {
        return Err(CryptoError::Authentication);
    }
    Ok(encoded.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::{keyring_with, rotating_keyring};
    use proptest::prelude::*;

    const DIR: DirId = [7u8; 16];

    proptest! {
        #[test]
        fn names_round_trip(name in proptest::collection::vec(1u8..=255, 1..=255)) {
            prop_assume!(!name.contains(&b'/') && name != b"." && name != b"..");
            let kr = keyring_with(1, 3);
            let enc = encrypt_name(kr.active(), &DIR, &name).unwrap();
            prop_assert!(classify(&enc) == EntryKind::Encrypted);
            prop_assert_eq!(decrypt_name(&kr, &DIR, &enc).unwrap(), (name, 1));
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        let kr = keyring_with(1, 3);
        let k = kr.active();
        assert_eq!(encrypt_name(k, &DIR, &[b'a'; 256]), Err(NameError::TooLong));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(encrypt_name(k, &DIR, bad), Err(NameError::Invalid));
        }
        assert!(encrypt_name(k, &DIR, &[b'a'; 255]).is_ok());
    }

    #[test]
    fn a_name_moved_to_another_directory_does_not_decrypt() {
        let kr = keyring_with(1, 3);
        let enc = encrypt_name(kr.active(), &DIR, b"secret.txt").unwrap();
        assert_eq!(
            decrypt_name(&kr, &[8u8; 16], &enc),
            Err(NameError::Authentication)
        );
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let kr = keyring_with(1, 3);
        let enc = encrypt_name(kr.active(), &DIR, b"report.pdf").unwrap();
        let raw = BASE64URL_NOPAD.decode(enc.as_bytes()).unwrap();
        for bit in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let bad = BASE64URL_NOPAD.encode(&bad);
            assert!(decrypt_name(&kr, &DIR, &bad).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn lengths_leak_only_in_steps_of_16() {
        let kr = keyring_with(1, 3);
        let a = encrypt_name(kr.active(), &DIR, b"a").unwrap();
        let b = encrypt_name(kr.active(), &DIR, b"fifteen-bytes!!").unwrap();
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn both_live_generations_decrypt_during_rotation() {
        let rk = rotating_keyring();
        let old = encrypt_name(rk.retiring().unwrap(), &DIR, b"old").unwrap();
        let new = encrypt_name(rk.active(), &DIR, b"new").unwrap();
        assert_eq!(decrypt_name(&rk, &DIR, &old).unwrap(), (b"old".to_vec(), 1));
        assert_eq!(decrypt_name(&rk, &DIR, &new).unwrap(), (b"new".to_vec(), 2));
        assert_ne!(old, encrypt_name(rk.active(), &DIR, b"old").unwrap());
    }

    #[test]
    fn long_names_use_a_hashed_entry_and_a_checked_side_file() {
        let kr = keyring_with(1, 3);
        let enc = encrypt_name(kr.active(), &DIR, &[b'x'; 255]).unwrap();
        assert!(enc.len() > 255);
        let bn = BackingName::new(enc.clone(), DEFAULT_LONGNAME_MAX);
        let BackingName::Long {
            entry,
            side_file,
            encoded,
        } = &bn
        else {
            panic!("not long")
        };
        assert!(entry.len() <= MIN_LONGNAME_MAX && side_file.len() <= MIN_LONGNAME_MAX);
        assert_eq!(
            classify(entry),
            EntryKind::LongName {
                side_file: side_file.clone()
            }
        );
        assert_eq!(classify(side_file), EntryKind::Reserved);
        assert_eq!(read_side_file(entry, encoded.as_bytes()).unwrap(), enc);
        let other = encrypt_name(kr.active(), &DIR, &[b'y'; 255]).unwrap();
        assert_eq!(
            read_side_file(entry, other.as_bytes()),
            Err(CryptoError::Authentication)
        );
        // Short names stay short; a lower threshold makes them long.
        let short = encrypt_name(kr.active(), &DIR, b"a").unwrap();
        assert_eq!(
            BackingName::new(short.clone(), 255),
            BackingName::Short(short.clone())
        );
        assert!(matches!(
            BackingName::new(short, 20),
            BackingName::Long { .. }
        ));
    }

    #[test]
    fn reserved_names_never_collide() {
        for r in [
            DIRID_FILE,
            DIRID_NEXT_FILE,
            "vaultfs.tmp.abc",
            "vaultfs.db",
            "vaultfs.recovery.12",
        ] {
            assert_eq!(classify(r), EntryKind::Reserved, "{r}");
        }
        // Anything vaultfs never writes is foreign (hidden, reported by fsck).
        for f in [
            "hello.txt",
            "vaultfs.L.x",
            "vaultfs.foo",
            "vaultfs.recovery.x",
            "vaultfs.tmp.",
            "",
        ] {
            assert_eq!(classify(f), EntryKind::Foreign, "{f}");
        }
    }
}
