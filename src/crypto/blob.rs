//! Small sealed values: symlink targets and xattr names and values.
//!
//! A blob is `version(1) || generation (u32 BE) || nonce(16) || AES-256-SIV(key, AD = [nonce,
//! generation, context], plaintext)`. The random nonce makes equal values encrypt differently.
//! Symlink targets are stored base64url-encoded as the backing symlink's target. xattr names
//! are encrypted deterministically (so getxattr can find them) like file names, without
//! directory binding, and stored as `user.<base64url>`; values are blobs with the encrypted
//! name as context, so a value moved to another attribute name fails.

use data_encoding::BASE64URL_NOPAD;

use super::keys::random_array;
use super::siv::{self, SIV_TAG_LEN};
use super::{CryptoError, GenerationKeys, Keyring};
use crate::crypto::keys::SivKey;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 16;
pub const BLOB_OVERHEAD: usize = 1 + 4 + NONCE_LEN + SIV_TAG_LEN;
/// Longest backing symlink target the kernel passes (PAGE_SIZE - 1).
const BACKING_TARGET_MAX: usize = 4095;
/// Longest plaintext symlink target: what still fits once sealed and encoded.
pub const SYMLINK_TARGET_MAX: usize = BACKING_TARGET_MAX * 3 / 4 - BLOB_OVERHEAD;
/// Longest backing xattr value (Linux XATTR_SIZE_MAX).
const BACKING_XATTR_VALUE_MAX: usize = 65536;
pub const XATTR_VALUE_MAX: usize = BACKING_XATTR_VALUE_MAX - BLOB_OVERHEAD;
/// Backing xattr names are `user.` + base64url, at most 255 bytes.
const BACKING_XATTR_NAME_MAX: usize = 255;
pub const XATTR_USER_PREFIX: &str = "user.";
const NAME_PAD: usize = 16;
/// Longest plaintext xattr name after `user.` (padding always adds at least one byte).
pub const XATTR_NAME_MAX: usize = {
    let sealed_max = (BACKING_XATTR_NAME_MAX - XATTR_USER_PREFIX.len()) * 3 / 4;
    (sealed_max - SIV_TAG_LEN) / NAME_PAD * NAME_PAD - 1
};

const SYMLINK_CONTEXT: &[u8] = b"symlink";

fn seal(
    key: &SivKey,
    generation: u32,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let gen_bytes = generation.to_be_bytes();
    let sealed = siv::seal(key, &[&nonce, &gen_bytes, context], plaintext);
    let mut out = Vec::with_capacity(BLOB_OVERHEAD + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(&gen_bytes);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Generation a blob was sealed under (rotation uses it to find what still needs resealing).
pub fn blob_generation(blob: &[u8]) -> Result<u32, CryptoError> {
    if blob.len() < BLOB_OVERHEAD || blob[0] != VERSION {
        return Err(CryptoError::Malformed("sealed value"));
    }
    Ok(u32::from_be_bytes(blob[1..5].try_into().expect("4 bytes")))
}

fn open<'k>(
    keyring: &'k Keyring,
    pick: impl Fn(&'k GenerationKeys) -> &'k SivKey,
    context: &[u8],
    blob: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let generation = blob_generation(blob)?;
    let key = pick(keyring.get(generation)?);
    siv::open(
        key,
        &[&blob[5..5 + NONCE_LEN], &blob[1..5], context],
        &blob[5 + NONCE_LEN..],
    )
}

/// Seals a symlink target into the backing symlink's target string.
pub fn seal_symlink(keys: &GenerationKeys, target: &[u8]) -> Result<String, CryptoError> {
    if target.is_empty() {
        return Err(CryptoError::Malformed("empty symlink target"));
    }
    if target.len() > SYMLINK_TARGET_MAX {
        return Err(CryptoError::TooLong);
    }
    Ok(BASE64URL_NOPAD.encode(&seal(
        &keys.symlink,
        keys.generation,
        SYMLINK_CONTEXT,
        target,
    )?))
}

pub fn open_symlink(keyring: &Keyring, backing_target: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let blob = BASE64URL_NOPAD
        .decode(backing_target)
        .map_err(|_| CryptoError::Malformed("symlink target is not base64url"))?;
    open(keyring, |g| &g.symlink, SYMLINK_CONTEXT, &blob)
}

/// Encrypts a plaintext xattr name (`user.*` only) to its backing name under `keys`.
pub fn encrypt_xattr_name(keys: &GenerationKeys, name: &[u8]) -> Result<String, CryptoError> {
    let suffix = name
        .strip_prefix(XATTR_USER_PREFIX.as_bytes())
        .ok_or(CryptoError::Malformed(
            "only user.* extended attributes are supported",
        ))?;
    if suffix.is_empty() {
        return Err(CryptoError::Malformed("empty extended attribute name"));
    }
    if suffix.len() > XATTR_NAME_MAX {
        return Err(CryptoError::TooLong);
    }
    let pad = NAME_PAD - suffix.len() % NAME_PAD;
    let mut padded = suffix.to_vec();
    padded.resize(suffix.len() + pad, pad as u8);
    let sealed = siv::seal(&keys.xattr_name, &[], &padded);
    Ok(format!(
        "{XATTR_USER_PREFIX}{}",
        BASE64URL_NOPAD.encode(&sealed)
    ))
}

/// Decrypts a backing xattr name; returns the plaintext name (with `user.`) and generation.
pub fn decrypt_xattr_name(
    keyring: &Keyring,
    backing: &[u8],
) -> Result<(Vec<u8>, u32), CryptoError> {
    let encoded = backing
        .strip_prefix(XATTR_USER_PREFIX.as_bytes())
        .ok_or(CryptoError::Malformed("not a user xattr"))?;
    let sealed = BASE64URL_NOPAD
        .decode(encoded)
        .map_err(|_| CryptoError::Malformed("xattr name"))?;
    for keys in keyring.live() {
        if let Ok(mut padded) = siv::open(&keys.xattr_name, &[], &sealed) {
            let pad = *padded.last().ok_or(CryptoError::Malformed("xattr name"))? as usize;
            if pad == 0 || pad > NAME_PAD || pad >= padded.len() {
                return Err(CryptoError::Malformed("xattr name padding"));
            }
            padded.truncate(padded.len() - pad);
            let mut name = XATTR_USER_PREFIX.as_bytes().to_vec();
            name.extend_from_slice(&padded);
            return Ok((name, keys.generation));
        }
    }
    Err(CryptoError::Authentication)
}

/// Seals an xattr value for the backing attribute named `backing_name`.
pub fn seal_xattr_value(
    keys: &GenerationKeys,
    backing_name: &str,
    value: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if value.len() > XATTR_VALUE_MAX {
        return Err(CryptoError::TooLong);
    }
    seal(
        &keys.xattr_value,
        keys.generation,
        backing_name.as_bytes(),
        value,
    )
}

pub fn open_xattr_value(
    keyring: &Keyring,
    backing_name: &str,
    blob: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    open(keyring, |g| &g.xattr_value, backing_name.as_bytes(), blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::{keyring_with, rotating_keyring};

    #[test]
    fn symlink_round_trip_caps_and_tamper() {
        let kr = keyring_with(1, 6);
        let t = seal_symlink(kr.active(), b"../some/where").unwrap();
        assert_eq!(open_symlink(&kr, t.as_bytes()).unwrap(), b"../some/where");
        assert_ne!(t, seal_symlink(kr.active(), b"../some/where").unwrap());
        let max = vec![b'a'; SYMLINK_TARGET_MAX];
        assert!(seal_symlink(kr.active(), &max).unwrap().len() <= BACKING_TARGET_MAX);
        assert_eq!(
            seal_symlink(kr.active(), &[b'a'; SYMLINK_TARGET_MAX + 1]),
            Err(CryptoError::TooLong)
        );
        let raw = BASE64URL_NOPAD.decode(t.as_bytes()).unwrap();
        for bit in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                open_symlink(&kr, BASE64URL_NOPAD.encode(&bad).as_bytes()).is_err(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn xattr_names_and_values() {
        let kr = rotating_keyring();
        let name = encrypt_xattr_name(kr.active(), b"user.comment").unwrap();
        assert!(name.len() <= BACKING_XATTR_NAME_MAX);
        assert_eq!(
            name,
            encrypt_xattr_name(kr.active(), b"user.comment").unwrap()
        );
        assert_eq!(
            decrypt_xattr_name(&kr, name.as_bytes()).unwrap(),
            (b"user.comment".to_vec(), 2)
        );
        let old = encrypt_xattr_name(kr.retiring().unwrap(), b"user.x").unwrap();
        assert_eq!(decrypt_xattr_name(&kr, old.as_bytes()).unwrap().1, 1);
        assert!(encrypt_xattr_name(kr.active(), b"security.selinux").is_err());
        let longest = [b"user.".as_slice(), &[b'n'; XATTR_NAME_MAX]].concat();
        assert!(encrypt_xattr_name(kr.active(), &longest).unwrap().len() <= BACKING_XATTR_NAME_MAX);
        let too_long = [b"user.".as_slice(), &[b'n'; XATTR_NAME_MAX + 1]].concat();
        assert_eq!(
            encrypt_xattr_name(kr.active(), &too_long),
            Err(CryptoError::TooLong)
        );

        let v = seal_xattr_value(kr.active(), &name, b"value").unwrap();
        assert_eq!(open_xattr_value(&kr, &name, &v).unwrap(), b"value");
        let other = encrypt_xattr_name(kr.active(), b"user.other").unwrap();
        assert!(open_xattr_value(&kr, &other, &v).is_err());
        let big = vec![0u8; XATTR_VALUE_MAX];
        assert_eq!(
            seal_xattr_value(kr.active(), &name, &big).unwrap().len(),
            BACKING_XATTR_VALUE_MAX
        );
        assert!(seal_xattr_value(kr.active(), &name, &[0u8; XATTR_VALUE_MAX + 1]).is_err());
        for bit in 0..v.len() * 8 {
            let mut bad = v.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open_xattr_value(&kr, &name, &bad).is_err(), "bit {bit}");
        }
    }
}
