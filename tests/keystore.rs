//! The key database under attack and damage: every case is refused with a clear error (never
//! a panic, never an unlock with wrong keys), and the good paths work.

mod common;

use std::fs;
use std::path::Path;

use common::{PASSWORD, fast_options, isolate_state, new_vault};
use rusqlite::Connection;
use vaultfs::crypto::recovery_key;
use vaultfs::exitcodes;
use vaultfs::vault::audit;
use vaultfs::vault::init::{init, open_keystore, unlock};
use vaultfs::vault::{VaultError, local_state};

fn sql(vault: &Path, stmt: &str) {
    let c = Connection::open(vault.join("vaultfs.db")).unwrap();
    c.execute_batch(stmt).unwrap();
}

fn err(r: Result<impl Sized, VaultError>) -> VaultError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn right_and_wrong_passwords() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, report) = new_vault(tmp.path(), "v");
    let u = unlock(&vault, None, false, PASSWORD).unwrap();
    assert_eq!(u.keyring.active().generation, 1);
    assert_eq!(u.keyring.vault_id, report.vault_id);
    assert_eq!(u.slot_id, 1);
    let e = err(unlock(&vault, None, false, b"wrong"));
    assert!(matches!(e, VaultError::WrongPassword), "{e}");
    assert_eq!(e.exit_code(), exitcodes::WRONG_PASSWORD);
    assert!(e.to_string().contains("wrong password"));
}

#[test]
fn recovery_key_unlocks_to_the_same_master_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, report) = new_vault(tmp.path(), "v");
    let seed = recovery_key::decode(report.recovery_key.as_ref().unwrap()).unwrap();
    let by_recovery = open_keystore(&vault, None, false)
        .unwrap()
        .unlock_with_recovery(&seed)
        .unwrap();
    let by_password = unlock(&vault, None, false, PASSWORD).unwrap();
    assert_eq!(
        by_recovery.keyring.active().master_key.expose(),
        by_password.keyring.active().master_key.expose()
    );
    let other = vaultfs::crypto::keys::Key256::random().unwrap();
    assert!(matches!(
        err(open_keystore(&vault, None, false)
            .unwrap()
            .unlock_with_recovery(&other)),
        VaultError::WrongPassword
    ));
}

#[test]
fn no_recovery_key_means_no_recovery_slot_or_file() {
    isolate_state();
    let tmp = tempfile::tempdir().unwrap();
    let vault = tmp.path().join("v");
    let report = init(
        &vaultfs::vault::init::InitOptions {
            recovery_key: false,
            sparse: false,
            ..fast_options(&vault)
        },
        PASSWORD,
    )
    .unwrap();
    assert!(report.recovery_key.is_none());
    assert!(!vault.join("vaultfs.recovery.1").exists());
    let ks = open_keystore(&vault, None, false).unwrap();
    assert_eq!(ks.state.slots.len(), 1);
}

#[test]
fn init_refusals() {
    isolate_state();
    let tmp = tempfile::tempdir().unwrap();
    let busy = tmp.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("data"), b"x").unwrap();
    let e = err(init(&fast_options(&busy), PASSWORD));
    assert!(matches!(e, VaultError::AlreadyExists(_)), "{e}");
    assert_eq!(
        fs::read(busy.join("data")).unwrap(),
        b"x",
        "existing data untouched"
    );
    let v = tmp.path().join("v");
    for (opts, what) in [
        (
            vaultfs::vault::init::InitOptions {
                chunk_size: 5000,
                ..fast_options(&v)
            },
            "chunk",
        ),
        (
            vaultfs::vault::init::InitOptions {
                longname_max: 61,
                ..fast_options(&v)
            },
            "longname",
        ),
        (
            vaultfs::vault::init::InitOptions {
                kdf: vaultfs::crypto::keyslot::KdfParams {
                    log_n: 9,
                    r: 8,
                    p: 1,
                },
                ..fast_options(&v)
            },
            "kdf",
        ),
    ] {
        let e = err(init(&opts, PASSWORD));
        assert!(matches!(e, VaultError::InvalidArgument(_)), "{what}: {e}");
        assert!(!v.exists(), "{what}: nothing created");
    }
    assert!(matches!(
        err(init(&fast_options(&v), b"")),
        VaultError::PasswordSource(_)
    ));
}

#[test]
fn damaged_and_foreign_databases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = new_vault(tmp.path(), "v");
    let db = vault.join("vaultfs.db");
    let good = fs::read(&db).unwrap();

    type Damage<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "truncated",
            Box::new(|| fs::write(&db, &good[..good.len() / 3]).unwrap()),
        ),
        (
            "truncated header",
            Box::new(|| fs::write(&db, &good[..10]).unwrap()),
        ),
        ("empty", Box::new(|| fs::write(&db, b"").unwrap())),
        (
            "zero-filled",
            Box::new(|| fs::write(&db, vec![0u8; good.len()]).unwrap()),
        ),
        (
            "not sqlite",
            Box::new(|| fs::write(&db, b"hello world, this is not a database at all").unwrap()),
        ),
        (
            "foreign sqlite",
            Box::new(|| {
                fs::remove_file(&db).unwrap();
                Connection::open(&db)
                    .unwrap()
                    .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
                    .unwrap();
            }),
        ),
        (
            "pages scrambled",
            Box::new(|| {
                let mut bad = good.clone();
                for b in &mut bad[4096..8192] {
                    *b ^= 0x5a;
                }
                fs::write(&db, bad).unwrap();
            }),
        ),
    ];
    for (what, damage) in cases {
        damage();
        let e = err(unlock(&vault, None, false, PASSWORD));
        assert!(
            matches!(e, VaultError::KeystoreRefused { .. }),
            "{what}: {e}"
        );
        assert_eq!(e.exit_code(), exitcodes::KEYSTORE_REFUSED, "{what}");
        assert!(
            e.to_string().contains("vaultfs.db"),
            "{what}: message names the file: {e}"
        );
        fs::write(&db, &good).unwrap();
    }
    fs::remove_file(&db).unwrap();
    assert!(matches!(
        err(unlock(&vault, None, false, PASSWORD)),
        VaultError::KeystoreMissing(_)
    ));
}

#[test]
fn newer_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = new_vault(tmp.path(), "v");
    let db = vault.join("vaultfs.db");
    let good = fs::read(&db).unwrap();
    sql(&vault, "PRAGMA user_version = 4;");
    let e = err(unlock(&vault, None, false, PASSWORD));
    assert!(matches!(e, VaultError::NewerFormat { .. }), "{e}");
    assert_eq!(e.exit_code(), exitcodes::NEWER_FORMAT);
    assert!(e.to_string().contains("upgrade vaultfs"));
    fs::write(&db, &good).unwrap();
    sql(&vault, "UPDATE config SET format_version = 4;");
    assert!(matches!(
        err(unlock(&vault, None, false, PASSWORD)),
        VaultError::NewerFormat { .. }
    ));
    fs::write(&db, &good).unwrap();
    let marker = fs::read_to_string(vault.join("vaultfs.vault")).unwrap();
    fs::write(
        vault.join("vaultfs.vault"),
        marker.replace("format-version: 3", "format-version: 9"),
    )
    .unwrap();
    assert!(matches!(
        err(unlock(&vault, None, false, PASSWORD)),
        VaultError::NewerFormat { .. }
    ));
}

#[test]
fn edited_configuration_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = new_vault(tmp.path(), "v");
    let db = vault.join("vaultfs.db");
    let good = fs::read(&db).unwrap();
    // Out-of-range values are refused before any use (no hour-long scrypt, no odd chunks).
    for stmt in [
        "UPDATE keyslots SET kdf_log_n = 30 WHERE slot_id = 1;",
        "UPDATE keyslots SET kdf_r = 1000 WHERE slot_id = 1;",
        "UPDATE config SET kdf_log_n = 40;",
        "UPDATE config SET sparse = 2;",
        "UPDATE config SET chunk_size = 5000;",
        "UPDATE config SET longname_max = 20;",
        "UPDATE generations SET state = 'retiring';",
        "DELETE FROM generation_seals WHERE slot_id = 1; DELETE FROM keyslots WHERE slot_id = 1;",
    ] {
        sql(&vault, stmt);
        let e = err(unlock(&vault, None, false, PASSWORD));
        assert!(
            matches!(e, VaultError::KeystoreRefused { .. }),
            "{stmt}: {e}"
        );
        fs::write(&db, &good).unwrap();
    }
    // In-range edits are caught by the state MAC once a slot opens.
    for stmt in [
        "UPDATE config SET chunk_size = 65536;",
        "UPDATE config SET longname_max = 100;",
        "UPDATE config SET epoch = 99;",
        // Turning holes on would let later sparse writes make zeroed chunks pass as holes.
        "UPDATE config SET sparse = 1;",
        "UPDATE keyslots SET label = 'mallory' WHERE slot_id = 1;",
        "DELETE FROM generation_seals WHERE slot_id = 2;",
        "DELETE FROM generation_seals WHERE slot_id = 2; DELETE FROM keyslots WHERE slot_id = 2;",
        "INSERT INTO generations VALUES (2, 'retiring', 0, NULL);",
    ] {
        sql(&vault, stmt);
        let e = err(unlock(&vault, None, false, PASSWORD));
        assert!(matches!(e, VaultError::Tampered { .. }), "{stmt}: {e}");
        assert!(e.to_string().contains("tampered"));
        fs::write(&db, &good).unwrap();
    }
    // In-range scrypt edits change the slot's associated data: the slot no longer opens.
    sql(
        &vault,
        "UPDATE keyslots SET kdf_log_n = 11 WHERE slot_id = 1;",
    );
    assert!(matches!(
        err(unlock(&vault, None, false, PASSWORD)),
        VaultError::WrongPassword
    ));
    fs::write(&db, &good).unwrap();
    assert!(unlock(&vault, None, false, PASSWORD).is_ok());
}

#[test]
fn a_keyslot_or_database_from_another_vault_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = new_vault(tmp.path(), "a");
    let (b, _) = new_vault(tmp.path(), "b");
    let a_db = a.join("vaultfs.db");
    let good = fs::read(&a_db).unwrap();
    // Plant vault B's slot 1 (with its seal of B's generation 1) into A as slot 3.
    let c = Connection::open(&a_db).unwrap();
    c.execute(
        &format!("ATTACH '{}' AS b", b.join("vaultfs.db").display()),
        [],
    )
    .unwrap();
    c.execute_batch(
        "INSERT INTO keyslots SELECT 3, 'planted', kind, created, public_key, kdf_log_n, kdf_r, kdf_p, salt, wrapped, anchor_epoch FROM b.keyslots WHERE slot_id = 1;
         INSERT INTO generation_seals SELECT generation, 3, enc, sealed FROM b.generation_seals WHERE slot_id = 1;",
    )
    .unwrap();
    drop(c);
    // B's password: B's slot is bound to B's vault ID and slot ID, so it opens nothing here.
    assert!(matches!(
        err(unlock(&a, None, false, PASSWORD)),
        VaultError::Tampered { .. }
    ));
    fs::write(&a_db, &good).unwrap();
    // B's whole database under A: refused by vault ID.
    fs::copy(b.join("vaultfs.db"), &a_db).unwrap();
    let e = err(unlock(&a, None, false, PASSWORD));
    assert!(e.to_string().contains("belongs to another vault"), "{e}");
}

#[test]
fn rollback_to_an_older_database_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, report) = new_vault(tmp.path(), "v");
    let db = vault.join("vaultfs.db");
    let old = fs::read(&db).unwrap();
    let mut u = unlock(&vault, None, true, PASSWORD).unwrap();
    u.commit(&[("test", "epoch bump".into())]).unwrap();
    assert_eq!(u.state().config.epoch, 2);
    drop(u);
    assert_eq!(local_state::seen_epoch(&report.vault_id).unwrap(), 2);
    fs::write(&db, &old).unwrap();
    let e = err(unlock(&vault, None, false, PASSWORD));
    assert!(
        matches!(
            e,
            VaultError::Rollback {
                found: 1,
                seen: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn commit_keeps_the_state_authentic_and_the_audit_chain_verifiable() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, report) = new_vault(tmp.path(), "v");
    local_state::record_local_audit(&report.vault_id, "mount", "read-only keystore").unwrap();
    let mut u = unlock(&vault, None, true, PASSWORD).unwrap();
    u.commit(&[("passwd", "slot 1".into())]).unwrap();
    let key = audit::audit_key(&u.k_auth, &report.vault_id);
    let conn = &u.keystore.db.conn;
    assert_eq!(audit::verify_chain(conn, &key).unwrap(), Ok(3));
    let events: Vec<String> = audit::recent(conn, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events, ["init", "mount", "passwd"]);
    assert!(
        local_state::pending_local_audit(&report.vault_id)
            .unwrap()
            .is_empty()
    );
    // The log refuses edits; one who drops the trigger breaks the chain.
    assert!(
        conn.execute("UPDATE audit SET detail = 'x' WHERE seq = 2", [])
            .is_err()
    );
    assert!(conn.execute("DELETE FROM audit WHERE seq = 1", []).is_err());
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'x' WHERE seq = 2;",
    )
    .unwrap();
    assert_eq!(audit::verify_chain(conn, &key).unwrap(), Err(2));
    drop(u);
    // ... and the missing trigger alone makes every open refuse the database.
    let e = err(unlock(&vault, None, false, PASSWORD));
    assert!(e.to_string().contains("schema lacks the trigger"), "{e}");
}

#[test]
fn sync_conflict_copies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, _) = new_vault(tmp.path(), "v");
    let conflict = vault.join("vaultfs (Alice's conflicted copy 2026-01-01).db");
    fs::copy(vault.join("vaultfs.db"), &conflict).unwrap();
    let e = err(unlock(&vault, None, false, PASSWORD));
    assert!(matches!(e, VaultError::SyncConflict { .. }), "{e}");
    fs::remove_file(&conflict).unwrap();
    fs::write(
        vault.join("vaultfs.sync-conflict-20260101-120000-ABCDEFG.db"),
        b"x",
    )
    .unwrap();
    assert!(matches!(
        err(unlock(&vault, None, false, PASSWORD)),
        VaultError::SyncConflict { .. }
    ));
}

#[test]
fn external_keystore() {
    isolate_state();
    let tmp = tempfile::tempdir().unwrap();
    let vault = tmp.path().join("v");
    let ks = tmp.path().join("usb/keys.db");
    fs::create_dir_all(ks.parent().unwrap()).unwrap();
    init(
        &vaultfs::vault::init::InitOptions {
            keystore: Some(ks.clone()),
            ..fast_options(&vault)
        },
        PASSWORD,
    )
    .unwrap();
    assert!(!vault.join("vaultfs.db").exists());
    let e = err(unlock(&vault, None, false, PASSWORD));
    assert!(matches!(e, VaultError::ExternalKeystore(_)), "{e}");
    assert!(e.to_string().contains("--keystore"));
    assert!(unlock(&vault, Some(&ks), false, PASSWORD).is_ok());
    assert!(matches!(
        err(unlock(
            &vault,
            Some(&tmp.path().join("nope.db")),
            false,
            PASSWORD
        )),
        VaultError::KeystoreMissing(_)
    ));
}

#[test]
fn not_a_vault() {
    isolate_state();
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        err(unlock(tmp.path(), None, false, PASSWORD)),
        VaultError::NotAVault(_)
    ));
    assert!(matches!(
        err(unlock(&tmp.path().join("missing"), None, false, PASSWORD)),
        VaultError::NotAVault(_)
    ));
}
