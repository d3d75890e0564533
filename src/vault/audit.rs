//! The append-only audit log in the key database. Each entry's MAC chains to the previous
//! one (HMAC-SHA256 under a K_auth subkey), so an entry removed, reordered or edited by someone
//! without a keyslot shows up when the chain is verified. Triggers refuse UPDATE and DELETE.
//! Details never hold secrets or plaintext file names.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::error::{Result, VaultError};
use crate::crypto::keys::Key256;
use crate::crypto::mac::{MAC_LEN, MacBuilder};
use crate::crypto::{VaultId, labels};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub time: i64,
    pub event: String,
    pub detail: String,
}

pub fn audit_key(k_auth: &Key256, vault_id: &VaultId) -> Key256 {
    k_auth.derive(vault_id, labels::AUDIT_MAC)
}

fn entry_mac(key: &Key256, prev: &[u8], e: &AuditEntry) -> MacBuilder {
    let mut m = MacBuilder::new(key, "vaultfs v1 audit entry");
    m.bytes(prev)
        .int(e.seq)
        .int(e.time)
        .str(&e.event)
        .str(&e.detail);
    m
}

/// Appends one entry inside the caller's transaction; returns its sequence number and MAC
/// (the new head of the chain).
pub fn append(
    tx: &Transaction<'_>,
    key: &Key256,
    time: i64,
    event: &str,
    detail: &str,
) -> rusqlite::Result<(i64, Vec<u8>)> {
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, mac)) => (seq + 1, mac),
        None => (1, vec![0u8; MAC_LEN]),
    };
    let entry = AuditEntry {
        seq,
        time,
        event: event.into(),
        detail: detail.into(),
    };
    let mac = entry_mac(key, &prev, &entry).finish();
    tx.execute(
        "INSERT INTO audit (seq, time, event, detail, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![seq, time, event, detail, &mac[..]],
    )?;
    Ok((seq, mac.to_vec()))
}

/// The chain's end as stored: (number of entries, MAC of the last; empty if none).
pub fn head(conn: &Connection) -> rusqlite::Result<(i64, Vec<u8>)> {
    Ok(conn
        .query_row(
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, Vec::new())))
}

/// Checks the whole chain and, for a format-2 state, that it ends where the authenticated
/// state says: an edited, deleted, reordered or cut-off entry is an error naming what broke.
pub fn check(
    conn: &Connection,
    key: &Key256,
    config: &super::state::Config,
) -> Result<std::result::Result<(), String>> {
    match verify_chain(conn, key)? {
        Err(seq) => Ok(Err(format!(
            "its audit log's chain breaks at entry {seq} (an entry was edited, deleted or reordered)"
        ))),
        Ok(n) if config.format_version >= 2 => {
            let (count, last) = head(conn).map_err(|e| {
                VaultError::InvalidArgument(format!("cannot read the audit log: {e}"))
            })?;
            if n as i64 != config.audit_count
                || count != config.audit_count
                || last != config.audit_head
            {
                Ok(Err(format!(
                    "its audit log ends at entry {count} but the authenticated state says {}: entries were cut off or replaced",
                    config.audit_count
                )))
            } else {
                Ok(Ok(()))
            }
        }
        Ok(_) => Ok(Ok(())),
    }
}

/// The last `n` entries, oldest first (no key needed; not verified).
pub fn recent(conn: &Connection, n: usize) -> Result<Vec<AuditEntry>> {
    let mut stmt = conn
        .prepare("SELECT seq, time, event, detail FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq")
        .map_err(|e| VaultError::InvalidArgument(format!("cannot read the audit log: {e}")))?;
    let rows = stmt
        .query_map([n as i64], |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                time: r.get(1)?,
                event: r.get(2)?,
                detail: r.get(3)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| VaultError::InvalidArgument(format!("cannot read the audit log: {e}")))?;
    Ok(rows)
}

/// Verifies the whole chain; returns the number of entries, or the first bad sequence number.
pub fn verify_chain(conn: &Connection, key: &Key256) -> Result<Result<usize, i64>> {
    let mut stmt = conn
        .prepare("SELECT seq, time, event, detail, mac FROM audit ORDER BY seq")
        .map_err(|e| VaultError::InvalidArgument(format!("cannot read the audit log: {e}")))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                AuditEntry {
                    seq: r.get(0)?,
                    time: r.get(1)?,
                    event: r.get(2)?,
                    detail: r.get(3)?,
                },
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| VaultError::InvalidArgument(format!("cannot read the audit log: {e}")))?;
    let mut prev = vec![0u8; MAC_LEN];
    for (i, (entry, mac)) in rows.iter().enumerate() {
        if entry.seq != i as i64 + 1 || entry_mac(key, &prev, entry).verify(mac).is_err() {
            return Ok(Err(entry.seq));
        }
        prev = mac.clone();
    }
    Ok(Ok(rows.len()))
}
