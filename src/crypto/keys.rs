//! Secret key material: fixed-size keys that zeroize on drop, the OS random source, and HKDF
//! subkey derivation. Every key in vaultfs is one of these types.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::CryptoError;

/// A secret of `N` bytes. Never printed, zeroized when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey<const N: usize>(Box<[u8; N]>);

impl<const N: usize> SecretKey<N> {
    /// Fresh key material from the operating system's CSPRNG.
    pub fn random() -> Result<Self, CryptoError> {
        let mut key = Self::zeroed();
        fill_random(&mut key.0[..])?;
        Ok(key)
    }

    /// Takes ownership of `bytes` and wipes the caller's copy.
    pub fn from_slice(bytes: &mut [u8]) -> Result<Self, CryptoError> {
        if bytes.len() != N {
            bytes.zeroize();
            return Err(CryptoError::InvalidLength);
        }
        let mut key = Self::zeroed();
        key.0.copy_from_slice(bytes);
        bytes.zeroize();
        Ok(key)
    }

    fn zeroed() -> Self {
        SecretKey(Box::new([0u8; N]))
    }

    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    /// HKDF-SHA256 with this key as input keying material, `salt` and a distinct `label`.
    pub fn derive<const M: usize>(&self, salt: &[u8], label: &str) -> SecretKey<M> {
        derive_subkey(&self.0[..], salt, label)
    }
}

impl<const N: usize> fmt::Debug for SecretKey<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey<{N}>(redacted)")
    }
}

/// A 256-bit key: master keys, file content keys, K_auth, MAC keys.
pub type Key256 = SecretKey<32>;
/// A 512-bit key: AES-256-SIV takes two AES-256 keys.
pub type SivKey = SecretKey<64>;

/// HKDF-SHA256(ikm, salt, info = label) of `M` bytes.
pub fn derive_subkey<const M: usize>(ikm: &[u8], salt: &[u8], label: &str) -> SecretKey<M> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = SecretKey::<M>::zeroed();
    // M is at most 64 in vaultfs, far below HKDF-SHA256's limit of 255 * 32 bytes.
    hk.expand(label.as_bytes(), &mut out.0[..])
        .expect("HKDF output length is within limits");
    out
}

/// Fills `buf` from the OS CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// A random array of `N` bytes (IDs, salts, nonces).
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_debug_redacts() {
        let a = Key256::random().unwrap();
        let b = Key256::random().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "SecretKey<32>(redacted)");
    }

    #[test]
    fn derivation_is_label_separated_and_deterministic() {
        let k = Key256::from_slice(&mut [7u8; 32]).unwrap();
        let a: SivKey = k.derive(b"salt", "one");
        let b: SivKey = k.derive(b"salt", "two");
        let c: SivKey = k.derive(b"salt", "one");
        let d: SivKey = k.derive(b"other", "one");
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose(), c.expose());
        assert_ne!(a.expose(), d.expose());
    }

    #[test]
    fn from_slice_wipes_source() {
        let mut src = [9u8; 32];
        let k = Key256::from_slice(&mut src).unwrap();
        assert_eq!(src, [0u8; 32]);
        assert_eq!(k.expose(), &[9u8; 32]);
        assert!(Key256::from_slice(&mut [1u8; 31]).is_err());
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
