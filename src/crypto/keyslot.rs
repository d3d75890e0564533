//! Keyslot secrets. Every slot holds, wrapped, the vault authentication key K_auth; a password
//! slot also holds its X25519 private key. The slot's public key is stored in clear; each
//! generation's master key is sealed to it (`seal`).
//!
//! - Password slot: KEK = scrypt(password, salt, logN, r, p) (64 bytes), blob =
//!   AES-256-SIV(KEK, AD = ["vaultfs v1 password slot", vault ID, slot ID (u32 BE), public key,
//!   logN (u8) || r (u32 BE) || p (u32 BE), salt], private key || K_auth): 80 bytes.
//! - Recovery slot: the private key derives from the 32-byte recovery seed that the user keeps
//!   (`recovery_key`); KEK = HKDF-SHA256(seed, salt = vault ID, "vaultfs v1 recovery-wrap"),
//!   blob = AES-256-SIV(KEK, AD = ["vaultfs v1 recovery slot", vault ID, slot ID, public key],
//!   K_auth): 48 bytes.

use zeroize::Zeroizing;

use super::keys::{Key256, SivKey};
use super::seal::{PUBLIC_KEY_LEN, keypair_from_seed};
use super::{CryptoError, VaultId, labels, siv};

pub const SALT_LEN: usize = 32;
pub const PASSWORD_BLOB_LEN: usize = 80;
pub const RECOVERY_BLOB_LEN: usize = 48;

/// scrypt parameters. Checked against the accepted ranges before any use, so a tampered
/// database cannot make unlocking take hours or exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KdfParams {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl KdfParams {
    pub const DEFAULT: KdfParams = KdfParams {
        log_n: 17,
        r: 8,
        p: 1,
    };
    pub const LOG_N_RANGE: std::ops::RangeInclusive<u8> = 10..=22;
    pub const R_RANGE: std::ops::RangeInclusive<u32> = 1..=32;
    pub const P_RANGE: std::ops::RangeInclusive<u32> = 1..=16;

    /// Most memory one scrypt run may take (128 * r * N bytes): 1 GiB.
    pub const MAX_MEMORY: u64 = 1 << 30;
    /// Most work one slot may cost, in units of N * r * p (the default is 2^20, about 0.3 s
    /// here): 16 times the default.
    pub const MAX_WORK: u64 = 1 << 24;
    /// Most work one unlock may cost over every slot it tries: 128 times the default (about
    /// 40 s here; a vault with that many default-cost members would wait as long anyway).
    pub const MAX_UNLOCK_WORK: u64 = 1 << 27;

    /// Bytes of memory scrypt allocates for these parameters (V, plus B and XY).
    pub fn memory(&self) -> u64 {
        128 * u64::from(self.r) * ((1u64 << self.log_n) + u64::from(self.p) + 2)
    }

    /// N * r * p: what scrypt's running time is proportional to.
    pub fn work(&self) -> u64 {
        (1u64 << self.log_n) * u64::from(self.r) * u64::from(self.p)
    }

    /// The ranges, then the memory and work caps: a tampered database can neither make an
    /// unlock abort on a failed allocation nor run for hours.
    pub fn validate(&self) -> Result<(), CryptoError> {
        if !(Self::LOG_N_RANGE.contains(&self.log_n)
            && Self::R_RANGE.contains(&self.r)
            && Self::P_RANGE.contains(&self.p))
        {
            return Err(CryptoError::Malformed(
                "scrypt parameters outside logN 10-22, r 1-32, p 1-16",
            ));
        }
        if self.memory() > Self::MAX_MEMORY + 128 * 32 * 18 {
            return Err(CryptoError::Malformed(
                "scrypt parameters need more than 1 GiB of memory (128 * r * 2^logN)",
            ));
        }
        if self.work() > Self::MAX_WORK {
            return Err(CryptoError::Malformed(
                "scrypt parameters cost more than 16 times the default (2^logN * r * p > 2^24)",
            ));
        }
        Ok(())
    }

    fn encode(&self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = self.log_n;
        b[1..5].copy_from_slice(&self.r.to_be_bytes());
        b[5..9].copy_from_slice(&self.p.to_be_bytes());
        b
    }
}

/// What a password slot unwraps to.
#[derive(Debug)]
pub struct SlotSecrets {
    pub private_key: Key256,
    pub k_auth: Key256,
}

/// The public fields a password slot's blob is bound to.
pub struct PasswordSlotBinding<'a> {
    pub vault_id: &'a VaultId,
    pub slot_id: u32,
    pub public_key: &'a [u8; PUBLIC_KEY_LEN],
    pub kdf: KdfParams,
    pub salt: &'a [u8; SALT_LEN],
}

impl PasswordSlotBinding<'_> {
    /// Calls `f` with the slot blob's associated data.
    fn with_ad<T>(&self, f: impl FnOnce(&[&[u8]]) -> T) -> T {
        let slot = self.slot_id.to_be_bytes();
        let kdf = self.kdf.encode();
        f(&[
            b"vaultfs v1 password slot",
            self.vault_id,
            &slot,
            self.public_key,
            &kdf,
            self.salt,
        ])
    }

    fn seal_with(&self, kek: &SivKey, plaintext: &[u8]) -> Vec<u8> {
        self.with_ad(|ad| siv::seal(kek, ad, plaintext))
    }

    fn open_with(&self, kek: &SivKey, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.with_ad(|ad| siv::open(kek, ad, blob).map(Zeroizing::new))
    }

    /// The expensive step: scrypt over the password.
    pub fn derive_kek(&self, password: &[u8]) -> Result<SivKey, CryptoError> {
        self.kdf.validate()?;
        let params = scrypt::Params::new(self.kdf.log_n, self.kdf.r, self.kdf.p)
            .map_err(|_| CryptoError::Malformed("scrypt parameters"))?;
        let mut out = Zeroizing::new([0u8; 64]);
        scrypt::scrypt(password, self.salt, &params, &mut out[..])
            .map_err(|_| CryptoError::InvalidLength)?;
        SivKey::from_slice(&mut out[..])
    }

    pub fn wrap(&self, kek: &SivKey, secrets: &SlotSecrets) -> Vec<u8> {
        let mut plain = Zeroizing::new([0u8; 64]);
        plain[..32].copy_from_slice(secrets.private_key.expose());
        plain[32..].copy_from_slice(secrets.k_auth.expose());
        self.seal_with(kek, &plain[..])
    }

    /// Fails with `Authentication` for a wrong password or any change to the slot.
    pub fn unwrap(&self, kek: &SivKey, blob: &[u8]) -> Result<SlotSecrets, CryptoError> {
        if blob.len() != PASSWORD_BLOB_LEN {
            return Err(CryptoError::Authentication);
        }
        let mut plain = self.open_with(kek, blob)?;
        let (sk, ka) = plain.split_at_mut(32);
        Ok(SlotSecrets {
            private_key: Key256::from_slice(sk)?,
            k_auth: Key256::from_slice(ka)?,
        })
    }
}

/// The public fields a recovery slot's blob is bound to.
pub struct RecoverySlotBinding<'a> {
    pub vault_id: &'a VaultId,
    pub slot_id: u32,
    pub public_key: &'a [u8; PUBLIC_KEY_LEN],
}

impl RecoverySlotBinding<'_> {
    fn kek(&self, seed: &Key256) -> SivKey {
        seed.derive(self.vault_id, labels::RECOVERY_WRAP)
    }

    pub fn wrap(&self, seed: &Key256, k_auth: &Key256) -> Vec<u8> {
        let slot = self.slot_id.to_be_bytes();
        let ad: [&[u8]; 4] = [
            b"vaultfs v1 recovery slot",
            self.vault_id,
            &slot,
            self.public_key,
        ];
        siv::seal(&self.kek(seed), &ad, k_auth.expose())
    }

    /// Unwraps K_auth and re-derives the private key; the seed must match the public key.
    pub fn unwrap(&self, seed: &Key256, blob: &[u8]) -> Result<SlotSecrets, CryptoError> {
        let (private_key, public) = keypair_from_seed(seed);
        if &public != self.public_key {
            return Err(CryptoError::Authentication);
        }
        let slot = self.slot_id.to_be_bytes();
        let ad: [&[u8]; 4] = [
            b"vaultfs v1 recovery slot",
            self.vault_id,
            &slot,
            self.public_key,
        ];
        let mut plain = Zeroizing::new(siv::open(&self.kek(seed), &ad, blob)?);
        Ok(SlotSecrets {
            private_key,
            k_auth: Key256::from_slice(&mut plain[..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        log_n: 10,
        r: 8,
        p: 1,
    };

    #[test]
    fn kdf_ranges() {
        assert!(KdfParams::DEFAULT.validate().is_ok());
        assert!(FAST.validate().is_ok());
        // The largest accepted: exactly 1 GiB of V, and 16x the default's work.
        for ok in [
            KdfParams {
                log_n: 20,
                r: 8,
                p: 2,
            },
            KdfParams {
                log_n: 22,
                r: 2,
                p: 2,
            },
            KdfParams {
                log_n: 17,
                r: 32,
                p: 4,
            },
        ] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
        for bad in [
            KdfParams { log_n: 9, ..FAST },
            KdfParams { log_n: 23, ..FAST },
            KdfParams { r: 0, ..FAST },
            KdfParams { r: 33, ..FAST },
            KdfParams { p: 17, ..FAST },
            // Inside the ranges but over the caps: 4 GiB, 16 GiB, 64x the default work.
            KdfParams {
                log_n: 22,
                r: 8,
                p: 1,
            },
            KdfParams {
                log_n: 22,
                r: 32,
                p: 16,
            },
            KdfParams {
                log_n: 18,
                r: 8,
                p: 16,
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_slot_round_trip_wrong_password_and_bit_flips() {
        let (sk, pk) = keypair_from_seed(&Key256::random().unwrap());
        let secrets = SlotSecrets {
            private_key: sk,
            k_auth: Key256::random().unwrap(),
        };
        let salt = [3u8; SALT_LEN];
        let b = PasswordSlotBinding {
            vault_id: &[1; 16],
            slot_id: 1,
            public_key: &pk,
            kdf: FAST,
            salt: &salt,
        };
        let kek = b.derive_kek(b"correct horse").unwrap();
        let blob = b.wrap(&kek, &secrets);
        assert_eq!(blob.len(), PASSWORD_BLOB_LEN);
        let back = b.unwrap(&kek, &blob).unwrap();
        assert_eq!(back.private_key.expose(), secrets.private_key.expose());
        assert_eq!(back.k_auth.expose(), secrets.k_auth.expose());

        let wrong = b.derive_kek(b"battery staple").unwrap();
        assert!(matches!(
            b.unwrap(&wrong, &blob),
            Err(CryptoError::Authentication)
        ));
        for bit in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(b.unwrap(&kek, &bad).is_err(), "bit {bit}");
        }
        // Every bound field matters: slot ID, public key, KDF parameters, vault ID.
        let moved = PasswordSlotBinding { slot_id: 2, ..b };
        assert!(moved.unwrap(&kek, &blob).is_err());
        let other_pk = [9u8; 32];
        let b2 = PasswordSlotBinding {
            vault_id: &[1; 16],
            slot_id: 1,
            public_key: &other_pk,
            kdf: FAST,
            salt: &salt,
        };
        assert!(b2.unwrap(&kek, &blob).is_err());
        let b3 = PasswordSlotBinding {
            vault_id: &[2; 16],
            slot_id: 1,
            public_key: &pk,
            kdf: FAST,
            salt: &salt,
        };
        assert!(b3.unwrap(&kek, &blob).is_err());
        let b4 = PasswordSlotBinding {
            vault_id: &[1; 16],
            slot_id: 1,
            public_key: &pk,
            kdf: KdfParams { r: 7, ..FAST },
            salt: &salt,
        };
        assert!(b4.unwrap(&kek, &blob).is_err());
        let b5 = PasswordSlotBinding {
            kdf: KdfParams { log_n: 30, ..FAST },
            ..b4
        };
        assert!(b5.derive_kek(b"x").is_err());
    }

    #[test]
    fn recovery_slot_round_trip() {
        let seed = Key256::random().unwrap();
        let (_, pk) = keypair_from_seed(&seed);
        let k_auth = Key256::random().unwrap();
        let b = RecoverySlotBinding {
            vault_id: &[1; 16],
            slot_id: 2,
            public_key: &pk,
        };
        let blob = b.wrap(&seed, &k_auth);
        assert_eq!(blob.len(), RECOVERY_BLOB_LEN);
        assert_eq!(
            b.unwrap(&seed, &blob).unwrap().k_auth.expose(),
            k_auth.expose()
        );
        assert!(b.unwrap(&Key256::random().unwrap(), &blob).is_err());
        for bit in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(b.unwrap(&seed, &bad).is_err(), "bit {bit}");
        }
    }
}
