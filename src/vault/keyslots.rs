//! Keyslot management on an unlocked vault: change a password, add and remove slots, issue
//! a new recovery key, and recover (a new password, or a whole new key database) with the
//! recovery key. New slots get every live generation sealed to their public key, which needs
//! K_auth and the master keys (from the slot that unlocked) but no other slot's secret.

use std::path::Path;

use zeroize::Zeroizing;

use super::error::{Result, VaultError};
use super::keystore::Unlocked;
use super::layout::write_file_durably;
use super::now;
use super::recovery_file::{self, RecoveryFileInfo};
use super::state::{AuthHistory, AuthLink, Seal, Slot, SlotKind};
use crate::crypto::keys::{Key256, random_array};
use crate::crypto::keyslot::{KdfParams, PasswordSlotBinding, RecoverySlotBinding, SlotSecrets};
use crate::crypto::{auth, recovery_key, seal};

/// Refuses to change keys while a daemon serves the vault (its lock on the marker is held).
pub fn ensure_not_mounted(vault: &Path) -> Result<()> {
    super::lock::lock(vault, || {
        format!("{} is mounted: unmount it first", vault.display())
    })?;
    Ok(())
}

pub(super) fn password_slot(
    vault_id: &[u8; 16],
    slot_id: u32,
    label: &str,
    kdf: KdfParams,
    secrets: &SlotSecrets,
    password: &[u8],
    anchor: u32,
) -> Result<Slot> {
    if password.is_empty() {
        return Err(VaultError::PasswordSource(
            "the new password is empty".into(),
        ));
    }
    let public_key = seal::public_key_of(&secrets.private_key)?;
    let salt: [u8; 32] = random_array()?;
    let binding = PasswordSlotBinding {
        vault_id,
        slot_id,
        public_key: &public_key,
        kdf,
        salt: &salt,
    };
    let kek = binding.derive_kek(password)?;
    Ok(Slot {
        slot_id,
        label: label.to_string(),
        kind: SlotKind::Password,
        created: now(),
        public_key,
        kdf: Some(kdf),
        salt: Some(salt),
        wrapped: binding.wrap(&kek, secrets),
        anchor_epoch: Some(anchor),
    })
}

impl Unlocked {
    /// Makes a new K_auth (the next auth epoch): the old one goes into the history (wrapped
    /// under the new one, with every older entry rewrapped), every slot but `rewrap` gets a
    /// link to it from its anchor, and every live generation is resealed to every slot
    /// under the new PSK. `rewrap` is a slot whose blob the caller rewrites around the new
    /// K_auth (anchored at the new epoch). Whoever unwrapped an older K_auth (a removed
    /// member, an old password) can no longer authenticate a state from here on.
    pub(super) fn renew_k_auth(&mut self, rewrap: Option<u32>) -> Result<()> {
        let vault_id = self.keystore.state.config.vault_id;
        let old_epoch = self.keystore.state.config.auth_epoch;
        let new_epoch = old_epoch
            .checked_add(1)
            .ok_or_else(|| VaultError::InvalidArgument("auth epoch overflow".into()))?;
        let new_key = Key256::random()?;
        // Every K_auth so far, by epoch.
        let mut keys: Vec<(u32, Key256)> = Vec::new();
        for e in 1..old_epoch {
            keys.push((e, self.auth_key_at(e)?));
        }
        keys.push((old_epoch, self.k_auth.clone()));
        let state = &mut self.keystore.state;
        state.auth_history = keys
            .iter()
            .map(|(e, k)| AuthHistory {
                auth_epoch: *e,
                wrapped: auth::wrap_history(&new_key, &vault_id, new_epoch, *e, k),
            })
            .collect();
        state.auth_links.clear();
        for slot in state.slots.iter().filter(|s| Some(s.slot_id) != rewrap) {
            let anchor = slot.anchor();
            let anchor_key = &keys
                .iter()
                .find(|(e, _)| *e == anchor)
                .ok_or_else(|| {
                    VaultError::tampered(
                        &self.keystore.paths.keystore,
                        "a keyslot's anchor is unknown",
                    )
                })?
                .1;
            let (enc, sealed) = auth::seal_link(
                &slot.public_key,
                anchor_key,
                &vault_id,
                new_epoch,
                anchor,
                slot.slot_id,
                &new_key,
            )?;
            state.auth_links.push(AuthLink {
                slot_id: slot.slot_id,
                enc: enc.to_vec(),
                sealed: sealed.to_vec(),
            });
        }
        state.config.auth_epoch = new_epoch;
        state.config.revoked_since_reencrypt = true;
        self.k_auth = new_key;
        // The seals' PSK derives from K_auth: reseal everything under the new one.
        let slots = self.keystore.state.slots.clone();
        for slot in slots.iter().filter(|s| Some(s.slot_id) != rewrap) {
            self.seal_live_generations_to(slot)?;
        }
        Ok(())
    }

    /// Seals every live generation to `slot` (HPKE mode_psk with the K_auth PSK).
    fn seal_live_generations_to(&mut self, slot: &Slot) -> Result<()> {
        let vault_id = self.keystore.state.config.vault_id;
        let psk = seal::psk_from_k_auth(&self.k_auth, &vault_id);
        for keys in self.keyring.live() {
            let (enc, sealed) = seal::seal_master_key(
                &slot.public_key,
                &psk,
                &vault_id,
                keys.generation,
                &slot.slot_id.to_be_bytes(),
                &keys.master_key,
            )?;
            self.keystore
                .state
                .seals
                .retain(|s| !(s.generation == keys.generation && s.slot_id == slot.slot_id));
            self.keystore.state.seals.push(Seal {
                generation: keys.generation,
                slot_id: slot.slot_id,
                enc: enc.to_vec(),
                sealed: sealed.to_vec(),
            });
        }
        Ok(())
    }

    fn slot_by_label(&self, label: &str) -> Result<Slot> {
        self.keystore
            .state
            .slots
            .iter()
            .find(|s| s.label == label)
            .cloned()
            .ok_or_else(|| {
                VaultError::InvalidArgument(format!(
                    "no keyslot labelled '{label}'; see `vaultfs keyslot list`"
                ))
            })
    }

    /// Gives the slot that unlocked a new password (new salt, current default scrypt cost)
    /// and a fresh key pair, with every live generation resealed to it: the old password,
    /// with a copy of the database made before, unwraps only the old private key, to which
    /// no generation made from now on is sealed.
    pub fn change_password(&mut self, password: &[u8]) -> Result<String> {
        self.refuse_during_rotation("change a password")?;
        self.renew_k_auth(Some(self.slot_id))?;
        let (private_key, _) = seal::keypair_from_seed(&Key256::random()?);
        let secrets = SlotSecrets {
            private_key,
            k_auth: self.k_auth.clone(),
        };
        let label = self.replace_password_slot(self.slot_id, &secrets, password, true)?;
        self.private_key = secrets.private_key;
        self.commit(&[("passwd", format!("slot {label}"))])?;
        Ok(label)
    }

    /// A revocation in the middle of a rotation could let the rotation finish onto a
    /// generation the revoked slot was sealed to: finish the rotation first.
    fn refuse_during_rotation(&self, what: &str) -> Result<()> {
        match &self.keystore.state.rotation {
            Some(r) => Err(VaultError::InvalidArgument(format!(
                "a rotation ({} -> {}) is unfinished: run `vaultfs rotate{}` first, then {what}",
                r.from_generation,
                r.to_generation,
                if r.reencrypt { " --reencrypt" } else { "" }
            ))),
            None => Ok(()),
        }
    }

    /// Rebuilds password slot `slot_id` around `secrets` and `password` (new salt, current
    /// default scrypt cost), resealing the live generations when its key pair is new.
    fn replace_password_slot(
        &mut self,
        slot_id: u32,
        secrets: &SlotSecrets,
        password: &[u8],
        reseal: bool,
    ) -> Result<String> {
        let state = &self.keystore.state;
        let old = state
            .slot(slot_id)
            .cloned()
            .ok_or_else(|| VaultError::InvalidArgument(format!("no keyslot {slot_id}")))?;
        if old.kind != SlotKind::Password {
            return Err(VaultError::InvalidArgument(format!(
                "keyslot '{}' is not a password slot",
                old.label
            )));
        }
        let mut slot = password_slot(
            &state.config.vault_id,
            slot_id,
            &old.label,
            state.config.default_kdf,
            secrets,
            password,
            state.config.auth_epoch,
        )?;
        slot.created = old.created;
        if reseal {
            self.seal_live_generations_to(&slot)?;
        }
        for s in &mut self.keystore.state.slots {
            if s.slot_id == slot_id {
                *s = slot.clone();
            }
        }
        Ok(slot.label)
    }

    /// Adds a password slot labelled `label`.
    pub fn add_password_slot(&mut self, label: &str, password: &[u8]) -> Result<()> {
        if self.keystore.state.slots.iter().any(|s| s.label == label) {
            return Err(VaultError::AlreadyExists(format!(
                "a keyslot labelled '{label}' exists"
            )));
        }
        let seed = Key256::random()?;
        let (private_key, _) = seal::keypair_from_seed(&seed);
        let secrets = SlotSecrets {
            private_key,
            k_auth: self.k_auth.clone(),
        };
        let state = &self.keystore.state;
        let slot = password_slot(
            &state.config.vault_id,
            state.next_slot_id(),
            label,
            state.config.default_kdf,
            &secrets,
            password,
            state.config.auth_epoch,
        )?;
        self.seal_live_generations_to(&slot)?;
        self.keystore.state.config.next_slot_id = slot.slot_id + 1;
        self.keystore.state.slots.push(slot);
        self.commit(&[("keyslot-add", format!("password slot {label}"))])
    }

    /// Issues a new recovery key (replacing the recovery slot if there is one) and rewrites
    /// the recovery files of the live generations. Returns the key to show once.
    pub fn new_recovery_key(&mut self, label: &str) -> Result<Zeroizing<String>> {
        self.refuse_during_rotation("issue a new recovery key")?;
        let seed = Key256::random()?;
        let (_, public_key) = seal::keypair_from_seed(&seed);
        let vault_id = self.keystore.state.config.vault_id;
        let old: Vec<u32> = self
            .keystore
            .state
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Recovery)
            .map(|s| s.slot_id)
            .collect();
        let slot_id = self.keystore.state.next_slot_id();
        // The old recovery key is revoked: gone from the slots, and K_auth renewed.
        self.keystore
            .state
            .slots
            .retain(|s| !old.contains(&s.slot_id));
        self.keystore
            .state
            .seals
            .retain(|s| !old.contains(&s.slot_id));
        self.renew_k_auth(None)?;
        let wrapped = RecoverySlotBinding {
            vault_id: &vault_id,
            slot_id,
            public_key: &public_key,
        }
        .wrap(&seed, &self.k_auth);
        let slot = Slot {
            slot_id,
            label: label.into(),
            kind: SlotKind::Recovery,
            created: now(),
            public_key,
            kdf: None,
            salt: None,
            wrapped,
            anchor_epoch: Some(self.keystore.state.config.auth_epoch),
        };
        self.seal_live_generations_to(&slot)?;
        self.keystore.state.config.next_slot_id = slot.slot_id + 1;
        self.keystore.state.slots.push(slot.clone());
        self.write_recovery_files(&slot)?;
        self.commit(&[("keyslot-add", format!("recovery slot {label}"))])?;
        Ok(recovery_key::encode(&seed))
    }

    fn write_recovery_files(&self, slot: &Slot) -> Result<()> {
        let c = &self.keystore.state.config;
        let backing = &self.keystore.paths.backing;
        for keys in self.keyring.live() {
            let info = RecoveryFileInfo::for_slot(c, slot, keys.generation)?;
            let name = recovery_file::file_name(keys.generation);
            let _ = std::fs::remove_file(backing.join(&name));
            write_file_durably(
                backing,
                &name,
                &info.seal(&self.k_auth, &keys.master_key)?,
                0o400,
            )?;
        }
        Ok(())
    }

    /// Removes the slot labelled `label`. Refuses the slot that unlocked and the last
    /// password slot. Removing the recovery slot also removes the recovery files.
    pub fn remove_slot(&mut self, label: &str) -> Result<()> {
        self.refuse_during_rotation("remove the keyslot")?;
        let slot = self.slot_by_label(label)?;
        if slot.slot_id == self.slot_id {
            return Err(VaultError::InvalidArgument(format!(
                "keyslot '{label}' is the one you unlocked with: unlock with another slot's password to remove it"
            )));
        }
        let state = &mut self.keystore.state;
        if slot.kind == SlotKind::Password
            && state
                .slots
                .iter()
                .filter(|s| s.kind == SlotKind::Password)
                .count()
                <= 1
        {
            return Err(VaultError::InvalidArgument(
                "refusing to remove the last password keyslot".into(),
            ));
        }
        // Its ID is never given out again.
        state.config.next_slot_id = state.next_slot_id();
        state.slots.retain(|s| s.slot_id != slot.slot_id);
        state.seals.retain(|s| s.slot_id != slot.slot_id);
        // What the removed slot unwrapped no longer authenticates anything.
        self.renew_k_auth(None)?;
        if slot.kind == SlotKind::Recovery {
            let backing = self.keystore.paths.backing.clone();
            for g in &self.keystore.state.generations {
                let _ = std::fs::remove_file(backing.join(recovery_file::file_name(g.generation)));
            }
        }
        self.commit(&[(
            "keyslot-remove",
            format!("{} slot {label}", slot.kind.as_str()),
        )])
    }

    /// The first password slot (the default target of `recover`).
    pub fn first_password_slot(&self) -> Option<u32> {
        self.keystore
            .state
            .slots
            .iter()
            .find(|s| s.kind == SlotKind::Password)
            .map(|s| s.slot_id)
    }

    /// Recovery: a password slot's private key cannot be read back without its password, so
    /// the slot gets a fresh key pair, its new password, and every live generation resealed.
    pub fn reset_password_slot(&mut self, slot_id: u32, password: &[u8]) -> Result<String> {
        self.refuse_during_rotation("set the new password")?;
        self.renew_k_auth(Some(slot_id))?;
        let (private_key, _) = seal::keypair_from_seed(&Key256::random()?);
        let secrets = SlotSecrets {
            private_key,
            k_auth: self.k_auth.clone(),
        };
        let label = self.replace_password_slot(slot_id, &secrets, password, true)?;
        self.commit(&[("recover", format!("new password for slot {label}"))])?;
        Ok(label)
    }
}
