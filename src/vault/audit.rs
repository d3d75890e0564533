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

/// Reads the row's `time, event, detail` at `at..at+3` as vaultfs writes them (integer,
/// text, text), or None if a value has another type: only an edit makes one.
fn typed_entry(r: &rusqlite::Row<'_>, seq: i64, at: usize) -> rusqlite::Result<Option<AuditEntry>> {
    use rusqlite::types::ValueRef;
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Text(t) => std::str::from_utf8(t).ok().map(String::from),
            _ => None,
        })
    };
    let time = match r.get_ref(at)? {
        ValueRef::Integer(t) => t,
        _ => return Ok(None),
    };
    let (Some(event), Some(detail)) = (text(at + 1)?, text(at + 2)?) else {
        return Ok(None);
    };
    Ok(Some(AuditEntry {
        seq,
        time,
        event,
        detail,
    }))
}

/// The last `n` entries, oldest first (no key needed; not verified; an entry whose values
/// are not of vaultfs's types, which only an edit makes, shows as "(edited)").
pub fn recent(conn: &Connection, n: usize) -> Result<Vec<AuditEntry>> {
    let mut stmt = conn
        .prepare("SELECT seq, time, event, detail FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq")
        .map_err(|e| VaultError::InvalidArgument(format!("cannot read the audit log: {e}")))?;
    let rows = stmt
        .query_map([n as i64], |r| {
            let seq = r.get(0)?;
            Ok(typed_entry(r, seq, 1)?.unwrap_or(AuditEntry {
                seq,
                time: 0,
                event: "(edited)".into(),
                detail: "(a value of the wrong type)".into(),
            }))
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
            let seq: i64 = r.get(0)?;
            let mac = match r.get_ref(4)? {
                rusqlite::types::ValueRef::Blob(b) => Some(b.to_vec()),
                _ => None,
            };
            Ok((seq, typed_entry(r, seq, 1)?.zip(mac)))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| VaultError::InvalidArgument(format!("cannot read the audit log: {e}")))?;
    let mut prev = vec![0u8; MAC_LEN];
    for (i, (seq, entry)) in rows.iter().enumerate() {
        // A value of another type than vaultfs writes is an edit, like a wrong MAC.
        let Some((entry, mac)) = entry else {
            return Ok(Err(*seq));
        };
        if entry.seq != i as i64 + 1 || entry_mac(key, &prev, entry).verify(mac).is_err() {
            return Ok(Err(entry.seq));
        }
        prev = mac.clone();
    }
    Ok(Ok(rows.len()))
}
