//! Renewable K_auth (format 2, docs/FORMAT.md section 9): the key that authenticates the key
//! database has epochs. Each keyslot's blob holds the K_auth of the epoch it was written in
//! (its anchor); a slot anchored below the current epoch reaches the current K_auth through
//! its *link*, the current K_auth HPKE-sealed to the slot's public key with a PSK from the
//! anchor K_auth, so opening it needs both the slot's private key and its anchor key. Older
//! K_auths are kept wrapped under the current one (the *history*). A machine remembers a
//! fingerprint of the newest K_auth it saw, so a database whose history disagrees is forged.

use super::keys::{Key256, SivKey};
use super::seal::{self, ENC_LEN, PUBLIC_KEY_LEN, SEALED_LEN};
use super::{CryptoError, VaultId, siv};

fn link_psk(anchor_key: &Key256, vault_id: &VaultId) -> Key256 {
    anchor_key.derive(vault_id, "vaultfs v2 auth-link psk")
}

fn link_info(vault_id: &VaultId, epoch: u32, anchor: u32) -> Vec<u8> {
    [
        b"vaultfs v2 auth link".as_slice(),
        vault_id,
        &epoch.to_be_bytes(),
        &anchor.to_be_bytes(),
    ]
    .concat()
}

/// The link that takes a slot anchored at `anchor` (whose blob holds `anchor_key`) to
/// `current`, the K_auth of `epoch`. Returns (enc, sealed).
pub fn seal_link(
    public_key: &[u8; PUBLIC_KEY_LEN],
    anchor_key: &Key256,
    vault_id: &VaultId,
    epoch: u32,
    anchor: u32,
    slot_id: u32,
    current: &Key256,
) -> Result<([u8; ENC_LEN], [u8; SEALED_LEN]), CryptoError> {
    seal::seal_key(
        public_key,
        &link_psk(anchor_key, vault_id),
        vault_id,
        &link_info(vault_id, epoch, anchor),
        &slot_id.to_be_bytes(),
        current,
    )
}

/// Opens a slot's link: the K_auth of `epoch`.
#[allow(clippy::too_many_arguments)] // every input is bound in
pub fn open_link(
    private_key: &Key256,
    anchor_key: &Key256,
    vault_id: &VaultId,
    epoch: u32,
    anchor: u32,
    slot_id: u32,
    enc: &[u8],
    sealed: &[u8],
) -> Result<Key256, CryptoError> {
    seal::open_key(
        private_key,
        &link_psk(anchor_key, vault_id),
        vault_id,
        &link_info(vault_id, epoch, anchor),
        &slot_id.to_be_bytes(),
        enc,
        sealed,
    )
}

fn history_key(current: &Key256, vault_id: &VaultId) -> SivKey {
    current.derive(vault_id, "vaultfs v2 auth-history")
}

/// K_auth of `older` wrapped under the K_auth of `epoch`.
pub fn wrap_history(
    current: &Key256,
    vault_id: &VaultId,
    epoch: u32,
    older: u32,
    key: &Key256,
) -> Vec<u8> {
    siv::seal(
        &history_key(current, vault_id),
        &[vault_id, &older.to_be_bytes(), &epoch.to_be_bytes()],
        key.expose(),
    )
}

pub fn unwrap_history(
    current: &Key256,
    vault_id: &VaultId,
    epoch: u32,
    older: u32,
    wrapped: &[u8],
) -> Result<Key256, CryptoError> {
    let mut plain = zeroize::Zeroizing::new(siv::open(
        &history_key(current, vault_id),
        &[vault_id, &older.to_be_bytes(), &epoch.to_be_bytes()],
        wrapped,
    )?);
    Key256::from_slice(&mut plain[..])
}

/// What a machine records of a K_auth it saw: a one-way fingerprint, never the key.
pub fn fingerprint(key: &Key256, vault_id: &VaultId) -> [u8; 32] {
    *key.derive::<32>(vault_id, "vaultfs v2 auth fingerprint")
        .expose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_needs_the_private_key_and_the_anchor_key_and_binds_every_input() {
        let (sk, pk) = seal::keypair_from_seed(&Key256::random().unwrap());
        let (anchor, current) = (Key256::random().unwrap(), Key256::random().unwrap());
        let id = [7u8; 16];
        let (enc, sealed) = seal_link(&pk, &anchor, &id, 3, 1, 5, &current).unwrap();
        let got = open_link(&sk, &anchor, &id, 3, 1, 5, &enc, &sealed).unwrap();
        assert_eq!(got.expose(), current.expose());
        let other = Key256::random().unwrap();
        assert!(open_link(&sk, &other, &id, 3, 1, 5, &enc, &sealed).is_err());
        let (sk2, _) = seal::keypair_from_seed(&Key256::random().unwrap());
        assert!(open_link(&sk2, &anchor, &id, 3, 1, 5, &enc, &sealed).is_err());
        assert!(open_link(&sk, &anchor, &id, 4, 1, 5, &enc, &sealed).is_err());
        assert!(open_link(&sk, &anchor, &id, 3, 2, 5, &enc, &sealed).is_err());
        assert!(open_link(&sk, &anchor, &id, 3, 1, 6, &enc, &sealed).is_err());
    }

    #[test]
    fn history_entries_are_bound_to_both_epochs() {
        let (current, old) = (Key256::random().unwrap(), Key256::random().unwrap());
        let id = [7u8; 16];
        let w = wrap_history(&current, &id, 3, 1, &old);
        assert_eq!(
            unwrap_history(&current, &id, 3, 1, &w).unwrap().expose(),
            old.expose()
        );
        assert!(unwrap_history(&current, &id, 3, 2, &w).is_err());
        assert!(unwrap_history(&current, &id, 4, 1, &w).is_err());
        assert!(unwrap_history(&old, &id, 3, 1, &w).is_err());
        assert_ne!(fingerprint(&current, &id), fingerprint(&old, &id));
    }
}
