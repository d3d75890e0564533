//! The authenticated state of a vault's key database, in memory: configuration, keyslots,
//! generations, their seals, and rotation progress. The whole state is MAC'ed under a K_auth
//! subkey (`state_mac`), so a writer of the database who holds no keyslot can change nothing
//! (not even delete a row) without unlocking failing.

use serde::Serialize;

use crate::crypto::keys::Key256;
use crate::crypto::keyslot::KdfParams;
use crate::crypto::mac::{MAC_LEN, MacBuilder};
use crate::crypto::{CryptoError, VaultId, labels};

/// Current on-disk format version of the vault (marker, `config.format_version`). Format 2
/// adds version-2 file headers (the HOLES flag, docs/FORMAT.md section 5); format 3 adds
/// xattrs stored by their whole name (`trusted.*`, `security.*`, section 7), which a format-2
/// reader would skip and a format-2 rotation would leave behind under a destroyed
/// generation. An older vault is read as it is and upgraded when this build first writes
/// to it.
pub const FORMAT_VERSION: i64 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub vault_id: VaultId,
    pub format_version: i64,
    pub chunk_size: u32,
    pub longname_max: u32,
    /// scrypt parameters for new password slots.
    pub default_kdf: KdfParams,
    /// Comma-separated features the backing filesystem lacked at init (empty: none).
    pub backing_missing: String,
    pub created: i64,
    /// Incremented by every write; compared with the highest epoch seen on this machine.
    pub epoch: u64,
    /// Format 2: the number of audit entries and the MAC of the last one (empty if none), so
    /// the state MAC fixes the audit log's end: a cut tail no longer goes unnoticed.
    pub audit_count: i64,
    pub audit_head: Vec<u8>,
    /// Format 2: the vault may hold FIFOs, sockets and device nodes as format 1 made them
    /// (backing nodes of that type, unauthenticated). False for vaults made by format 2,
    /// where a backing node of such a type is refused as planted.
    pub legacy_nodes: bool,
    /// Format 2: the epoch of the current K_auth (1 at `init`); every revoking command
    /// (passwd, keyslot remove, recover, a new recovery key) makes a new K_auth and adds 1.
    pub auth_epoch: u32,
    /// Format 2: K_auth was renewed (someone revoked) since the last `rotate --reencrypt`
    /// finished: until one does, the revoked party can still read what it could.
    pub revoked_since_reencrypt: bool,
    /// Format 2: the lowest slot ID a new slot may take (IDs are never reused, so audit
    /// entries that name a slot stay unambiguous).
    pub next_slot_id: u32,
    /// Schema 3 (`init --sparse`): files may store holes. A file's first hole sets the
    /// HOLES flag in its header, and from then on an all-zero chunk of it reads as zeros,
    /// unauthenticated. Without it, truncate, fallocate, punch and writes past the end store
    /// sealed zeros, and every all-zero chunk of a format-2 file is damage.
    pub sparse: bool,
}

impl Config {
    /// The configuration of a key database this build creates (`init`, a rebuilt keystore):
    /// the current format, no audit entries yet, the first K_auth, no revocation, and FIFOs,
    /// sockets and devices only in header-only files.
    pub fn new_database(
        vault_id: VaultId,
        chunk_size: u32,
        longname_max: u32,
        default_kdf: KdfParams,
        backing_missing: String,
        created: i64,
        epoch: u64,
    ) -> Config {
        Config {
            vault_id,
            format_version: FORMAT_VERSION,
            chunk_size,
            longname_max,
            default_kdf,
            backing_missing,
            created,
            epoch,
            audit_count: 0,
            audit_head: Vec::new(),
            legacy_nodes: false,
            auth_epoch: 1,
            revoked_since_reencrypt: false,
            next_slot_id: 0,
            sparse: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    Password,
    Recovery,
}

impl SlotKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SlotKind::Password => "password",
            SlotKind::Recovery => "recovery",
        }
    }

    pub fn parse(s: &str) -> Option<SlotKind> {
        match s {
            "password" => Some(SlotKind::Password),
            "recovery" => Some(SlotKind::Recovery),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub slot_id: u32,
    pub label: String,
    pub kind: SlotKind,
    pub created: i64,
    pub public_key: [u8; 32],
    /// Password slots only.
    pub kdf: Option<KdfParams>,
    pub salt: Option<[u8; 32]>,
    pub wrapped: Vec<u8>,
    /// Format 2: the auth epoch of the K_auth this slot's blob holds (None: 1, a blob made by
    /// format 1). Below `auth_epoch`, the slot reaches the current K_auth through its link.
    pub anchor_epoch: Option<u32>,
}

impl Slot {
    pub fn anchor(&self) -> u32 {
        self.anchor_epoch.unwrap_or(1)
    }
}

/// The current K_auth HPKE-sealed to a slot anchored at an older auth epoch (mode_psk, psk
/// from the slot's anchor K_auth): opening it needs the slot's private key and its anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLink {
    pub slot_id: u32,
    pub enc: Vec<u8>,
    pub sealed: Vec<u8>,
}

/// An older K_auth, wrapped under the current one (for links to slots anchored there, the
/// audit key, and this machine's record of the auth epoch it saw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHistory {
    pub auth_epoch: u32,
    pub wrapped: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GenState {
    /// The generation all new writes use. Exactly one.
    Active,
    /// The previous generation during a rotation: still read, never written. At most one.
    Retiring,
    /// Key erased; its seals are deleted.
    Destroyed,
}

impl GenState {
    pub fn as_str(&self) -> &'static str {
        match self {
            GenState::Active => "active",
            GenState::Retiring => "retiring",
            GenState::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<GenState> {
        match s {
            "active" => Some(GenState::Active),
            "retiring" => Some(GenState::Retiring),
            "destroyed" => Some(GenState::Destroyed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub generation: u32,
    pub state: GenState,
    pub created: i64,
    pub destroyed: Option<i64>,
}

/// A generation's master key sealed (HPKE) to one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub generation: u32,
    pub slot_id: u32,
    pub enc: Vec<u8>,
    pub sealed: Vec<u8>,
}

/// Progress of a master-key rotation (written by `vaultfs rotate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub from_generation: u32,
    pub to_generation: u32,
    pub reencrypt: bool,
    pub phase: String,
    pub cursor: Option<String>,
    pub started: i64,
    pub updated: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultState {
    pub config: Config,
    pub slots: Vec<Slot>,
    pub generations: Vec<Generation>,
    pub seals: Vec<Seal>,
    pub rotation: Option<Rotation>,
    pub auth_links: Vec<AuthLink>,
    pub auth_history: Vec<AuthHistory>,
}

impl VaultState {
    /// The MAC key for this vault's state.
    pub fn mac_key(k_auth: &Key256, vault_id: &VaultId) -> Key256 {
        k_auth.derive(vault_id, labels::DB_MAC)
    }

    fn mac_builder(&self, key: &Key256) -> MacBuilder {
        let mut m = MacBuilder::new(key, "vaultfs v1 key database state");
        let c = &self.config;
        m.bytes(&c.vault_id)
            .int(c.format_version)
            .int(c.chunk_size.into())
            .int(c.longname_max.into())
            .int(c.default_kdf.log_n.into())
            .int(c.default_kdf.r.into())
            .int(c.default_kdf.p.into())
            .str(&c.backing_missing)
            .int(c.created)
            .int(c.epoch as i64);
        if c.format_version >= 2 {
            m.int(c.audit_count)
                .bytes(&c.audit_head)
                .int(c.legacy_nodes as i64)
                .int(c.auth_epoch.into())
                .int(c.revoked_since_reencrypt as i64)
                .int(c.next_slot_id.into());
            // Added with schema 3, and only when set, so the MACs of existing format-2
            // vaults stay as they were (a typed field: no other field can take its place).
            if c.sparse {
                m.str("sparse");
            }
        }
        let mut slots: Vec<&Slot> = self.slots.iter().collect();
        slots.sort_by_key(|s| s.slot_id);
        m.int(slots.len() as i64);
        for s in slots {
            m.int(s.slot_id.into())
                .str(&s.label)
                .str(s.kind.as_str())
                .int(s.created)
                .bytes(&s.public_key);
            match s.kdf {
                Some(k) => m.int(k.log_n.into()).int(k.r.into()).int(k.p.into()),
                None => m.opt_bytes(None),
            };
            m.opt_bytes(s.salt.as_ref().map(|s| &s[..]))
                .bytes(&s.wrapped);
            if c.format_version >= 2 {
                m.int(s.anchor().into());
            }
        }
        let mut gens: Vec<&Generation> = self.generations.iter().collect();
        gens.sort_by_key(|g| g.generation);
        m.int(gens.len() as i64);
        for g in gens {
            m.int(g.generation.into())
                .str(g.state.as_str())
                .int(g.created)
                .int(g.destroyed.unwrap_or(-1));
        }
        let mut seals: Vec<&Seal> = self.seals.iter().collect();
        seals.sort_by_key(|s| (s.generation, s.slot_id));
        m.int(seals.len() as i64);
        for s in seals {
            m.int(s.generation.into())
                .int(s.slot_id.into())
                .bytes(&s.enc)
                .bytes(&s.sealed);
        }
        match &self.rotation {
            None => m.opt_bytes(None),
            Some(r) => m
                .int(r.from_generation.into())
                .int(r.to_generation.into())
                .int(r.reencrypt as i64)
                .str(&r.phase)
                .opt_bytes(r.cursor.as_deref().map(str::as_bytes))
                .int(r.started)
                .int(r.updated),
        };
        if c.format_version >= 2 {
            let mut links: Vec<&AuthLink> = self.auth_links.iter().collect();
            links.sort_by_key(|l| l.slot_id);
            m.int(links.len() as i64);
            for l in links {
                m.int(l.slot_id.into()).bytes(&l.enc).bytes(&l.sealed);
            }
            let mut history: Vec<&AuthHistory> = self.auth_history.iter().collect();
            history.sort_by_key(|h| h.auth_epoch);
            m.int(history.len() as i64);
            for h in history {
                m.int(h.auth_epoch.into()).bytes(&h.wrapped);
            }
        }
        m
    }

    pub fn compute_mac(&self, key: &Key256) -> [u8; MAC_LEN] {
        self.mac_builder(key).finish()
    }

    pub fn verify_mac(&self, key: &Key256, mac: &[u8]) -> Result<(), CryptoError> {
        self.mac_builder(key).verify(mac)
    }

    pub fn slot(&self, slot_id: u32) -> Option<&Slot> {
        self.slots.iter().find(|s| s.slot_id == slot_id)
    }

    pub fn seal(&self, generation: u32, slot_id: u32) -> Option<&Seal> {
        self.seals
            .iter()
            .find(|s| s.generation == generation && s.slot_id == slot_id)
    }

    pub fn active_generation(&self) -> Option<&Generation> {
        self.generations
            .iter()
            .find(|g| g.state == GenState::Active)
    }

    pub fn retiring_generation(&self) -> Option<&Generation> {
        self.generations
            .iter()
            .find(|g| g.state == GenState::Retiring)
    }

    pub fn next_slot_id(&self) -> u32 {
        let after_max = self.slots.iter().map(|s| s.slot_id).max().unwrap_or(0) + 1;
        after_max.max(self.config.next_slot_id)
    }

    /// Structural checks that need no key: one active generation, at most one retiring,
    /// seals only for existing slots and live generations.
    pub fn check_structure(&self) -> Result<(), String> {
        let active = self
            .generations
            .iter()
            .filter(|g| g.state == GenState::Active)
            .count();
        let retiring = self
            .generations
            .iter()
            .filter(|g| g.state == GenState::Retiring)
            .count();
        if active != 1 {
            return Err(format!("{active} active key generations (expected 1)"));
        }
        if retiring > 1 {
            return Err(format!(
                "{retiring} retiring key generations (expected at most 1)"
            ));
        }
        for s in &self.seals {
            let live = self
                .generations
                .iter()
                .any(|g| g.generation == s.generation && g.state != GenState::Destroyed);
            if !live || self.slot(s.slot_id).is_none() {
                return Err(format!(
                    "a seal of generation {} to slot {} has no owner",
                    s.generation, s.slot_id
                ));
            }
        }
        if !self.slots.iter().any(|s| s.kind == SlotKind::Password) {
            return Err("no password keyslot".into());
        }
        // K_auth epochs: every slot anchored at or below the current epoch, exactly the
        // slots anchored below it linked, one history entry for each older epoch.
        let a = self.config.auth_epoch;
        if a == 0 {
            return Err("auth epoch 0".into());
        }
        for slot in &self.slots {
            let linked = self
                .auth_links
                .iter()
                .filter(|l| l.slot_id == slot.slot_id)
                .count();
            if slot.anchor() > a || slot.anchor() == 0 {
                return Err(format!(
                    "keyslot {} is anchored above the auth epoch",
                    slot.slot_id
                ));
            }
            if linked != usize::from(slot.anchor() < a) {
                return Err(format!("keyslot {} has {linked} auth links", slot.slot_id));
            }
        }
        if self
            .auth_links
            .iter()
            .any(|l| self.slot(l.slot_id).is_none())
        {
            return Err("an auth link has no keyslot".into());
        }
        let mut epochs: Vec<u32> = self.auth_history.iter().map(|h| h.auth_epoch).collect();
        epochs.sort_unstable();
        if epochs != (1..a).collect::<Vec<_>>() {
            return Err("the auth history does not cover every older auth epoch".into());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_state() -> VaultState {
        VaultState {
            config: Config {
                vault_id: [1; 16],
                format_version: FORMAT_VERSION,
                chunk_size: 4096,
                longname_max: 255,
                default_kdf: KdfParams {
                    log_n: 10,
                    r: 8,
                    p: 1,
                },
                backing_missing: String::new(),
                created: 1_700_000_000,
                epoch: 1,
                audit_count: 0,
                audit_head: Vec::new(),
                legacy_nodes: false,
                auth_epoch: 1,
                revoked_since_reencrypt: false,
                next_slot_id: 2,
                sparse: false,
            },
            slots: vec![Slot {
                slot_id: 1,
                label: "default".into(),
                kind: SlotKind::Password,
                created: 1_700_000_000,
                public_key: [2; 32],
                kdf: Some(KdfParams {
                    log_n: 10,
                    r: 8,
                    p: 1,
                }),
                salt: Some([3; 32]),
                wrapped: vec![4; 80],
                anchor_epoch: Some(1),
            }],
            generations: vec![Generation {
                generation: 1,
                state: GenState::Active,
                created: 1_700_000_000,
                destroyed: None,
            }],
            seals: vec![Seal {
                generation: 1,
                slot_id: 1,
                enc: vec![5; 32],
                sealed: vec![6; 48],
            }],
            rotation: None,
            auth_links: Vec::new(),
            auth_history: Vec::new(),
        }
    }

    #[test]
    fn any_change_breaks_the_mac() {
        let key = Key256::random().unwrap();
        let s = sample_state();
        let mac = s.compute_mac(&key);
        assert!(s.verify_mac(&key, &mac).is_ok());
        let mut changes: Vec<VaultState> = Vec::new();
        let mut c = s.clone();
        c.config.chunk_size = 65536;
        changes.push(c);
        let mut c = s.clone();
        c.config.epoch = 2;
        changes.push(c);
        let mut c = s.clone();
        c.config.default_kdf.log_n = 11;
        changes.push(c);
        let mut c = s.clone();
        c.slots[0].label = "other".into();
        changes.push(c);
        let mut c = s.clone();
        c.slots[0].kdf = Some(KdfParams {
            log_n: 22,
            r: 8,
            p: 1,
        });
        changes.push(c);
        let mut c = s.clone();
        c.generations[0].state = GenState::Retiring;
        changes.push(c);
        let mut c = s.clone();
        c.seals.clear();
        changes.push(c);
        let mut c = s.clone();
        c.seals[0].sealed[0] ^= 1;
        changes.push(c);
        let mut c = s.clone();
        c.rotation = Some(Rotation {
            from_generation: 1,
            to_generation: 2,
            reencrypt: false,
            phase: "rewrap".into(),
            cursor: None,
            started: 0,
            updated: 0,
        });
        changes.push(c);
        for (i, changed) in changes.iter().enumerate() {
            assert!(changed.verify_mac(&key, &mac).is_err(), "change {i}");
        }
        assert!(s.check_structure().is_ok());
    }
}
