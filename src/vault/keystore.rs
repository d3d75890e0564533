//! Opening a vault's key database and unlocking it: a keyslot yields K_auth and the slot's
//! private key; K_auth authenticates the whole database state; the private key opens the
//! seals of the live generations, which give the keyring. `commit` writes changes back.

use super::audit;
use super::db::KeyDb;
use super::error::{Result, VaultError};
use super::layout::{Marker, VaultPaths};
use super::local_state;
use super::state::{SlotKind, VaultState};
use crate::crypto::chunk::ChunkLayout;
use crate::crypto::keys::Key256;
use crate::crypto::keyslot::{KdfParams, PasswordSlotBinding, RecoverySlotBinding, SlotSecrets};
use crate::crypto::{CryptoError, GenerationKeys, Keyring, auth, seal};

/// An opened key database whose state has been read and checked for structure, but not yet
/// authenticated (that needs a keyslot).
pub struct Keystore {
    pub paths: VaultPaths,
    pub db: KeyDb,
    pub state: VaultState,
    stored_mac: Vec<u8>,
}

/// A vault unlocked through one keyslot.
pub struct Unlocked {
    pub keystore: Keystore,
    pub slot_id: u32,
    pub k_auth: Key256,
    /// The unlocking slot's private key (kept to rewrap it under a new password).
    pub private_key: Key256,
    pub keyring: Keyring,
}

impl Keystore {
    /// Opens and checks the key database; `writable` for commands that change keys.
    pub fn open(paths: VaultPaths, marker: &Marker, writable: bool) -> Result<Keystore> {
        let db = KeyDb::open(&paths.keystore, writable)?;
        let (state, stored_mac) = db.load_state()?;
        if state.config.vault_id != marker.vault_id {
            return Err(VaultError::refused(
                &paths.keystore,
                format!(
                    "it belongs to another vault (vault ID {}, but {} is {})",
                    data_encoding::HEXLOWER.encode(&state.config.vault_id),
                    paths.backing.display(),
                    data_encoding::HEXLOWER.encode(&marker.vault_id)
                ),
            ));
        }
        Ok(Keystore {
            paths,
            db,
            state,
            stored_mac,
        })
    }

    pub fn layout(&self) -> ChunkLayout {
        ChunkLayout::new(self.state.config.chunk_size).expect("chunk size validated on load")
    }

    /// Tries the password on each password slot (or only the one labelled `label`).
    pub fn unlock_with_password(self, password: &[u8], label: Option<&str>) -> Result<Unlocked> {
        let vault_id = self.state.config.vault_id;
        let candidates: Vec<_> = self
            .state
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Password && label.is_none_or(|l| s.label == l))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Err(VaultError::InvalidArgument(match label {
                Some(l) => format!("no password keyslot labelled '{l}'; see `vaultfs status`"),
                None => "this vault has no password keyslot".into(),
            }));
        }
        // Each slot's parameters passed the per-slot caps on load; bound their sum too, before
        // any scrypt runs, so planted slots cannot make one unlock run for minutes.
        let work: u64 = candidates
            .iter()
            .filter_map(|s| s.kdf.map(|k| k.work()))
            .sum();
        if work > KdfParams::MAX_UNLOCK_WORK {
            return Err(VaultError::refused(
                &self.paths.keystore,
                format!(
                    "trying its {} password keyslots would cost {}x the default scrypt work, \
                     more than one unlock may (128x): slots planted by someone? \
                     `vaultfs keyslot list` shows them",
                    candidates.len(),
                    work / KdfParams::DEFAULT.work()
                ),
            ));
        }
        for slot in candidates {
            let (Some(kdf), Some(salt)) = (slot.kdf, slot.salt) else {
                continue;
            };
            let binding = PasswordSlotBinding {
                vault_id: &vault_id,
                slot_id: slot.slot_id,
                public_key: &slot.public_key,
                kdf,
                salt: &salt,
            };
            let kek = binding.derive_kek(password)?;
            match binding.unwrap(&kek, &slot.wrapped) {
                Ok(secrets) => return self.finish_unlock(slot.slot_id, secrets),
                Err(CryptoError::Authentication) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(VaultError::WrongPassword)
    }

    /// Unlocks with the recovery seed through the recovery slot.
    pub fn unlock_with_recovery(self, seed: &Key256) -> Result<Unlocked> {
        let vault_id = self.state.config.vault_id;
        let slots: Vec<_> = self
            .state
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Recovery)
            .cloned()
            .collect();
        if slots.is_empty() {
            return Err(VaultError::InvalidArgument(
                "this vault has no recovery keyslot".into(),
            ));
        }
        for slot in slots {
            let binding = RecoverySlotBinding {
                vault_id: &vault_id,
                slot_id: slot.slot_id,
                public_key: &slot.public_key,
            };
            if let Ok(secrets) = binding.unwrap(seed, &slot.wrapped) {
                return self.finish_unlock(slot.slot_id, secrets);
            }
        }
        Err(VaultError::WrongPassword)
    }

    /// Against what this machine saw: no older auth epoch, no format-1 database once format 2
    /// was seen, and the K_auth it saw (from the history) matching its recorded fingerprint,
    /// else the database was forged by someone holding an older K_auth (a removed member, an
    /// old password) or replaced.
    fn check_auth_record(&self, k_auth: &Key256) -> Result<()> {
        let state = &self.state;
        let vault_id = state.config.vault_id;
        let path = &self.paths.keystore;
        let Some((seen, fp)) = local_state::seen_auth(&vault_id)? else {
            return Ok(());
        };
        let forged = || {
            VaultError::tampered(
                path,
                format!(
                    "its authentication history differs from what this machine saw (auth epoch {seen}): forged by someone who once held a key of this vault, or replaced; restore it from a backup (if you rebuilt it with `recover --rebuild-keystore`, remove {} on this machine)",
                    local_state::StateDir::vault(&vault_id)
                        .map(|d| d.path().join("auth").display().to_string())
                        .unwrap_or_else(|_| "this vault's auth record".into())
                ),
            )
        };
        if state.config.format_version < 2 {
            return Err(VaultError::tampered(
                path,
                "it is a format-1 database, but this machine already saw this vault at format 2 (a downgrade)",
            ));
        }
        let epoch = state.config.auth_epoch;
        if epoch < seen {
            return Err(VaultError::Rollback {
                path: path.clone(),
                found: epoch.into(),
                seen: seen.into(),
            });
        }
        let key_seen = if epoch == seen {
            k_auth.clone()
        } else {
            let h = state
                .auth_history
                .iter()
                .find(|h| h.auth_epoch == seen)
                .ok_or_else(forged)?;
            auth::unwrap_history(k_auth, &vault_id, epoch, seen, &h.wrapped)
                .map_err(|_| forged())?
        };
        if auth::fingerprint(&key_seen, &vault_id) != fp {
            return Err(forged());
        }
        Ok(())
    }

    fn finish_unlock(self, slot_id: u32, secrets: SlotSecrets) -> Result<Unlocked> {
        let state = &self.state;
        let vault_id = state.config.vault_id;
        let path = &self.paths.keystore;
        // The slot's blob holds the K_auth of its anchor epoch; a slot anchored below the
        // current epoch reaches the current K_auth through its link (format 2).
        let slot = state.slot(slot_id).expect("the unlocking slot exists");
        let epoch = state.config.auth_epoch;
        let k_auth = match slot.anchor().cmp(&epoch) {
            std::cmp::Ordering::Equal => secrets.k_auth.clone(),
            std::cmp::Ordering::Less => {
                let link = state
                    .auth_links
                    .iter()
                    .find(|l| l.slot_id == slot_id)
                    .ok_or_else(|| {
                        VaultError::tampered(path, "a keyslot's auth link is missing")
                    })?;
                auth::open_link(
                    &secrets.private_key,
                    &secrets.k_auth,
                    &vault_id,
                    epoch,
                    slot.anchor(),
                    slot_id,
                    &link.enc,
                    &link.sealed,
                )
                .map_err(|_| VaultError::tampered(path, "a keyslot's auth link does not open"))?
            }
            std::cmp::Ordering::Greater => {
                return Err(VaultError::tampered(
                    path,
                    "a keyslot is anchored above the database's auth epoch (an older database put back?)",
                ));
            }
        };
        state
            .verify_mac(&VaultState::mac_key(&k_auth, &vault_id), &self.stored_mac)
            .map_err(|_| {
                VaultError::tampered(path, "its authentication code does not match its contents")
            })?;
        self.check_auth_record(&k_auth)?;
        let secrets = SlotSecrets {
            private_key: secrets.private_key,
            k_auth,
        };
        let seen = local_state::seen_epoch(&vault_id)?;
        if state.config.epoch < seen {
            return Err(VaultError::Rollback {
                path: path.clone(),
                found: state.config.epoch,
                seen,
            });
        }
        let psk = seal::psk_from_k_auth(&secrets.k_auth, &vault_id);
        let open_gen = |generation: u32| -> Result<GenerationKeys> {
            let s = state.seal(generation, slot_id).ok_or_else(|| {
                VaultError::tampered(
                    path,
                    format!("slot {slot_id} has no seal for generation {generation}"),
                )
            })?;
            let mk = seal::open_master_key(
                &secrets.private_key,
                &psk,
                &vault_id,
                generation,
                &slot_id.to_be_bytes(),
                &s.enc,
                &s.sealed,
            )
            .map_err(|_| {
                VaultError::tampered(
                    path,
                    format!("the seal of generation {generation} does not open"),
                )
            })?;
            Ok(GenerationKeys::derive(&vault_id, generation, mk))
        };
        let active = open_gen(
            state
                .active_generation()
                .expect("structure checked")
                .generation,
        )?;
        let retiring = match state.retiring_generation() {
            Some(g) => Some(open_gen(g.generation)?),
            None => None,
        };
        local_state::record_epoch(&vault_id, state.config.epoch)?;
        if state.config.format_version >= 2 {
            local_state::record_auth(
                &vault_id,
                epoch,
                &auth::fingerprint(&secrets.k_auth, &vault_id),
            )?;
        }
        let keyring = Keyring::new(vault_id, active, retiring);
        Ok(Unlocked {
            keystore: self,
            slot_id,
            k_auth: secrets.k_auth,
            private_key: secrets.private_key,
            keyring,
        })
    }
}

/// Writes `state` and appends `events` (time, event, detail) to the audit log in one
/// transaction: the entries first, then the state with the chain's new end (format 2) and
/// its MAC. Returns the MAC.
pub(super) fn write_state(
    db: &mut KeyDb,
    state: &mut VaultState,
    k_auth: &Key256,
    audit_key: &Key256,
    events: &[(i64, &str, &str)],
) -> Result<[u8; crate::crypto::mac::MAC_LEN]> {
    let vault_id = state.config.vault_id;
    let path = db.path.clone();
    let sql = |e: rusqlite::Error| VaultError::refused(&path, format!("cannot write: {e}"));
    let tx = db.conn.transaction().map_err(sql)?;
    for (time, event, detail) in events {
        audit::append(&tx, audit_key, *time, event, detail).map_err(sql)?;
    }
    let (count, head) = audit::head(&tx).map_err(sql)?;
    state.config.audit_count = count;
    state.config.audit_head = head;
    let mac = state.compute_mac(&VaultState::mac_key(k_auth, &vault_id));
    KeyDb::save_state(&tx, &path, state, &mac)?;
    tx.commit().map_err(sql)?;
    Ok(mac)
}

/// Writes a new key database's first state and audit event (`init`, a rebuilt keystore),
/// and makes this machine remember it: its epoch, and its K_auth as the start of a new
/// history (a deliberate reset of trust).
pub(super) fn write_first_state(
    db: &mut KeyDb,
    state: &mut VaultState,
    k_auth: &Key256,
    event: (i64, &str, &str),
) -> Result<()> {
    let vault_id = state.config.vault_id;
    write_state(
        db,
        state,
        k_auth,
        &audit::audit_key(k_auth, &vault_id),
        &[event],
    )?;
    local_state::record_epoch(&vault_id, state.config.epoch)?;
    local_state::reset_auth(
        &vault_id,
        state.config.auth_epoch,
        &auth::fingerprint(k_auth, &vault_id),
    )
}

impl Unlocked {
    /// Writes the in-memory state back with a new epoch and MAC, plus audit entries (and any
    /// waiting in the local audit log), in one transaction.
    pub fn commit(&mut self, events: &[(&str, String)]) -> Result<()> {
        // Nothing is written on top of an audit log that someone has cut or edited.
        let audit_key = self.audit_key()?;
        if let Err(why) = audit::check(
            &self.keystore.db.conn,
            &audit_key,
            &self.keystore.state.config,
        )? {
            return Err(VaultError::tampered(
                &self.keystore.paths.keystore,
                format!("{why}; restore it from a backup"),
            ));
        }
        if self.keystore.state.config.format_version < 2 {
            // Upgrading from format 1: every member ever removed under format 1 knows its
            // K_auth, so the first format-2 write renews it.
            self.renew_k_auth(None)?;
        }
        let k_auth = self.k_auth.clone();
        let ks = &mut self.keystore;
        let vault_id = ks.state.config.vault_id;
        ks.state.config.epoch += 1;
        // A format-1 vault becomes format 2 with its first write by this build (the marker
        // follows right after the commit; one still at 1 is raised by the next writer).
        ks.state.config.format_version = super::state::FORMAT_VERSION;
        ks.state.check_structure().map_err(|why| {
            VaultError::InvalidArgument(format!("refusing to save an invalid key database: {why}"))
        })?;
        let pending = local_state::pending_local_audit(&vault_id)?;
        let mut all: Vec<(i64, &str, &str)> = pending
            .iter()
            .map(|e| (e.time, e.event.as_str(), e.detail.as_str()))
            .collect();
        let now = super::now();
        all.extend(events.iter().map(|(e, d)| (now, *e, d.as_str())));
        let mac = write_state(&mut ks.db, &mut ks.state, &k_auth, &audit_key, &all)?;
        ks.stored_mac = mac.to_vec();
        super::layout::upgrade_marker(&ks.paths.backing)?;
        local_state::clear_local_audit(&vault_id)?;
        local_state::record_epoch(&vault_id, ks.state.config.epoch)?;
        local_state::record_auth(
            &vault_id,
            ks.state.config.auth_epoch,
            &auth::fingerprint(&k_auth, &vault_id),
        )
    }

    pub fn state(&self) -> &VaultState {
        &self.keystore.state
    }

    /// The K_auth of auth epoch `epoch` (the current one, or from the history).
    pub fn auth_key_at(&self, epoch: u32) -> Result<Key256> {
        let state = &self.keystore.state;
        let current = state.config.auth_epoch;
        if epoch == current {
            return Ok(self.k_auth.clone());
        }
        let path = &self.keystore.paths.keystore;
        let h = state
            .auth_history
            .iter()
            .find(|h| h.auth_epoch == epoch)
            .ok_or_else(|| {
                VaultError::tampered(path, format!("auth epoch {epoch} is not in the history"))
            })?;
        auth::unwrap_history(
            &self.k_auth,
            &state.config.vault_id,
            current,
            epoch,
            &h.wrapped,
        )
        .map_err(|_| VaultError::tampered(path, "an auth history entry does not open"))
    }

    /// The audit chain's key: derived from the vault's first K_auth, which every later one
    /// keeps in its history. Its secrecy is no longer what protects the log (the state MAC
    /// fixes the chain's end), so it need not change with K_auth.
    pub fn audit_key(&self) -> Result<Key256> {
        Ok(audit::audit_key(
            &self.auth_key_at(1)?,
            &self.keystore.state.config.vault_id,
        ))
    }

    pub fn layout(&self) -> ChunkLayout {
        self.keystore.layout()
    }
}
