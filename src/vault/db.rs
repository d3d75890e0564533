//! The key database file: SQLite with a versioned schema, opened with the settings SPEC
//! section 2 requires, and checked before anything in it is trusted.
//!
//! `journal_mode=DELETE` (WAL breaks on network filesystems), `synchronous=FULL`,
//! `secure_delete=ON` (destroyed keys leave no bytes behind), `application_id` marks the file
//! as a vaultfs database so a foreign SQLite file is told apart from a damaged one.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::error::{Result, VaultError};
use super::state::{
    AuthHistory, AuthLink, Config, FORMAT_VERSION, GenState, Generation, Rotation, Seal, Slot,
    SlotKind, VaultState,
};
use crate::crypto::keyslot::KdfParams;

/// "VFS1": PRAGMA application_id of every vaultfs key database.
pub const APPLICATION_ID: i32 = 0x5646_5331;
/// Schema version (PRAGMA user_version). Bump with a new entry in `MIGRATIONS`.
pub const SCHEMA_VERSION: i64 = 3;

/// Migrations: entry i brings the schema from version i to i + 1.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE config (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    vault_id         BLOB    NOT NULL,
    format_version   INTEGER NOT NULL,
    chunk_size       INTEGER NOT NULL,
    longname_max     INTEGER NOT NULL,
    kdf_log_n        INTEGER NOT NULL,
    kdf_r            INTEGER NOT NULL,
    kdf_p            INTEGER NOT NULL,
    backing_missing  TEXT    NOT NULL,
    created          INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    state_mac        BLOB    NOT NULL
);
CREATE TABLE keyslots (
    slot_id     INTEGER PRIMARY KEY,
    label       TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind IN ('password', 'recovery')),
    created     INTEGER NOT NULL,
    public_key  BLOB    NOT NULL,
    kdf_log_n   INTEGER,
    kdf_r       INTEGER,
    kdf_p       INTEGER,
    salt        BLOB,
    wrapped     BLOB    NOT NULL
);
CREATE TABLE generations (
    generation  INTEGER PRIMARY KEY,
    state       TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'destroyed')),
    created     INTEGER NOT NULL,
    destroyed   INTEGER
);
CREATE TABLE generation_seals (
    generation  INTEGER NOT NULL REFERENCES generations (generation),
    slot_id     INTEGER NOT NULL REFERENCES keyslots (slot_id),
    enc         BLOB    NOT NULL,
    sealed      BLOB    NOT NULL,
    PRIMARY KEY (generation, slot_id)
);
CREATE TABLE rotation (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    from_generation  INTEGER NOT NULL,
    to_generation    INTEGER NOT NULL,
    reencrypt        INTEGER NOT NULL,
    phase            TEXT    NOT NULL,
    cursor           TEXT,
    started          INTEGER NOT NULL,
    updated          INTEGER NOT NULL
);
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY,
    time    INTEGER NOT NULL,
    event   TEXT    NOT NULL,
    detail  TEXT    NOT NULL,
    mac     BLOB    NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    r#"
ALTER TABLE config ADD COLUMN audit_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE config ADD COLUMN audit_head BLOB NOT NULL DEFAULT x'';
ALTER TABLE config ADD COLUMN legacy_nodes INTEGER NOT NULL DEFAULT 1;
ALTER TABLE config ADD COLUMN auth_epoch INTEGER NOT NULL DEFAULT 1;
ALTER TABLE config ADD COLUMN revoked_since_reencrypt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE config ADD COLUMN next_slot_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keyslots ADD COLUMN anchor_epoch INTEGER;
CREATE TABLE auth_links (
    slot_id  INTEGER PRIMARY KEY REFERENCES keyslots (slot_id),
    enc      BLOB    NOT NULL,
    sealed   BLOB    NOT NULL
);
CREATE TABLE auth_history (
    auth_epoch  INTEGER PRIMARY KEY,
    wrapped     BLOB    NOT NULL
);
"#,
    r#"
ALTER TABLE config ADD COLUMN sparse INTEGER NOT NULL DEFAULT 0;
"#,
];

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// SQLite's own defences against a hostile database file, set before anything in it is
/// read: defensive mode (no writable_schema tricks, no direct shadow-table writes) and an
/// untrusted schema (no SQL functions with side effects from triggers or views).
fn harden(conn: &Connection, path: &Path) -> Result<()> {
    use rusqlite::config::DbConfig;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .and_then(|_| conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false))
        .map(|_| ())
        .map_err(sql_err(path))
}

/// One row of `sqlite_schema`: (type, name, tbl_name, sql).
type SchemaObject = (String, String, String, Option<String>);

/// Every table, index, trigger and view, as SQLite stores them.
fn schema_of(conn: &Connection) -> rusqlite::Result<Vec<SchemaObject>> {
    conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect()
}

/// Refuses a database whose schema is not exactly what the migrations up to `version` make:
/// a planted trigger (e.g. one that rewrites rows as they are read back), view, table, index
/// or extra column is never run or trusted.
fn check_schema(conn: &Connection, path: &Path, version: i64) -> Result<()> {
    let expected = {
        let mem = Connection::open_in_memory().map_err(sql_err(path))?;
        for step in MIGRATIONS.iter().take(version as usize) {
            mem.execute_batch(step).map_err(sql_err(path))?;
        }
        schema_of(&mem).map_err(sql_err(path))?
    };
    let found = schema_of(conn).map_err(sql_err(path))?;
    if let Some(extra) = found.iter().find(|o| !expected.contains(o)) {
        return Err(VaultError::refused(
            path,
            format!(
                "its schema has an unexpected {} '{}' (planted, or changed by hand)",
                extra.0, extra.1
            ),
        ));
    }
    if let Some(missing) = expected.iter().find(|o| !found.contains(o)) {
        return Err(VaultError::refused(
            path,
            format!("its schema lacks the {} '{}'", missing.0, missing.1),
        ));
    }
    Ok(())
}

/// An open key database.
pub struct KeyDb {
    pub conn: Connection,
    pub path: PathBuf,
    /// `user_version` as opened (a read-only open leaves an older schema as it is).
    pub schema_version: i64,
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> VaultError + '_ {
    move |e| VaultError::refused(path, format!("SQLite error: {e}"))
}

/// Refuses a database that a sync service has forked: a sibling whose name starts with the
/// database's stem and mentions a conflict (Dropbox, Nextcloud, Syncthing, Resilio styles).
fn check_sync_conflicts(path: &Path) -> Result<()> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_lowercase();
        if name.starts_with(&stem.to_lowercase()) && name.contains("conflict") {
            return Err(VaultError::SyncConflict {
                path: path.into(),
                conflict: entry.path(),
            });
        }
    }
    Ok(())
}

impl KeyDb {
    /// Creates a new database at `path` (which must not exist) with the current schema.
    pub fn create(path: &Path) -> Result<KeyDb> {
        if path.exists() {
            return Err(VaultError::AlreadyExists(format!(
                "key database {} already exists",
                path.display()
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sql_err(path))?;
        harden(&conn, path)?;
        // Owner-only: the slots are scrypt-protected, but nobody else needs to read them.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            VaultError::io(format!("cannot set permissions of {}", path.display())),
        )?;
        let mut db = KeyDb {
            conn,
            path: path.to_path_buf(),
            schema_version: SCHEMA_VERSION,
        };
        db.apply_pragmas(true)?;
        db.conn
            .pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(sql_err(path))?;
        db.migrate(0)?;
        Ok(db)
    }

    /// Opens an existing database, read-only unless `writable`, and checks that it is a
    /// sound vaultfs key database of a version this build understands.
    pub fn open(path: &Path, writable: bool) -> Result<KeyDb> {
        check_sync_conflicts(path)?;
        let mut head = [0u8; 16];
        match std::fs::File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaultError::KeystoreMissing(path.into()));
            }
            Err(e) => {
                return Err(VaultError::io(format!(
                    "cannot open key database {}",
                    path.display()
                ))(e));
            }
            Ok(mut f) => {
                use std::io::Read;
                let n = f
                    .read(&mut head)
                    .map_err(VaultError::io(format!("cannot read {}", path.display())))?;
                if n < head.len() || &head != SQLITE_MAGIC {
                    return Err(VaultError::refused(
                        path,
                        "not a SQLite database (truncated, zeroed or another kind of file)",
                    ));
                }
            }
        }
        // A hot journal (a write interrupted by a crash) must be rolled back before a
        // read-only open can read the database: do that with a short read-write open.
        let journal = path.with_file_name(format!(
            "{}-journal",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("")
        ));
        if !writable && std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) {
            let rw = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| {
                VaultError::refused(
                    path,
                    format!(
                        "an interrupted write needs rolling back, which needs write access ({e})"
                    ),
                )
            })?;
            harden(&rw, path)?;
            rw.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
                .map_err(|e| {
                    VaultError::refused(
                        path,
                        format!("cannot roll back an interrupted write ({e})"),
                    )
                })?;
        }
        let flags = if writable {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(path, flags).map_err(sql_err(path))?;
        harden(&conn, path)?;
        let mut db = KeyDb {
            conn,
            path: path.to_path_buf(),
            schema_version: 0,
        };
        let check: String = db
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| VaultError::refused(path, format!("damaged database ({e})")))?;
        if check != "ok" {
            return Err(VaultError::refused(
                path,
                format!("damaged database ({check})"),
            ));
        }
        let app_id: i32 = db.pragma_i64("application_id")? as i32;
        if app_id != APPLICATION_ID {
            return Err(VaultError::refused(
                path,
                "a SQLite database that is not a vaultfs key database",
            ));
        }
        let version = db.pragma_i64("user_version")?;
        if version > SCHEMA_VERSION {
            return Err(VaultError::NewerFormat {
                what: format!("key database {} (schema)", path.display()),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            return Err(VaultError::refused(
                path,
                "schema version 0: not an initialized vaultfs key database",
            ));
        }
        check_schema(&db.conn, path, version)?;
        db.apply_pragmas(writable)?;
        db.schema_version = version;
        // An older schema is read as it is (mount, status); the first writable open
        // migrates it.
        if version < SCHEMA_VERSION && writable {
            db.migrate(version)?;
            db.schema_version = SCHEMA_VERSION;
        }
        Ok(db)
    }

    fn pragma_i64(&self, name: &str) -> Result<i64> {
        self.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .map_err(sql_err(&self.path))
    }

    fn apply_pragmas(&mut self, writable: bool) -> Result<()> {
        let p = self.path.clone();
        if writable {
            let mode: String = self
                .conn
                .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
                .map_err(sql_err(&p))?;
            if !mode.eq_ignore_ascii_case("delete") {
                return Err(VaultError::refused(
                    &p,
                    format!("cannot set journal_mode=DELETE (got {mode})"),
                ));
            }
            self.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(sql_err(&p))?;
            self.conn
                .pragma_update(None, "secure_delete", "ON")
                .map_err(sql_err(&p))?;
        }
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(sql_err(&p))?;
        Ok(())
    }

    fn migrate(&mut self, from: i64) -> Result<()> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sql_err(&p))?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            tx.execute_batch(step).map_err(sql_err(&p))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(sql_err(&p))?;
        }
        tx.commit().map_err(sql_err(&p))
    }

    /// Reads the whole state and its stored MAC. Checks types and ranges, not authenticity.
    pub fn load_state(&self) -> Result<(VaultState, Vec<u8>)> {
        let p = &self.path;
        let bad = |what: &str| VaultError::refused(p, format!("invalid {what}"));
        // Schema 1 has no audit columns: read them as a format-1 state has them (none).
        let audit_cols = if self.schema_version >= 2 {
            "audit_count, audit_head, legacy_nodes, auth_epoch, revoked_since_reencrypt, next_slot_id"
        } else {
            "0, x'', 1, 1, 0, 0"
        };
        // Schema 2 has no `sparse` column: those vaults store no holes.
        let sparse_col = if self.schema_version >= 3 {
            "sparse"
        } else {
            "0"
        };
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT vault_id, format_version, chunk_size, longname_max, kdf_log_n, kdf_r, kdf_p,
                            backing_missing, created, epoch, state_mac, {audit_cols}, {sparse_col}
                     FROM config WHERE id = 1"
                ),
                [],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        (r.get::<_, i64>(4)?, r.get::<_, i64>(5)?, r.get::<_, i64>(6)?),
                        r.get::<_, String>(7)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, i64>(9)?,
                        r.get::<_, Vec<u8>>(10)?,
                        (
                            r.get::<_, i64>(11)?,
                            r.get::<_, Vec<u8>>(12)?,
                            r.get::<_, i64>(13)?,
                            r.get::<_, i64>(14)?,
                            r.get::<_, i64>(15)?,
                            r.get::<_, i64>(16)?,
                        ),
                        r.get::<_, i64>(17)?,
                    ))
                },
            )
            .optional()
            .map_err(sql_err(p))?
            .ok_or_else(|| VaultError::refused(p, "no configuration row"))?;
        let (
            vault_id,
            format_version,
            chunk_size,
            longname_max,
            kdf,
            backing_missing,
            created,
            epoch,
            mac,
            (audit_count, audit_head, legacy_nodes, auth_epoch, revoked, next_slot_id),
            sparse,
        ) = row;
        if format_version > FORMAT_VERSION {
            return Err(VaultError::NewerFormat {
                what: format!("vault of key database {}", p.display()),
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        if format_version < 1 {
            return Err(bad("format version"));
        }
        let config = Config {
            vault_id: vault_id.try_into().map_err(|_| bad("vault ID"))?,
            format_version,
            chunk_size: u32::try_from(chunk_size)
                .ok()
                .filter(|&c| crate::crypto::chunk::ChunkLayout::new(c).is_ok())
                .ok_or_else(|| bad("chunk size (must be a power of two from 4096 to 1048576)"))?,
            longname_max: u32::try_from(longname_max)
                .ok()
                .filter(|&l| (62..=255).contains(&l))
                .ok_or_else(|| bad("long-name threshold (must be 62-255)"))?,
            default_kdf: kdf_params(kdf)
                .ok_or_else(|| bad("default scrypt parameters (logN 10-22, r 1-32, p 1-16)"))?,
            backing_missing,
            created,
            epoch: u64::try_from(epoch).map_err(|_| bad("epoch"))?,
            audit_count: Some(audit_count)
                .filter(|&n| n >= 0)
                .ok_or_else(|| bad("audit count"))?,
            audit_head: Some(audit_head)
                .filter(|h| h.is_empty() || h.len() == crate::crypto::mac::MAC_LEN)
                .ok_or_else(|| bad("audit head"))?,
            legacy_nodes: match legacy_nodes {
                0 => false,
                1 => true,
                _ => return Err(bad("legacy_nodes")),
            },
            auth_epoch: u32::try_from(auth_epoch)
                .ok()
                .filter(|&a| a > 0)
                .ok_or_else(|| bad("auth epoch"))?,
            revoked_since_reencrypt: match revoked {
                0 => false,
                1 => true,
                _ => return Err(bad("revoked_since_reencrypt")),
            },
            next_slot_id: u32::try_from(next_slot_id).map_err(|_| bad("next slot ID"))?,
            sparse: match sparse {
                0 => false,
                1 if format_version >= 2 => true,
                _ => return Err(bad("sparse")),
            },
        };

        let mut stmt = self
            .conn
            .prepare(
                &format!(
                    "SELECT slot_id, label, kind, created, public_key, kdf_log_n, kdf_r, kdf_p, salt, wrapped, {}
                     FROM keyslots ORDER BY slot_id",
                    if self.schema_version >= 2 { "anchor_epoch" } else { "NULL" }
                ),
            )
            .map_err(sql_err(p))?;
        type SlotRow = (
            i64,
            String,
            String,
            i64,
            Vec<u8>,
            Option<(i64, i64, i64)>,
            Option<Vec<u8>>,
            Vec<u8>,
            Option<i64>,
        );
        let rows: Vec<SlotRow> = stmt
            .query_map([], |r| {
                let kdf = match (
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ) {
                    (Some(a), Some(b), Some(c)) => Some((a, b, c)),
                    _ => None,
                };
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    kdf,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })
            .map_err(sql_err(p))?
            .collect::<Result<_, _>>()
            .map_err(sql_err(p))?;
        let mut slots = Vec::new();
        for (slot_id, label, kind, created, public_key, kdf, salt, wrapped, anchor) in rows {
            let kind = SlotKind::parse(&kind).ok_or_else(|| bad("keyslot kind"))?;
            let kdf = match kdf {
                Some(k) => Some(kdf_params(k).ok_or_else(|| {
                    bad(&format!(
                        "scrypt parameters of keyslot '{label}' (logN 10-22, r 1-32, p 1-16)"
                    ))
                })?),
                None => None,
            };
            let salt = match salt {
                Some(s) => Some(<[u8; 32]>::try_from(s).map_err(|_| bad("keyslot salt"))?),
                None => None,
            };
            if kind == SlotKind::Password && (kdf.is_none() || salt.is_none()) {
                return Err(bad(&format!(
                    "password keyslot '{label}' without scrypt parameters"
                )));
            }
            slots.push(Slot {
                slot_id: u32::try_from(slot_id).map_err(|_| bad("keyslot ID"))?,
                label,
                kind,
                created,
                public_key: public_key
                    .try_into()
                    .map_err(|_| bad("keyslot public key"))?,
                kdf,
                salt,
                wrapped,
                anchor_epoch: anchor
                    .map(|a| u32::try_from(a).ok().filter(|&a| a > 0))
                    .map(|a| a.ok_or_else(|| bad("keyslot anchor epoch")))
                    .transpose()?,
            });
        }

        let mut stmt = self
            .conn
            .prepare(
                "SELECT generation, state, created, destroyed FROM generations ORDER BY generation",
            )
            .map_err(sql_err(p))?;
        let rows: Vec<(i64, String, i64, Option<i64>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(sql_err(p))?
            .collect::<Result<_, _>>()
            .map_err(sql_err(p))?;
        let mut generations = Vec::new();
        for (generation, state, created, destroyed) in rows {
            generations.push(Generation {
                generation: u32::try_from(generation)
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or_else(|| bad("generation number"))?,
                state: GenState::parse(&state).ok_or_else(|| bad("generation state"))?,
                created,
                destroyed,
            });
        }

        let mut stmt = self
            .conn
            .prepare("SELECT generation, slot_id, enc, sealed FROM generation_seals ORDER BY generation, slot_id")
            .map_err(sql_err(p))?;
        let rows: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(sql_err(p))?
            .collect::<Result<_, _>>()
            .map_err(sql_err(p))?;
        let seals = rows
            .into_iter()
            .map(|(g, s, enc, sealed)| {
                Ok(Seal {
                    generation: u32::try_from(g).map_err(|_| bad("seal generation"))?,
                    slot_id: u32::try_from(s).map_err(|_| bad("seal slot"))?,
                    enc,
                    sealed,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let rotation = self
            .conn
            .query_row(
                "SELECT from_generation, to_generation, reencrypt, phase, cursor, started, updated FROM rotation WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(sql_err(p))?
            .map(|(from, to, re, phase, cursor, started, updated)| {
                Ok::<_, VaultError>(Rotation {
                    from_generation: u32::try_from(from).map_err(|_| bad("rotation"))?,
                    to_generation: u32::try_from(to).map_err(|_| bad("rotation"))?,
                    reencrypt: re != 0,
                    phase,
                    cursor,
                    started,
                    updated,
                })
            })
            .transpose()?;

        let (auth_links, auth_history) = if self.schema_version >= 2 {
            self.load_auth()?
        } else {
            (Vec::new(), Vec::new())
        };
        let state = VaultState {
            config,
            slots,
            generations,
            seals,
            rotation,
            auth_links,
            auth_history,
        };
        state
            .check_structure()
            .map_err(|why| VaultError::refused(p, why))?;
        Ok((state, mac))
    }

    /// The auth links and history (schema 2).
    fn load_auth(&self) -> Result<(Vec<AuthLink>, Vec<AuthHistory>)> {
        let p = &self.path;
        let bad = |what: &str| VaultError::refused(p, format!("invalid {what}"));
        let links: Vec<(i64, Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare("SELECT slot_id, enc, sealed FROM auth_links ORDER BY slot_id")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(sql_err(p))?;
        let history: Vec<(i64, Vec<u8>)> = self
            .conn
            .prepare("SELECT auth_epoch, wrapped FROM auth_history ORDER BY auth_epoch")
            .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(sql_err(p))?;
        let links = links
            .into_iter()
            .map(|(slot, enc, sealed)| {
                Ok(AuthLink {
                    slot_id: u32::try_from(slot).map_err(|_| bad("auth link"))?,
                    enc,
                    sealed,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let history = history
            .into_iter()
            .map(|(epoch, wrapped)| {
                Ok(AuthHistory {
                    auth_epoch: u32::try_from(epoch).map_err(|_| bad("auth history"))?,
                    wrapped,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((links, history))
    }

    /// Replaces the stored state with `state` and its MAC, in one transaction.
    pub fn save_state(
        tx: &Transaction<'_>,
        path: &Path,
        state: &VaultState,
        mac: &[u8],
    ) -> Result<()> {
        let e = sql_err(path);
        let c = &state.config;
        tx.execute("DELETE FROM auth_links", []).map_err(&e)?;
        tx.execute("DELETE FROM auth_history", []).map_err(&e)?;
        tx.execute("DELETE FROM generation_seals", []).map_err(&e)?;
        tx.execute("DELETE FROM rotation", []).map_err(&e)?;
        tx.execute("DELETE FROM generations", []).map_err(&e)?;
        tx.execute("DELETE FROM keyslots", []).map_err(&e)?;
        tx.execute("DELETE FROM config", []).map_err(&e)?;
        tx.execute(
            "INSERT INTO config (id, vault_id, format_version, chunk_size, longname_max, kdf_log_n, kdf_r, kdf_p,
                                 backing_missing, created, epoch, state_mac, audit_count, audit_head,
                                 legacy_nodes, auth_epoch, revoked_since_reencrypt, next_slot_id, sparse)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            params![
                &c.vault_id[..],
                c.format_version,
                c.chunk_size,
                c.longname_max,
                c.default_kdf.log_n,
                c.default_kdf.r,
                c.default_kdf.p,
                c.backing_missing,
                c.created,
                c.epoch as i64,
                mac,
                c.audit_count,
                c.audit_head,
                c.legacy_nodes,
                c.auth_epoch,
                c.revoked_since_reencrypt,
                c.next_slot_id,
                c.sparse
            ],
        )
        .map_err(&e)?;
        for s in &state.slots {
            tx.execute(
                "INSERT INTO keyslots (slot_id, label, kind, created, public_key, kdf_log_n, kdf_r, kdf_p, salt, wrapped, anchor_epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    s.slot_id,
                    s.label,
                    s.kind.as_str(),
                    s.created,
                    &s.public_key[..],
                    s.kdf.map(|k| k.log_n),
                    s.kdf.map(|k| k.r),
                    s.kdf.map(|k| k.p),
                    s.salt.as_ref().map(|s| &s[..]),
                    s.wrapped,
                    s.anchor_epoch
                ],
            )
            .map_err(&e)?;
        }
        for g in &state.generations {
            tx.execute(
                "INSERT INTO generations (generation, state, created, destroyed) VALUES (?1, ?2, ?3, ?4)",
                params![g.generation, g.state.as_str(), g.created, g.destroyed],
            )
            .map_err(&e)?;
        }
        for s in &state.seals {
            tx.execute(
                "INSERT INTO generation_seals (generation, slot_id, enc, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![s.generation, s.slot_id, s.enc, s.sealed],
            )
            .map_err(&e)?;
        }
        for l in &state.auth_links {
            tx.execute(
                "INSERT INTO auth_links (slot_id, enc, sealed) VALUES (?1, ?2, ?3)",
                params![l.slot_id, l.enc, l.sealed],
            )
            .map_err(&e)?;
        }
        for h in &state.auth_history {
            tx.execute(
                "INSERT INTO auth_history (auth_epoch, wrapped) VALUES (?1, ?2)",
                params![h.auth_epoch, h.wrapped],
            )
            .map_err(&e)?;
        }
        if let Some(r) = &state.rotation {
            tx.execute(
                "INSERT INTO rotation (id, from_generation, to_generation, reencrypt, phase, cursor, started, updated)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![r.from_generation, r.to_generation, r.reencrypt, r.phase, r.cursor, r.started, r.updated],
            )
            .map_err(&e)?;
        }
        Ok(())
    }
}

fn kdf_params((log_n, r, p): (i64, i64, i64)) -> Option<KdfParams> {
    let k = KdfParams {
        log_n: u8::try_from(log_n).ok()?,
        r: u32::try_from(r).ok()?,
        p: u32::try_from(p).ok()?,
    };
    k.validate().ok().map(|_| k)
}
