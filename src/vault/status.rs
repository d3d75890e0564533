//! `vaultfs status`: what a vault is, read without a password. Nothing here is authenticated
//! (that needs a keyslot); `authenticated: false` says so in the JSON.

use serde::Serialize;

use super::audit::{self, AuditEntry};
use super::error::Result;
use super::keystore::Keystore;
use super::local_state;
use super::state::{GenState, SlotKind};
use crate::crypto::keyslot::KdfParams;

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub id: u32,
    pub label: String,
    pub kind: SlotKind,
    pub created: i64,
    pub kdf: Option<KdfStatus>,
    /// The auth epoch of the key this slot's secret holds: below `auth_epoch`, the slot's
    /// password (or recovery key) predates the last revocation.
    pub anchor_epoch: u32,
}

#[derive(Debug, Serialize)]
pub struct KdfStatus {
    pub name: &'static str,
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl From<KdfParams> for KdfStatus {
    fn from(k: KdfParams) -> Self {
        KdfStatus {
            name: "scrypt",
            log_n: k.log_n,
            r: k.r,
            p: k.p,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GenerationStatus {
    pub generation: u32,
    pub state: GenState,
    pub created: i64,
    pub destroyed: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct RotationStatus {
    pub from_generation: u32,
    pub to_generation: u32,
    pub reencrypt: bool,
    pub phase: String,
    pub started: i64,
    pub updated: i64,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub vault: String,
    pub keystore: String,
    pub external_keystore: bool,
    pub vault_id: String,
    pub format_version: i64,
    pub chunk_size: u32,
    /// Files store holes (`init --sparse`).
    pub sparse: bool,
    pub longname_max: u32,
    pub created: i64,
    pub epoch: u64,
    /// Epoch of the key that authenticates the key database (renewed by every revocation).
    pub auth_epoch: u32,
    /// Someone was revoked since the last `rotate --reencrypt`: they can still read what
    /// their copy of the keys opens.
    pub revoked_since_reencrypt: bool,
    /// Highest epoch this machine has seen; above `epoch` means the database was rolled back.
    pub seen_epoch: u64,
    pub default_kdf: KdfStatus,
    pub backing_missing: Vec<String>,
    pub keyslots: Vec<SlotStatus>,
    pub generations: Vec<GenerationStatus>,
    pub rotation: Option<RotationStatus>,
    pub recent_audit: Vec<AuditEntry>,
    pub authenticated: bool,
}

pub fn status(ks: &Keystore, audit_entries: usize) -> Result<Status> {
    let s = &ks.state;
    let c = &s.config;
    Ok(Status {
        vault: ks.paths.backing.display().to_string(),
        keystore: ks.paths.keystore.display().to_string(),
        external_keystore: ks.paths.external_keystore,
        vault_id: data_encoding::HEXLOWER.encode(&c.vault_id),
        format_version: c.format_version,
        chunk_size: c.chunk_size,
        sparse: c.sparse,
        longname_max: c.longname_max,
        created: c.created,
        epoch: c.epoch,
        auth_epoch: c.auth_epoch,
        revoked_since_reencrypt: c.revoked_since_reencrypt,
        seen_epoch: local_state::seen_epoch(&c.vault_id)?,
        default_kdf: c.default_kdf.into(),
        backing_missing: c
            .backing_missing
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        keyslots: s
            .slots
            .iter()
            .map(|sl| SlotStatus {
                id: sl.slot_id,
                label: sl.label.clone(),
                kind: sl.kind,
                created: sl.created,
                kdf: sl.kdf.map(Into::into),
                anchor_epoch: sl.anchor(),
            })
            .collect(),
        generations: s
            .generations
            .iter()
            .map(|g| GenerationStatus {
                generation: g.generation,
                state: g.state,
                created: g.created,
                destroyed: g.destroyed,
            })
            .collect(),
        rotation: s.rotation.as_ref().map(|r| RotationStatus {
            from_generation: r.from_generation,
            to_generation: r.to_generation,
            reencrypt: r.reencrypt,
            phase: r.phase.clone(),
            started: r.started,
            updated: r.updated,
        }),
        recent_audit: audit::recent(&ks.db.conn, audit_entries)?,
        authenticated: false,
    })
}
