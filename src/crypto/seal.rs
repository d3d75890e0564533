//! Sealing master-key generations to keyslots: HPKE (RFC 9180) in mode_psk with the suite
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM (0x0020, 0x0001, 0x0001): the suite
//! of RFC 9180 Appendix A.1, whose mode_psk vectors run in this module's tests. AES-128 matches
//! X25519's ~128-bit security level; the sealed payload is a 256-bit master key.
//!
//! - info   = "vaultfs v1 generation" || vault ID || generation (u32 BE)
//! - psk    = HKDF-SHA256(K_auth, salt = vault ID, "vaultfs v1 hpke-psk"), psk_id = "vaultfs v1
//!   psk" || vault ID. Only a holder of K_auth (someone who unlocked a slot) can seal a
//!   generation that slots will accept, so a writer of the key database cannot plant one.
//! - aad    = caller's binding (the slot ID for database seals; the recovery file's header for
//!   recovery seals).

use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, PskBundle, Serializable};
use zeroize::Zeroizing;

use super::keys::Key256;
use super::{CryptoError, VaultId, labels};

pub type Kem = X25519HkdfSha256;
pub const ENC_LEN: usize = 32;
pub const PUBLIC_KEY_LEN: usize = 32;
/// Sealed master key: 32 bytes of ciphertext and a 16-byte tag.
pub const SEALED_LEN: usize = 48;

/// An X25519 key pair derived (RFC 9180 DeriveKeyPair) from a 32-byte seed.
pub fn keypair_from_seed(seed: &Key256) -> (Key256, [u8; PUBLIC_KEY_LEN]) {
    let (sk, pk) = Kem::derive_keypair(seed.expose());
    let mut sk_bytes = sk.to_bytes();
    // from_slice wipes sk_bytes.
    let private =
        Key256::from_slice(sk_bytes.as_mut_slice()).expect("X25519 private key is 32 bytes");
    let mut public = [0u8; PUBLIC_KEY_LEN];
    public.copy_from_slice(&pk.to_bytes());
    (private, public)
}

pub fn public_key_of(private: &Key256) -> Result<[u8; PUBLIC_KEY_LEN], CryptoError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(private.expose())
        .map_err(|_| CryptoError::Malformed("X25519 private key"))?;
    let mut public = [0u8; PUBLIC_KEY_LEN];
    public.copy_from_slice(&Kem::sk_to_pk(&sk).to_bytes());
    Ok(public)
}

pub fn psk_from_k_auth(k_auth: &Key256, vault_id: &VaultId) -> Key256 {
    k_auth.derive(vault_id, labels::HPKE_PSK)
}

fn info(vault_id: &VaultId, generation: u32) -> Vec<u8> {
    [
        b"vaultfs v1 generation".as_slice(),
        vault_id,
        &generation.to_be_bytes(),
    ]
    .concat()
}

fn psk_id(vault_id: &VaultId) -> Vec<u8> {
    [b"vaultfs v1 psk".as_slice(), vault_id].concat()
}

/// Seals `master_key` of `generation` to `public_key`. Returns (enc, sealed).
pub fn seal_master_key(
    public_key: &[u8; PUBLIC_KEY_LEN],
    psk: &Key256,
    vault_id: &VaultId,
    generation: u32,
    aad: &[u8],
    master_key: &Key256,
) -> Result<([u8; ENC_LEN], [u8; SEALED_LEN]), CryptoError> {
    seal_key(
        public_key,
        psk,
        vault_id,
        &info(vault_id, generation),
        aad,
        master_key,
    )
}

/// HPKE mode_psk single-shot seal of a 32-byte key to `public_key` with `info` and `aad`.
pub(crate) fn seal_key(
    public_key: &[u8; PUBLIC_KEY_LEN],
    psk: &Key256,
    vault_id: &VaultId,
    info: &[u8],
    aad: &[u8],
    key: &Key256,
) -> Result<([u8; ENC_LEN], [u8; SEALED_LEN]), CryptoError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key)
        .map_err(|_| CryptoError::Malformed("X25519 public key"))?;
    let id = psk_id(vault_id);
    let bundle = PskBundle::new(psk.expose(), &id).map_err(|_| CryptoError::InvalidLength)?;
    let (enc, sealed) = hpke::single_shot_seal::<AesGcm128, HkdfSha256, Kem>(
        &OpModeS::Psk(bundle),
        &pk,
        info,
        key.expose(),
        aad,
    )
    .map_err(|_| CryptoError::Random)?;
    let mut enc_out = [0u8; ENC_LEN];
    enc_out.copy_from_slice(&enc.to_bytes());
    let sealed_out: [u8; SEALED_LEN] = sealed.try_into().map_err(|_| CryptoError::InvalidLength)?;
    Ok((enc_out, sealed_out))
}

/// Opens a sealed master key with a slot's private key.
pub fn open_master_key(
    private_key: &Key256,
    psk: &Key256,
    vault_id: &VaultId,
    generation: u32,
    aad: &[u8],
    enc: &[u8],
    sealed: &[u8],
) -> Result<Key256, CryptoError> {
    open_key(
        private_key,
        psk,
        vault_id,
        &info(vault_id, generation),
        aad,
        enc,
        sealed,
    )
}

/// Opens what `seal_key` sealed.
pub(crate) fn open_key(
    private_key: &Key256,
    psk: &Key256,
    vault_id: &VaultId,
    info: &[u8],
    aad: &[u8],
    enc: &[u8],
    sealed: &[u8],
) -> Result<Key256, CryptoError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(private_key.expose())
        .map_err(|_| CryptoError::Malformed("X25519 private key"))?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| CryptoError::Authentication)?;
    let id = psk_id(vault_id);
    let bundle = PskBundle::new(psk.expose(), &id).map_err(|_| CryptoError::InvalidLength)?;
    let plain = hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
        &OpModeR::Psk(bundle),
        &sk,
        &enc,
        info,
        sealed,
        aad,
    )
    .map_err(|_| CryptoError::Authentication)?;
    Key256::from_slice(&mut Zeroizing::new(plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::HEXLOWER;
    use hpke::rand_core::{TryCryptoRng, TryRng};
    use std::convert::Infallible;

    fn hex(s: &str) -> Vec<u8> {
        HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    /// Hands out fixed bytes: lets the sender derive the RFC's ephemeral key from ikmE.
    struct FixedRng(Vec<u8>);
    impl TryRng for FixedRng {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            unreachable!("HPKE only asks for bytes")
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            unreachable!("HPKE only asks for bytes")
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            let n = dst.len();
            dst.copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(())
        }
    }
    impl TryCryptoRng for FixedRng {}

    /// RFC 9180 Appendix A.1.2: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM,
    /// mode_psk. Checks key derivation, encapsulation, every listed encryption (sequence
    /// numbers 0, 1, 2, 4, 255, 256) on both the sender and the receiver, and the exports.
    #[test]
    fn rfc9180_a_1_2_psk_vectors() {
        let ikm_e = hex("78628c354e46f3e169bd231be7b2ff1c77aa302460a26dbfa15515684c00130b");
        let ikm_r = hex("d4a09d09f575fef425905d2ab396c1449141463f698f8efdb7accfaff8995098");
        let pk_em = hex("0ad0950d9fb9588e59690b74f1237ecdf1d775cd60be2eca57af5a4b0471c91b");
        let sk_em = hex("463426a9ffb42bb17dbe6044b9abd1d4e4d95f9041cef0e99d7824eef2b6f588");
        let pk_rm = hex("9fed7e8c17387560e92cc6462a68049657246a09bfa8ade7aefe589672016366");
        let sk_rm = hex("c5eb01eb457fe6c6f57577c5413b931550a162c71a03ac8d196babbd4e5ce0fd");
        let psk = hex("0247fd33b913760fa1fa51e1892d9f307fbe65eb171e8132c2af18555a738b82");
        let psk_id = hex("456e6e796e20447572696e206172616e204d6f726961");
        let info = hex("4f6465206f6e2061204772656369616e2055726e");
        let pt = hex("4265617574792069732074727574682c20747275746820626561757479");
        let cts: [(u32, &str); 6] = [
            (
                0,
                "e52c6fed7f758d0cf7145689f21bc1be6ec9ea097fef4e959440012f4feb73fb611b946199e681f4cfc34db8ea",
            ),
            (
                1,
                "49f3b19b28a9ea9f43e8c71204c00d4a490ee7f61387b6719db765e948123b45b61633ef059ba22cd62437c8ba",
            ),
            (
                2,
                "257ca6a08473dc851fde45afd598cc83e326ddd0abe1ef23baa3baa4dd8cde99fce2c1e8ce687b0b47ead1adc9",
            ),
            (
                4,
                "a71d73a2cd8128fcccbd328b9684d70096e073b59b40b55e6419c9c68ae21069c847e2a70f5d8fb821ce3dfb1c",
            ),
            (
                255,
                "55f84b030b7f7197f7d7d552365b6b932df5ec1abacd30241cb4bc4ccea27bd2b518766adfa0fb1b71170e9392",
            ),
            (
                256,
                "c5bf246d4a790a12dcc9eed5eae525081e6fb541d5849e9ce8abd92a3bc1551776bea16b4a518f23e237c14b59",
            ),
        ];
        let exports: [(&[u8], &str); 3] = [
            (
                b"",
                "dff17af354c8b41673567db6259fd6029967b4e1aad13023c2ae5df8f4f43bf6",
            ),
            (
                &[0x00],
                "6a847261d8207fe596befb52928463881ab493da345b10e1dcc645e3b94e2d95",
            ),
            (
                b"TestContext",
                "8aff52b45a1be3a734bc7a41e20b4e055ad4c4d22104b0c20285a7c4302401cd",
            ),
        ];

        // The crate stores X25519 scalars clamped (RFC 7748); the RFC lists them unclamped.
        let clamp = |mut k: Vec<u8>| {
            k[0] &= 248;
            k[31] &= 127;
            k[31] |= 64;
            k
        };
        let (sk_e, pk_e) = Kem::derive_keypair(&ikm_e);
        assert_eq!(sk_e.to_bytes().as_slice(), &clamp(sk_em.clone())[..]);
        assert_eq!(pk_e.to_bytes().as_slice(), &pk_em[..]);
        let (sk_r, pk_r) = Kem::derive_keypair(&ikm_r);
        assert_eq!(sk_r.to_bytes().as_slice(), &clamp(sk_rm.clone())[..]);
        assert_eq!(pk_r.to_bytes().as_slice(), &pk_rm[..]);
        let sk_r_rfc = <Kem as hpke::Kem>::PrivateKey::from_bytes(&sk_rm).unwrap();
        assert_eq!(Kem::sk_to_pk(&sk_r_rfc).to_bytes().as_slice(), &pk_rm[..]);

        let bundle = PskBundle::new(&psk, &psk_id).unwrap();
        let (enc, mut sender) = hpke::setup_sender_with_rng::<AesGcm128, HkdfSha256, Kem>(
            &OpModeS::Psk(bundle),
            &pk_r,
            &info,
            &mut FixedRng(ikm_e.clone()),
        )
        .unwrap();
        assert_eq!(enc.to_bytes().as_slice(), &pk_em[..]);
        let mut receiver = hpke::setup_receiver::<AesGcm128, HkdfSha256, Kem>(
            &OpModeR::Psk(PskBundle::new(&psk, &psk_id).unwrap()),
            &sk_r,
            &enc,
            &info,
        )
        .unwrap();

        let mut seq = 0u32;
        for (want_seq, want_ct) in cts {
            while seq < want_seq {
                // Advance both contexts through the sequence numbers the RFC skips.
                let filler = sender.seal(b"filler", b"").unwrap();
                receiver.open(&filler, b"").unwrap();
                seq += 1;
            }
            let aad = format!("Count-{seq}");
            let ct = sender.seal(&pt, aad.as_bytes()).unwrap();
            assert_eq!(HEXLOWER.encode(&ct), want_ct, "sequence {seq}");
            assert_eq!(
                receiver.open(&ct, aad.as_bytes()).unwrap(),
                pt,
                "sequence {seq}"
            );
            seq += 1;
        }
        for (ctx, want) in exports {
            let mut out = [0u8; 32];
            sender.export(ctx, &mut out).unwrap();
            assert_eq!(HEXLOWER.encode(&out), want);
            receiver.export(ctx, &mut out).unwrap();
            assert_eq!(HEXLOWER.encode(&out), want);
        }
    }

    #[test]
    fn master_key_seal_round_trip_and_bindings() {
        let vault = [1u8; 16];
        let (sk, pk) = keypair_from_seed(&Key256::random().unwrap());
        assert_eq!(public_key_of(&sk).unwrap(), pk);
        let psk = psk_from_k_auth(&Key256::random().unwrap(), &vault);
        let mk = Key256::random().unwrap();
        let (enc, sealed) = seal_master_key(&pk, &psk, &vault, 3, b"slot 1", &mk).unwrap();
        let back = open_master_key(&sk, &psk, &vault, 3, b"slot 1", &enc, &sealed).unwrap();
        assert_eq!(back.expose(), mk.expose());
        // Wrong generation, vault, aad, PSK (no K_auth) or private key: refused.
        assert!(open_master_key(&sk, &psk, &vault, 4, b"slot 1", &enc, &sealed).is_err());
        assert!(open_master_key(&sk, &psk, &[2; 16], 3, b"slot 1", &enc, &sealed).is_err());
        assert!(open_master_key(&sk, &psk, &vault, 3, b"slot 2", &enc, &sealed).is_err());
        let other_psk = psk_from_k_auth(&Key256::random().unwrap(), &vault);
        assert!(open_master_key(&sk, &other_psk, &vault, 3, b"slot 1", &enc, &sealed).is_err());
        let (sk2, _) = keypair_from_seed(&Key256::random().unwrap());
        assert!(open_master_key(&sk2, &psk, &vault, 3, b"slot 1", &enc, &sealed).is_err());
        for bit in 0..(ENC_LEN + SEALED_LEN) * 8 {
            let (mut e, mut s) = (enc, sealed);
            if bit < ENC_LEN * 8 {
                e[bit / 8] ^= 1 << (bit % 8);
            } else {
                let b = bit - ENC_LEN * 8;
                s[b / 8] ^= 1 << (b % 8);
            }
            assert!(
                open_master_key(&sk, &psk, &vault, 3, b"slot 1", &e, &s).is_err(),
                "bit {bit}"
            );
        }
    }
}
