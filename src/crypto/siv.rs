//! AES-256-SIV (RFC 5297) as vaultfs uses it: deterministic authenticated encryption for key
//! wrapping and names, and a nonce-carrying form for values that repeat (symlinks, xattrs).

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;

use super::CryptoError;
use super::keys::SivKey;

/// Length of the synthetic IV (the authentication tag) that prefixes every SIV ciphertext.
pub const SIV_TAG_LEN: usize = 16;

fn cipher(key: &SivKey) -> Aes256Siv {
    Aes256Siv::new(key.expose().into())
}

/// SIV(key, ad, plaintext) = tag(16) || ciphertext. Each element of `ad` is a separate
/// associated-data component, so no encoding of them can collide.
pub fn seal(key: &SivKey, ad: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    cipher(key)
        .encrypt(ad, plaintext)
        .expect("AES-SIV encryption cannot fail for fewer than 126 AD components")
}

/// Inverse of [`seal`]; any change to key, AD, tag or ciphertext fails.
pub fn open(key: &SivKey, ad: &[&[u8]], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SIV_TAG_LEN {
        return Err(CryptoError::Authentication);
    }
    cipher(key)
        .decrypt(ad, sealed)
        .map_err(|_| CryptoError::Authentication)
}
