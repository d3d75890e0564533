//! `vaultfs recover --rebuild-keystore`: a new key database from the recovery key and the
//! recovery-sealed generation files in the backing directory, for a lost or corrupt one.
//! The old database, if any, is moved aside, never deleted.
//!
//! What the rebuild trusts least is what it reads: every former member knows the K_auth that
//! sealed the recovery files, so one could plant a recovery file holding a generation of
//! their own. The rebuilt database therefore gets a fresh K_auth (the recovery slot is
//! rewrapped with the seed, the recovery files resealed), and the caller then rotates to a
//! fresh generation (`recover` does), so no key the files named stays in use for writing.

use std::fs;
use std::path::{Path, PathBuf};

use super::db::KeyDb;
use super::error::{Result, VaultError};
use super::layout::{DB_FILE, MARKER_FILE, Marker};
use super::recovery_file;
use super::state::{Config, GenState, Generation, Rotation, Seal, Slot, SlotKind, VaultState};
use super::{local_state, now, probe};
use crate::crypto::keys::Key256;
use crate::crypto::keyslot::{KdfParams, RecoverySlotBinding, SlotSecrets};
use crate::crypto::seal;
use crate::vault::keyslots::password_slot;

pub fn rebuild_keystore(
    vault: &Path,
    keystore: Option<&Path>,
    seed: &Key256,
    password: &[u8],
    kdf: KdfParams,
    interrupted_rotation: bool,
) -> Result<PathBuf> {
    if password.is_empty() {
        return Err(VaultError::PasswordSource(
            "the new password is empty".into(),
        ));
    }
    kdf.validate()?;
    let marker_text = fs::read_to_string(vault.join(MARKER_FILE))
        .map_err(|_| VaultError::NotAVault(vault.into()))?;
    let marker = Marker::parse(&marker_text).ok_or_else(|| VaultError::NotAVault(vault.into()))?;
    let mut opened = Vec::new();
    for entry in fs::read_dir(vault)
        .map_err(VaultError::io(format!("cannot read {}", vault.display())))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix("vaultfs.recovery.")
            .is_some_and(|g| g.parse::<u32>().is_ok())
        {
            let bytes =
                fs::read(entry.path()).map_err(VaultError::io(format!("cannot read {name}")))?;
            let (info, secrets, master) = recovery_file::open(&bytes, seed).map_err(|e| {
                VaultError::InvalidArgument(format!(
                    "{name} does not open with this recovery key ({e})"
                ))
            })?;
            if info.vault_id != marker.vault_id {
                return Err(VaultError::InvalidArgument(format!(
                    "{name} belongs to another vault"
                )));
            }
            opened.push((info, secrets, master));
        }
    }
    if opened.is_empty() {
        return Err(VaultError::InvalidArgument(format!(
            "no recovery files (vaultfs.recovery.N) in {}: was the vault made with --no-recovery-key?",
            vault.display()
        )));
    }
    opened.sort_by_key(|(info, _, _)| info.generation);
    let found = || {
        opened
            .iter()
            .map(|(i, _, _)| recovery_file::file_name(i.generation))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if opened.len() > 2 {
        return Err(VaultError::InvalidArgument(format!(
            "{} recovery files ({}): a vault has at most two live generations; move the ones that do not belong aside",
            opened.len(),
            found()
        )));
    }
    // Two files are a rotation under way, or one planted by someone who knew the K_auth
    // that sealed them: finishing that rotation would wrap every file key under the
    // planted generation, in the backing store. Only the owner can tell which.
    if opened.len() == 2 && !interrupted_rotation {
        return Err(VaultError::InvalidArgument(format!(
            "two recovery files ({}): either a rotation was under way when the key database was lost, or someone who knew an old key planted the newer one. If no rotation was running, move the newer file aside and run this again; if one was, run it again with --interrupted-rotation",
            found()
        )));
    }
    let (info0, _, _) = &opened[0];
    let vault_id = info0.vault_id;
    // A K_auth nobody else has seen: the files' one is known to every member ever anchored
    // where the recovery slot is.
    let k_auth = Key256::random()?;
    let path = keystore
        .map(Path::to_path_buf)
        .unwrap_or_else(|| vault.join(DB_FILE));
    if path.exists() {
        let aside = path.with_file_name(format!(
            "{}.broken-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("keystore"),
            now()
        ));
        fs::rename(&path, &aside).map_err(VaultError::io(format!(
            "cannot move {} aside",
            path.display()
        )))?;
        eprintln!("moved the old key database aside to {}", aside.display());
    }

    let t = now();
    let recovery_slot_id = info0.slot_id;
    let password_slot_id = if recovery_slot_id == 1 { 2 } else { 1 };
    let (private_key, _) = seal::keypair_from_seed(&Key256::random()?);
    let secrets = SlotSecrets {
        private_key,
        k_auth: k_auth.clone(),
    };
    let slots = vec![
        password_slot(
            &vault_id,
            password_slot_id,
            "default",
            kdf,
            &secrets,
            password,
            1,
        )?,
        Slot {
            slot_id: recovery_slot_id,
            label: "recovery".into(),
            kind: SlotKind::Recovery,
            created: t,
            public_key: info0.public_key,
            kdf: None,
            salt: None,
            wrapped: RecoverySlotBinding {
                vault_id: &vault_id,
                slot_id: recovery_slot_id,
                public_key: &info0.public_key,
            }
            .wrap(seed, &k_auth),
            anchor_epoch: Some(1),
        },
    ];
    let psk = seal::psk_from_k_auth(&k_auth, &vault_id);
    let newest = opened.last().map(|(i, _, _)| i.generation).unwrap_or(1);
    let mut generations = Vec::new();
    let mut seals = Vec::new();
    for (info, _, master) in &opened {
        let state = if info.generation == newest {
            GenState::Active
        } else {
            GenState::Retiring
        };
        generations.push(Generation {
            generation: info.generation,
            state,
            created: t,
            destroyed: None,
        });
        for slot in &slots {
            let (enc, sealed) = seal::seal_master_key(
                &slot.public_key,
                &psk,
                &vault_id,
                info.generation,
                &slot.slot_id.to_be_bytes(),
                master,
            )?;
            seals.push(Seal {
                generation: info.generation,
                slot_id: slot.slot_id,
                enc: enc.to_vec(),
                sealed: sealed.to_vec(),
            });
        }
    }
    let missing = probe::probe(vault)
        .map(|f| f.missing.join(","))
        .unwrap_or_default();
    // Two files: a rotation was under way. It stays so, for `rotate` to finish.
    let rotation = (opened.len() == 2).then(|| Rotation {
        from_generation: opened[0].0.generation,
        to_generation: newest,
        reencrypt: false,
        phase: "walk".into(),
        cursor: None,
        started: t,
        updated: t,
    });
    let state = VaultState {
        config: Config {
            // Every password slot but the new one is gone, and their holders keep the
            // generations' keys until `rotate --reencrypt`.
            revoked_since_reencrypt: true,
            next_slot_id: recovery_slot_id.max(password_slot_id) + 1,
            ..Config::new_database(
                vault_id,
                info0.chunk_size,
                info0.longname_max.into(),
                kdf,
                missing,
                t,
                // Above anything this machine has seen, so the rebuilt database is not taken
                // for a rollback.
                local_state::seen_epoch(&vault_id)? + 1,
            )
        },
        slots,
        generations,
        seals,
        rotation,
        auth_links: Vec::new(),
        auth_history: Vec::new(),
    };
    state
        .check_structure()
        .map_err(VaultError::InvalidArgument)?;
    let mut db = KeyDb::create(&path)?;
    let detail = format!(
        "rebuilt the key database from {} recovery file(s)",
        opened.len()
    );
    let mut state = state;
    super::keystore::write_first_state(&mut db, &mut state, &k_auth, (t, "recover", &detail))?;
    // The recovery files again, sealed under the new K_auth (a crash before this leaves the
    // old ones, which still rebuild).
    let recovery_slot = state
        .slot(recovery_slot_id)
        .expect("the rebuilt state has its recovery slot");
    for (info, _, master) in &opened {
        let file = super::recovery_file::RecoveryFileInfo::for_slot(
            &state.config,
            recovery_slot,
            info.generation,
        )?;
        let name = super::recovery_file::file_name(info.generation);
        let _ = fs::remove_file(vault.join(&name));
        super::layout::write_file_durably(vault, &name, &file.seal(&k_auth, master)?, 0o400)?;
    }
    Ok(path)
}
