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

/// The namespaces besides `user.` whose xattrs a vault stores, by their whole name (format
/// 3): trusted (overlayfs's `trusted.overlay.*`, root only), security (SELinux labels), and
/// the two POSIX ACL names.
pub const FULL_NAME_NAMESPACES: [&str; 4] = [
    "trusted.",
    "security.",
    "system.posix_acl_access",
    "system.posix_acl_default",
];

/// The SIV associated data of a whole-name xattr name. A `user.*` name is sealed without
/// any, so the two kinds never decrypt as each other, and a format-2 reader, which knows
/// only the first, skips the second.
const FULL_NAME_AD: &[u8] = b"vaultfs v1 xattr full name";

/// Whether `name` is a plaintext xattr name a vault stores: a non-empty name in `user.`,
/// `trusted.` or `security.`, or one of the two ACL names.
pub fn is_stored_xattr(name: &[u8]) -> bool {
    FULL_NAME_NAMESPACES
        .iter()
        .chain(&[XATTR_USER_PREFIX])
        .any(|ns| match name.strip_prefix(ns.as_bytes()) {
            Some(rest) => rest.is_empty() != ns.ends_with('.'),
            None => false,
        })
}

/// Encrypts a plaintext xattr name to its backing name under `keys` (a `user.*` backing
/// name whatever the namespace, so any backing filesystem and any daemon can hold it):
/// a `user.*` name by what follows `user.`, any other stored one by its whole name.
pub fn encrypt_xattr_name(keys: &GenerationKeys, name: &[u8]) -> Result<String, CryptoError> {
    let (plain, ad): (&[u8], &[&[u8]]) =
        if let Some(suffix) = name.strip_prefix(XATTR_USER_PREFIX.as_bytes()) {
            (suffix, &[])
        } else if is_stored_xattr(name) {
            (name, &[FULL_NAME_AD])
        } else {
            return Err(CryptoError::Malformed(
                "extended attributes of this namespace are not stored",
            ));
        };
    if plain.is_empty() {
        return Err(CryptoError::Malformed("empty extended attribute name"));
    }
    if plain.len() > XATTR_NAME_MAX {
        return Err(CryptoError::TooLong);
    }
    let pad = NAME_PAD - plain.len() % NAME_PAD;
    let mut padded = plain.to_vec();
    padded.resize(plain.len() + pad, pad as u8);
    let sealed = siv::seal(&keys.xattr_name, ad, &padded);
    Ok(format!(
        "{XATTR_USER_PREFIX}{}",
        BASE64URL_NOPAD.encode(&sealed)
    ))
}

/// Prefix of a backing xattr name on a backing inode that takes no `user.*` attributes (a
/// symlink, a whiteout): format 3 puts a whole-name attribute there under `trusted.`.
pub const BACKING_TRUSTED_PREFIX: &str = "trusted.";

/// The backing name `user_form` (from `encrypt_xattr_name`) has on a backing symlink or
/// whiteout: the same encoding under `trusted.`.
pub fn on_trusted_backing(user_form: &str) -> String {
    let encoded = user_form
        .strip_prefix(XATTR_USER_PREFIX)
        .expect("encrypt_xattr_name gives user. names");
    format!("{BACKING_TRUSTED_PREFIX}{encoded}")
}

/// Decrypts a backing xattr name (`user.` or `trusted.` and the encoding); returns the
/// plaintext name (with its namespace) and the generation. A `user.*` plaintext name is
/// never found under `trusted.`.
pub fn decrypt_xattr_name(
    keyring: &Keyring,
    backing: &[u8],
) -> Result<(Vec<u8>, u32), CryptoError> {
    let (encoded, on_trusted) = match backing.strip_prefix(XATTR_USER_PREFIX.as_bytes()) {
        Some(e) => (e, false),
        None => (
            backing
                .strip_prefix(BACKING_TRUSTED_PREFIX.as_bytes())
                .ok_or(CryptoError::Malformed("not a vaultfs xattr"))?,
            true,
        ),
    };
    let sealed = BASE64URL_NOPAD
        .decode(encoded)
        .map_err(|_| CryptoError::Malformed("xattr name"))?;
    for keys in keyring.live() {
        for full in [false, true] {
            if on_trusted && !full {
                continue;
            }
            let ad: &[&[u8]] = if full { &[FULL_NAME_AD] } else { &[] };
            let Ok(mut padded) = siv::open(&keys.xattr_name, ad, &sealed) else {
                continue;
            };
            let pad = *padded.last().ok_or(CryptoError::Malformed("xattr name"))? as usize;
            if pad == 0 || pad > NAME_PAD || pad >= padded.len() {
                return Err(CryptoError::Malformed("xattr name padding"));
            }
            padded.truncate(padded.len() - pad);
            let name = if full {
                if !is_stored_xattr(&padded) || padded.starts_with(XATTR_USER_PREFIX.as_bytes()) {
                    return Err(CryptoError::Malformed("xattr name namespace"));
                }
                padded
            } else {
                [XATTR_USER_PREFIX.as_bytes(), &padded].concat()
            };
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

    /// Known answers: the two name encodings are on-disk format (FORMAT.md section 7).
    #[test]
    fn xattr_name_encodings_are_fixed() {
        let kr = keyring_with(1, 6);
        assert_eq!(
            encrypt_xattr_name(kr.active(), b"user.comment").unwrap(),
            "user.Z7Rq-2g614hQfwLGmDYYt2OZSZ_rrfKFIPheZ44ScxE"
        );
        assert_eq!(
            encrypt_xattr_name(kr.active(), b"trusted.overlay.opaque").unwrap(),
            "user.70Xrg7btlPc5J2JcBCv5S1EK24lf3mE4Typwys64uPMQS6zn7NMEX4gtr1_u0VG3"
        );
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
        // Other namespaces: by their whole name, never confused with a user name.
        for full in [
            b"trusted.overlay.opaque".as_slice(),
            b"security.selinux",
            b"system.posix_acl_access",
            b"system.posix_acl_default",
        ] {
            let n = encrypt_xattr_name(kr.active(), full).unwrap();
            assert!(n.starts_with("user."));
            assert_eq!(
                decrypt_xattr_name(&kr, n.as_bytes()).unwrap(),
                (full.to_vec(), 2)
            );
        }
        assert_ne!(
            encrypt_xattr_name(kr.active(), b"user.trusted.x").unwrap(),
            encrypt_xattr_name(kr.active(), b"trusted.x").unwrap()
        );
        // On a symlink: the same encoding under trusted.; a user name is never there.
        let t = on_trusted_backing(&encrypt_xattr_name(kr.active(), b"security.x").unwrap());
        assert!(t.starts_with("trusted."));
        assert_eq!(
            decrypt_xattr_name(&kr, t.as_bytes()).unwrap().0,
            b"security.x"
        );
        let u = on_trusted_backing(&encrypt_xattr_name(kr.active(), b"user.x").unwrap());
        assert!(decrypt_xattr_name(&kr, u.as_bytes()).is_err());
        for refused in [
            b"system.nfs4_acl".as_slice(),
            b"other.x",
            b"user.",
            b"trusted",
            b"trusted.",
            b"system.posix_acl_access2",
        ] {
            assert!(
                encrypt_xattr_name(kr.active(), refused).is_err(),
                "{refused:?}"
            );
        }
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
