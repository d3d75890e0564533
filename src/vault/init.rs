//! `vaultfs init`: a new vault. Creates the key database (slots, generation 1, all MAC'ed),
//! the backing directory's root files, and the recovery key.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::db::KeyDb;
use super::error::{Result, VaultError};
use super::keystore::{Keystore, Unlocked};
use super::layout::{DB_FILE, MARKER_FILE, Marker, VaultPaths, write_file_durably};
use super::recovery_file::{self, RecoveryFileInfo};
use super::state::{
    Config, FORMAT_VERSION, GenState, Generation, Seal, Slot, SlotKind, VaultState,
};
use super::{now, probe};
use crate::crypto::chunk::ChunkLayout;
use crate::crypto::dirid::{ROOT_PARENT, seal_dir_id};
use crate::crypto::keys::{Key256, random_array};
use crate::crypto::keyslot::{KdfParams, RecoverySlotBinding, SlotSecrets};
use crate::crypto::names::{DIRID_FILE, MIN_LONGNAME_MAX, NAME_MAX};
use crate::crypto::{GenerationKeys, recovery_key, seal};
use crate::vault::keyslots::password_slot;

pub struct InitOptions {
    pub vault: PathBuf,
    pub keystore: Option<PathBuf>,
    pub kdf: KdfParams,
    pub chunk_size: u32,
    pub longname_max: u32,
    pub recovery_key: bool,
    /// Let files store holes (`init --sparse`; see `Config::sparse` for the trade-off).
    pub sparse: bool,
}

pub struct InitReport {
    pub paths: VaultPaths,
    pub vault_id: [u8; 16],
    /// Shown once; None with --no-recovery-key.
    pub recovery_key: Option<Zeroizing<String>>,
    pub backing_missing: Vec<&'static str>,
    pub longname_max: u32,
}

fn check_options(o: &InitOptions) -> Result<()> {
    o.kdf.validate().map_err(|_| {
        VaultError::InvalidArgument(format!(
            "--scrypt-logn {}: out of range (10-20: at most 1 GiB of memory and 16 times the default work)",
            o.kdf.log_n
        ))
    })?;
    ChunkLayout::new(o.chunk_size)
        .map_err(|e| VaultError::InvalidArgument(format!("--chunk-size: {e}")))?;
    if !(MIN_LONGNAME_MAX as u32..=NAME_MAX as u32).contains(&o.longname_max) {
        return Err(VaultError::InvalidArgument(
            "--longname-max must be from 62 to 255".into(),
        ));
    }
    Ok(())
}

/// Prepares the (empty or new) vault directory; returns whether we created it.
fn prepare_dir(vault: &Path) -> Result<bool> {
    match fs::read_dir(vault) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(VaultError::AlreadyExists(format!(
                    "{} is not empty: a vault must start in an empty directory",
                    vault.display()
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(vault)
                .map_err(VaultError::io(format!("cannot create {}", vault.display())))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(VaultError::AlreadyExists(
            format!("{} exists and is not a directory", vault.display()),
        )),
        Err(e) => Err(VaultError::io(format!("cannot read {}", vault.display()))(
            e,
        )),
    }
}

pub fn init(o: &InitOptions, password: &[u8]) -> Result<InitReport> {
    check_options(o)?;
    if password.is_empty() {
        return Err(VaultError::PasswordSource("the password is empty".into()));
    }
    let keystore = o.keystore.clone().unwrap_or_else(|| o.vault.join(DB_FILE));
    if keystore.exists() {
        return Err(VaultError::AlreadyExists(format!(
            "key database {} already exists",
            keystore.display()
        )));
    }
    let created_dir = prepare_dir(&o.vault)?;
    let result = create(o, &keystore, password);
    if result.is_err() {
        // Leave nothing half-made behind.
        if created_dir {
            let _ = fs::remove_dir_all(&o.vault);
        } else if let Ok(entries) = fs::read_dir(&o.vault) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_file(&keystore);
    }
    result
}

fn create(o: &InitOptions, keystore: &Path, password: &[u8]) -> Result<InitReport> {
    let features = probe::probe(&o.vault).map_err(VaultError::io(format!(
        "cannot write to {}",
        o.vault.display()
    )))?;
    if features.name_max < MIN_LONGNAME_MAX as u64 {
        return Err(VaultError::InvalidArgument(format!(
            "the backing filesystem allows names of only {} bytes; vaultfs needs at least {MIN_LONGNAME_MAX}",
            features.name_max
        )));
    }
    let longname_max = o.longname_max.min(features.name_max as u32);
    let t = now();
    let vault_id: [u8; 16] = random_array()?;
    let k_auth = Key256::random()?;
    let master = Key256::random()?;
    let psk = seal::psk_from_k_auth(&k_auth, &vault_id);

    let mut slots = Vec::new();
    let mut seals = Vec::new();

    // Slot 1: the password.
    let (private_key, _) = seal::keypair_from_seed(&Key256::random()?);
    let secrets = SlotSecrets {
        private_key,
        k_auth: k_auth.clone(),
    };
    slots.push(password_slot(
        &vault_id, 1, "default", o.kdf, &secrets, password, 1,
    )?);

    // Slot 2: the recovery key.
    let mut recovery = None;
    if o.recovery_key {
        let seed = Key256::random()?;
        let (_, public_key) = seal::keypair_from_seed(&seed);
        let wrapped = RecoverySlotBinding {
            vault_id: &vault_id,
            slot_id: 2,
            public_key: &public_key,
        }
        .wrap(&seed, &k_auth);
        slots.push(Slot {
            slot_id: 2,
            label: "recovery".into(),
            kind: SlotKind::Recovery,
            created: t,
            public_key,
            kdf: None,
            salt: None,
            wrapped,
            anchor_epoch: Some(1),
        });
        recovery = Some(seed);
    }
    for slot in &slots {
        let (enc, sealed) = seal::seal_master_key(
            &slot.public_key,
            &psk,
            &vault_id,
            1,
            &slot.slot_id.to_be_bytes(),
            &master,
        )?;
        seals.push(Seal {
            generation: 1,
            slot_id: slot.slot_id,
            enc: enc.to_vec(),
            sealed: sealed.to_vec(),
        });
    }

    let state = VaultState {
        config: Config {
            sparse: o.sparse,
            ..Config::new_database(
                vault_id,
                o.chunk_size,
                longname_max,
                o.kdf,
                features.missing.join(","),
                t,
                1,
            )
        },
        slots,
        generations: vec![Generation {
            generation: 1,
            state: GenState::Active,
            created: t,
            destroyed: None,
        }],
        seals,
        rotation: None,
        auth_links: Vec::new(),
        auth_history: Vec::new(),
    };

    // Backing root files first, the key database last: a vault without its database is
    // plainly unfinished, while a database pointing at nothing would look valid.
    let keys = GenerationKeys::derive(&vault_id, 1, master.clone());
    let root_id: [u8; 16] = random_array()?;
    write_file_durably(
        &o.vault,
        DIRID_FILE,
        &seal_dir_id(&keys, &vault_id, &ROOT_PARENT, "", &root_id),
        0o600,
    )?;
    if let (Some(_), Some(slot)) = (
        &recovery,
        state.slots.iter().find(|s| s.kind == SlotKind::Recovery),
    ) {
        let info = RecoveryFileInfo::for_slot(&state.config, slot, 1)?;
        write_file_durably(
            &o.vault,
            &recovery_file::file_name(1),
            &info.seal(&k_auth, &master)?,
            0o400,
        )?;
    }
    let marker = Marker {
        format_version: FORMAT_VERSION,
        vault_id,
        external_keystore: o.keystore.is_some(),
    };
    write_file_durably(&o.vault, MARKER_FILE, marker.render().as_bytes(), 0o644)?;

    let mut db = KeyDb::create(keystore)?;
    let detail = format!(
        "chunk_size={} longname_max={} scrypt_logn={} recovery_key={}",
        o.chunk_size, longname_max, o.kdf.log_n, o.recovery_key
    );
    let mut state = state;
    super::keystore::write_first_state(&mut db, &mut state, &k_auth, (t, "init", &detail))?;
    drop(db);

    let paths = VaultPaths {
        backing: o.vault.clone(),
        keystore: keystore.to_path_buf(),
        external_keystore: o.keystore.is_some(),
    };
    Ok(InitReport {
        paths,
        vault_id,
        recovery_key: recovery.as_ref().map(recovery_key::encode),
        backing_missing: features.missing,
        longname_max,
    })
}

/// Opens an existing vault's keystore (helper for commands and tests).
pub fn open_keystore(vault: &Path, keystore: Option<&Path>, writable: bool) -> Result<Keystore> {
    let (paths, marker) = VaultPaths::resolve(vault, keystore)?;
    Keystore::open(paths, &marker, writable)
}

/// Opens and unlocks with a password.
pub fn unlock(
    vault: &Path,
    keystore: Option<&Path>,
    writable: bool,
    password: &[u8],
) -> Result<Unlocked> {
    open_keystore(vault, keystore, writable)?.unlock_with_password(password, None)
}
