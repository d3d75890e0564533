//! Attack tests for the security review of issue 14: each test plays one attacker from
//! docs/SECURITY.md and fails on a vaultfs without the defence it names.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// FUSE tests that act as other users need root; as anyone else they skip, loudly.
/// `vaultfs mount --passfile PW VAULT MNT` with the state directory `state`.
fn mount_cmd(state: &Path, pw: &Path, vault: &Path, mnt: &Path) -> Command {
    let mut c = vaultfs(state);
    c.args(["mount", "--passfile"]).arg(pw).arg(vault).arg(mnt);
    c
}

/// `sh -c SCRIPT` as uid/gid 65534 (nobody), with no supplementary groups.
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

/// `vaultfs status --json` of the vault.
fn status_of(v: &TestVault) -> serde_json::Value {
    let o = run_ok(vaultfs(&v.state).args(["status", "--json"]).arg(&v.vault));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `vaultfs keyslot add --label LABEL` with the password in `pw`.
fn add_slot(v: &TestVault, label: &str, pw: &Path) {
    run_ok(&mut v.with_password(&[
        "keyslot",
        "add",
        "--label",
        label,
        "--new-passfile",
        pw.to_str().unwrap(),
    ]));
}

/// 400 files of 9,000 bytes: a rotation long enough to be caught in the middle.
fn fill_for_rotation(v: &TestVault) {
    v.mount();
    for i in 0..400 {
        fs::write(v.p(&format!("f{i}")), vec![b'x'; 9000]).unwrap();
    }
    v.unmount();
}

/// Kills `rotate --reencrypt` once `status` shows it under way, leaving it unfinished;
/// `before_each` runs before every try (a try whose rotation finished first is repeated).
fn interrupt_a_reencryption(v: &TestVault, mut before_each: impl FnMut(u32)) {
    let rotating = || !status_of(v)["rotation"].is_null();
    for n in 0..20 {
        before_each(n);
        let mut child = v.with_password(&["rotate", "--reencrypt"]).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !rotating() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        if rotating() {
            return;
        }
    }
    panic!("never caught a rotation in progress");
}

/// Mode bits of everything under `dir`, recursively (symlinks not followed).
fn modes_under(dir: &Path) -> Vec<(String, u32, bool)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        out.push((
            e.path().display().to_string(),
            md.mode() & 0o7777,
            md.is_dir(),
        ));
        if md.is_dir() {
            out.extend(modes_under(&e.path()));
        }
    }
    out
}

/// Finding 2: everything vaultfs (and its root daemon) creates under the state directory is
/// private: directories 0700, files 0600, whatever the umask.
#[test]
fn state_directory_is_private_to_its_owner() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("f"), b"x").unwrap();
    let _ = v.daemon_pid();
    let entries = modes_under(&v.state);
    v.unmount();
    let names: Vec<_> = entries.iter().map(|(n, _, _)| n.clone()).collect();
    for want in ["mounts", "daemon.log", "audit.jsonl", "epoch"] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} missing in {names:?}"
        );
    }
    for (name, mode, is_dir) in &entries {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{name} has mode {mode:o}");
    }
}

/// Finding 2: a local user who can write the directory that holds the state directory plants
/// their own `vaultfs/mounts/<pidfile>` as a symlink to a file of root's. The root daemon
/// must neither write through it nor accept a state directory that user controls.
#[test]
fn a_local_user_cannot_redirect_the_root_daemons_state_writes() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    // A shared, sticky, world-writable parent (like /tmp, or a careless /var/lib/...).
    let shared = v.tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(v.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let victim = v.tmp.path().join("root-owned-victim");
    fs::write(&victim, b"root's data\n").unwrap();
    // The pidfile name is a hash of the mount point: the attacker plants every candidate by
    // linking the whole mounts directory.
    let out = as_nobody(&format!(
        "mkdir -m 0777 {s}/vaultfs && ln -s {victim_dir} {s}/vaultfs/mounts",
        s = shared.display(),
        victim_dir = v.tmp.path().display(),
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = mount_cmd(&shared, &v.passfile, &v.vault, &v.mnt)
        .output()
        .unwrap();
    let mounted = v.is_mounted();
    if mounted {
        let _ = vaultfs(&shared).arg("unmount").arg(&v.mnt).output();
    }
    assert_eq!(fs::read(&victim).unwrap(), b"root's data\n");
    assert!(
        !mounted && !o.status.success(),
        "mount accepted a state directory owned by another user"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not private to you"), "{err}");
    // Nothing was created through the attacker's symlink.
    let leaked: Vec<_> = fs::read_dir(v.tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 32)
        .collect();
    assert!(leaked.is_empty(), "root wrote {leaked:?} through the link");
}

/// Finding 2: another local user can neither add a line to the local audit log (which the
/// next key-changing command merges into the MAC'd chain) nor plant files in the state
/// directories of a vault mounted by root.
#[test]
fn a_local_user_cannot_add_audit_events() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    fs::set_permissions(v.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&v.state, fs::Permissions::from_mode(0o755)).unwrap();
    v.mount();
    let vault_dir = fs::read_dir(v.state.join("vaultfs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().len() == 32)
        .unwrap()
        .path();
    let out = as_nobody(&format!(
        "echo '{{\"time\":1,\"event\":\"forged\",\"detail\":\"x\"}}' >> {d}/audit.jsonl; \
         touch {d}/planted; touch {m}/planted; exit 0",
        d = vault_dir.display(),
        m = v.state.join("vaultfs/mounts").display()
    ));
    assert!(out.status.success());
    v.unmount();
    assert!(!vault_dir.join("planted").exists());
    assert!(!v.state.join("vaultfs/mounts/planted").exists());
    let audit = fs::read_to_string(vault_dir.join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains("forged"), "{audit}");
}

/// Inserts `n` password keyslots with the given scrypt parameters straight into the key
/// database, as a writer of the database who holds no slot can.
fn plant_slots(v: &TestVault, n: u32, (log_n, r, p): (i64, i64, i64)) {
    let db = rusqlite::Connection::open(v.vault.join("vaultfs.db")).unwrap();
    for i in 0..n {
        db.execute(
            "INSERT INTO keyslots (slot_id, label, kind, created, public_key, kdf_log_n, kdf_r, kdf_p, salt, wrapped)
             VALUES (?1, ?2, 'password', 0, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                1000 + i,
                format!("planted-{i}"),
                vec![9u8; 32],
                log_n,
                r,
                p,
                vec![1u8; 32],
                vec![2u8; 80]
            ],
        )
        .unwrap();
    }
}

/// `vaultfs mount` under a 4 GB address-space limit, timed.
fn mount_limited(v: &TestVault) -> (std::process::Output, std::time::Duration) {
    let start = std::time::Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 4000000; exec {} mount --passfile {} {} {}",
            env!("CARGO_BIN_EXE_vaultfs"),
            v.passfile.display(),
            v.vault.display(),
            v.mnt.display()
        ))
        .env("XDG_STATE_HOME", &v.state)
        .output()
        .unwrap();
    (out, start.elapsed())
}

/// Finding 5: a planted slot whose scrypt parameters need 16 GiB made `mount` abort
/// ("memory allocation failed", SIGABRT) before any authentication. Over the memory or work
/// cap, the database is refused with one line and its exit status, before scrypt runs.
#[test]
fn planted_kdf_parameters_are_refused_before_scrypt_runs() {
    if !fuse_available() {
        return;
    }
    for params in [(22, 32, 16), (22, 8, 1), (18, 8, 16)] {
        let v = TestVault::new(4096);
        plant_slots(&v, 1, params);
        let (o, took) = mount_limited(&v);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
            "{params:?}: {:?} {err}",
            o.status
        );
        assert!(err.contains("scrypt parameters"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(took.as_secs() < 5, "{params:?} took {took:?}");
        assert!(!v.is_mounted());
    }
}

/// Finding 5: many planted slots, each within the caps, may not add up to minutes of scrypt
/// per unlock either.
#[test]
fn total_kdf_work_per_unlock_is_bounded() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    plant_slots(&v, 200, (17, 8, 1));
    let (o, took) = mount_limited(&v);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
        "{err}"
    );
    assert!(err.contains("scrypt work"), "{err}");
    assert!(took.as_secs() < 5, "took {took:?}");
}

/// Finding 8: a key database with anything the migrations did not make (a trigger that
/// fires on the next write, a view, a table, an extra column, a dropped trigger) is refused
/// by every command that opens it, before anything in it is used.
#[test]
fn a_planted_schema_object_refuses_the_database() {
    let plants = [
        "CREATE TRIGGER planted AFTER INSERT ON audit BEGIN INSERT INTO keyslots SELECT * FROM keyslots WHERE 0; END",
        "CREATE VIEW planted AS SELECT * FROM keyslots",
        "CREATE TABLE planted (x)",
        "CREATE INDEX planted ON keyslots (label)",
        "ALTER TABLE keyslots ADD COLUMN planted TEXT",
        "DROP TRIGGER audit_no_delete",
    ];
    for plant in plants {
        let v = TestVault::new(4096);
        rusqlite::Connection::open(v.vault.join("vaultfs.db"))
            .unwrap()
            .execute_batch(plant)
            .unwrap();
        for args in [vec!["status"], vec!["fsck"]] {
            let mut c = if args[0] == "status" {
                let mut c = vaultfs(&v.state);
                c.args(&args).arg(&v.vault);
                c
            } else {
                v.with_password(&args)
            };
            let o = c.output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
                "{plant}: {args:?} {err}"
            );
            assert!(err.contains("schema"), "{plant}: {err}");
        }
        let pw = v.tmp.path().join("pw2");
        fs::write(&pw, "another password\n").unwrap();
        let o = v
            .with_password(&["passwd", "--new-passfile", pw.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
            "{plant}: passwd {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Finding 8: SQLite's own defences are on for every open of the key database.
#[test]
fn the_key_database_is_opened_defensive_and_with_an_untrusted_schema() {
    use rusqlite::config::DbConfig;
    let v = TestVault::new(4096);
    for writable in [false, true] {
        let db = vaultfs::vault::db::KeyDb::open(&v.vault.join("vaultfs.db"), writable).unwrap();
        assert!(
            db.conn
                .db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE)
                .unwrap()
        );
        assert!(
            !db.conn
                .db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA)
                .unwrap()
        );
        // Defensive mode: the schema cannot be rewritten in place.
        let r = db
            .conn
            .execute_batch("PRAGMA writable_schema=ON; UPDATE sqlite_schema SET sql = sql");
        assert!(r.is_err(), "writable_schema accepted (writable={writable})");
    }
}

/// Finding 7 (xfstests generic/355, 683, 684): a write, fallocate or punched hole by a user
/// without CAP_FSETID drops set-user-ID, and set-group-ID where group-executable or where the
/// writer is not in the file's group, as local filesystems do; the change shows at once
/// through the mount (the kernel's cached mode is invalidated), and root keeps the bits.
#[test]
fn set_id_bits_drop_when_another_user_changes_the_file() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    let o = v.mount_args(&["--allow-other"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::set_permissions(&v.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    let f = v.p("f");
    let ops = [
        (
            "direct write",
            "dd if=/dev/zero of=F bs=4096 count=1 conv=notrunc oflag=direct status=none",
        ),
        (
            "buffered write",
            "dd if=/dev/zero of=F bs=100 count=1 conv=notrunc status=none",
        ),
        ("fallocate", "fallocate -o 0 -l 65536 F"),
        ("punch hole", "fallocate -p -o 0 -l 4096 F"),
    ];
    // (owner, group, mode before, mode after a change by nobody)
    let cases = [
        (65534, 65534, 0o6644, 0o2644),
        (65534, 65534, 0o6654, 0o0654),
        (0, 0, 0o6666, 0o0666),
        (0, 0, 0o2676, 0o0676),
    ];
    for (what, cmd) in ops {
        for (uid, gid, before, after) in cases {
            let _ = fs::remove_file(&f);
            fs::write(&f, vec![b'x'; 8192]).unwrap();
            std::os::unix::fs::chown(&f, Some(uid), Some(gid)).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(before)).unwrap();
            assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, before);
            let out = as_nobody(&cmd.replace('F', f.to_str().unwrap()));
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let seen = fs::metadata(&f).unwrap().mode() & 0o7777;
            assert_eq!(
                seen, after,
                "{what} by nobody on {uid}:{gid} {before:o}: {seen:o}"
            );
            // Root (CAP_FSETID) keeps them.
            fs::set_permissions(&f, fs::Permissions::from_mode(before)).unwrap();
            let out = Command::new("sh")
                .arg("-c")
                .arg(cmd.replace('F', f.to_str().unwrap()))
                .output()
                .unwrap();
            assert!(out.status.success());
            let seen = fs::metadata(&f).unwrap().mode() & 0o7777;
            assert_eq!(seen, before, "{what} by root: {seen:o}");
        }
    }
    v.unmount();
}

/// Finding 3: in a file that never had a hole, a chunk zeroed or punched in the backing
/// store reads as EIO, never as zeros; setting the header's HOLES flag by hand breaks the
/// header. (A file that has had holes keeps reading all-zero chunks as holes: SECURITY.md.)
#[test]
fn a_zeroed_or_punched_chunk_reads_eio() {
    use std::os::unix::fs::FileExt;
    each_chunk_size(|v, cs| {
        let ct = cs as u64 + 28;
        let data: Vec<u8> = (0..cs * 4).map(|i| (i % 251) as u8 + 1).collect();
        for (name, attack) in [("zeroed", 0), ("punched", 1), ("flagged", 2)] {
            let p = v.p(name);
            fs::write(&p, &data).unwrap();
            v.unmount();
            let backing = backing_of(v, name);
            let f = fs::OpenOptions::new().write(true).open(&backing).unwrap();
            match attack {
                0 => f.write_all_at(&vec![0u8; ct as usize], 144 + ct).unwrap(),
                1 => rustix::fs::fallocate(
                    &f,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    144 + ct,
                    ct,
                )
                .unwrap(),
                _ => f.write_all_at(&[0, 1], 10).unwrap(),
            }
            drop(f);
            v.mount();
            let got = fs::read(&p);
            assert_eq!(errno_of(got), libc::EIO, "{name} chunk, chunk size {cs}");
            // The other chunks still read (not for the broken header).
            if attack != 2 {
                let f = fs::File::open(&p).unwrap();
                let mut buf = vec![0u8; cs];
                f.read_exact_at(&mut buf, 2 * cs as u64).unwrap();
                assert_eq!(buf, data[2 * cs..3 * cs]);
                assert_eq!(errno_of(f.read_exact_at(&mut buf, cs as u64)), libc::EIO);
            }
        }
    });
}

/// Finding 3: sparse files still work (in a sparse vault they stay sparse, their header
/// allowing holes), and a hole punched through the mount reads as zeros.
#[test]
fn sparse_files_and_punched_holes_still_read_as_zeros() {
    each_chunk_size(sparse_file_and_punched_hole);
    each_chunk_size_sparse(sparse_file_and_punched_hole);
}

fn sparse_file_and_punched_hole(v: &TestVault, cs: usize) {
    use std::os::unix::fs::FileExt;
    {
        let p = v.p("sparse");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&p)
            .unwrap();
        f.write_all_at(b"end", 10 * cs as u64).unwrap();
        let mut buf = vec![1u8; cs];
        f.read_exact_at(&mut buf, 3 * cs as u64).unwrap();
        assert_eq!(buf, vec![0u8; cs]);
        let dense = v.p("dense");
        fs::write(&dense, vec![7u8; 4 * cs]).unwrap();
        let g = fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&dense)
            .unwrap();
        rustix::fs::fallocate(
            &g,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            cs as u64,
            cs as u64,
        )
        .unwrap();
        g.read_exact_at(&mut buf, cs as u64).unwrap();
        assert_eq!(buf, vec![0u8; cs]);
        g.read_exact_at(&mut buf, 2 * cs as u64).unwrap();
        assert_eq!(buf, vec![7u8; cs]);
        drop((f, g));
        v.unmount();
        v.mount();
        assert_eq!(fs::read(&p).unwrap().len(), 10 * cs + 3);
        let back = fs::read(&dense).unwrap();
        assert_eq!(&back[cs..2 * cs], &vec![0u8; cs][..]);
        assert_eq!(&back[2 * cs..], &vec![7u8; 2 * cs][..]);
    }
}

/// Finding 3, the default: a vault made without `--sparse` stores no holes. A file grown by
/// truncate, by fallocate, by a write far past its end (no writeback cache to wait for), or
/// punched, gets sealed zeros and no HOLES flag, so a chunk zeroed in the backing store, in
/// the zeros or in the data, reads EIO. (Before, each of these set the flag and the zeroed
/// chunk read as zeros.) In a sparse vault the same file reads zeros: the trade-off that
/// `init --sparse` names.
#[test]
fn a_vault_made_without_sparse_stores_no_holes() {
    use std::os::unix::fs::FileExt;
    for sparse in [false, true] {
        for cs in [4096usize, 65536] {
            if !fuse_available() {
                return;
            }
            let v = if sparse {
                TestVault::sparse(cs as u32)
            } else {
                TestVault::new(cs as u32)
            };
            let o = v.mount_args(&["-o", "no_writeback_cache"]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let data: Vec<u8> = (0..2 * cs).map(|i| (i % 249) as u8 + 1).collect();
            let open = |name: &str| {
                let p = v.p(name);
                fs::write(&p, &data).unwrap();
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .unwrap()
            };
            open("truncated").set_len(12 * cs as u64).unwrap();
            rustix::fs::fallocate(
                open("fallocated"),
                rustix::fs::FallocateFlags::empty(),
                0,
                12 * cs as u64,
            )
            .unwrap();
            open("written")
                .write_all_at(b"far", 12 * cs as u64)
                .unwrap();
            let punched = open("punched");
            punched.write_all_at(&data, 2 * cs as u64).unwrap();
            rustix::fs::fallocate(
                &punched,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                cs as u64,
                2 * cs as u64,
            )
            .unwrap();
            drop(punched);
            v.unmount();
            let ct = cs as u64 + 28;
            for name in ["truncated", "fallocated", "written", "punched"] {
                let backing = backing_of(&v, name);
                let head = fs::read(&backing).unwrap();
                let flagged = head[11] & 1 != 0;
                assert_eq!(
                    flagged, sparse,
                    "{name}: HOLES flag, sparse vault: {sparse}"
                );
                // Zero one chunk of data (chunk 0) and one of the zeros (chunk 2).
                let f = fs::OpenOptions::new().write(true).open(&backing).unwrap();
                for k in [0u64, 2] {
                    f.write_all_at(&vec![0u8; ct as usize], 144 + k * ct)
                        .unwrap();
                }
            }
            v.mount();
            for name in ["truncated", "fallocated", "written", "punched"] {
                let f = fs::File::open(v.p(name)).unwrap();
                let mut buf = vec![7u8; cs];
                for k in [0u64, 2] {
                    let got = f.read_exact_at(&mut buf, k * cs as u64);
                    if sparse {
                        got.unwrap();
                        assert_eq!(buf, vec![0u8; cs], "{name}: chunk {k} reads as a hole");
                    } else {
                        assert_eq!(
                            errno_of(got),
                            libc::EIO,
                            "{name}: chunk {k}, chunk size {cs}"
                        );
                    }
                }
            }
            v.unmount();
        }
    }
}

/// Format upgrade: a format-1 vault (the committed test vector) mounts; a writable mount
/// raises its marker to the current format (3) before writing version-2 headers (so an older vaultfs
/// refuses it whole), old files still read, and the first key-changing command raises the
/// key database's format version.
#[test]
fn a_format_1_vault_mounts_and_is_upgraded_by_its_first_writer() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let vault = tmp.path().join("vault");
    let cp = Command::new("cp")
        .args(["-a", "tests/vectors/v1/vault"])
        .arg(&vault)
        .status()
        .unwrap();
    assert!(cp.success());
    let state = tmp.path().join("state");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let pw = tmp.path().join("pw");
    fs::write(&pw, "vaultfs test vector password\n").unwrap();
    let marker = || fs::read_to_string(vault.join("vaultfs.vault")).unwrap();
    let db_format = || {
        let o = run_ok(vaultfs(&state).args(["status", "--json"]).arg(&vault));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["format_version"].as_i64().unwrap()
    };
    assert!(marker().contains("format-version: 1"));
    // Read-only: nothing changes.
    run_ok(
        vaultfs(&state)
            .args(["mount", "--read-only", "--passfile"])
            .arg(&pw)
            .arg(&vault)
            .arg(&mnt),
    );
    assert_eq!(
        fs::read(mnt.join("hello.txt")).unwrap(),
        b"Hello, vaultfs!\n"
    );
    run_ok(vaultfs(&state).arg("unmount").arg(&mnt));
    assert!(marker().contains("format-version: 1"));
    // Writable: the marker first, then version-2 files beside version-1 ones.
    run_ok(&mut mount_cmd(&state, &pw, &vault, &mnt));
    assert!(marker().contains("format-version: 3"), "{}", marker());
    fs::write(mnt.join("new"), b"written by format 2").unwrap();
    assert_eq!(
        fs::read(mnt.join("hello.txt")).unwrap(),
        b"Hello, vaultfs!\n"
    );
    run_ok(vaultfs(&state).arg("unmount").arg(&mnt));
    let headers: Vec<u16> = fs::read_dir(&vault)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_file())
        .filter_map(|e| {
            let b = fs::read(e.path()).ok()?;
            (b.len() >= 144 && b.starts_with(b"VAULTFS\0"))
                .then(|| u16::from_be_bytes([b[8], b[9]]))
        })
        .collect();
    assert!(headers.contains(&1) && headers.contains(&2), "{headers:?}");
    assert_eq!(db_format(), 1);
    let pw2 = tmp.path().join("pw2");
    fs::write(&pw2, "a new password\n").unwrap();
    run_ok(
        vaultfs(&state)
            .args(["passwd", "--passfile"])
            .arg(&pw)
            .arg("--new-passfile")
            .arg(&pw2)
            .arg(&vault),
    );
    assert_eq!(db_format(), 3);
    run_ok(&mut mount_cmd(&state, &pw2, &vault, &mnt));
    assert_eq!(fs::read(mnt.join("new")).unwrap(), b"written by format 2");
    run_ok(vaultfs(&state).arg("unmount").arg(&mnt));
}

/// Finding 4: the authenticated state fixes where the audit log ends. Whoever can write the
/// key database (but holds no slot) and cuts the tail, drops entries, edits or reorders one,
/// is caught by fsck (exit 22) and by every command that would write the database.
#[test]
fn a_cut_or_edited_audit_log_is_detected() {
    let cases = [
        "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
        "DELETE FROM audit",
        "UPDATE audit SET detail = 'nothing happened' WHERE seq = 2",
        "UPDATE audit SET seq = seq + 100 WHERE seq = 1",
        // Final review: values of another type were read as an I/O-like error (exit 2).
        "UPDATE audit SET event = CAST(event AS BLOB) WHERE seq = 1",
        "UPDATE audit SET mac = mac || x'00' WHERE seq = 2",
        "UPDATE audit SET detail = x'ff' WHERE seq = 2",
        "UPDATE audit SET time = 'noon' WHERE seq = 1",
    ];
    for sql in cases {
        let v = TestVault::new(4096);
        // Some history: a passwd and back, so there is a tail worth cutting.
        let pw2 = v.tmp.path().join("pw2");
        fs::write(&pw2, "second password\n").unwrap();
        run_ok(&mut v.with_password(&["passwd", "--new-passfile", pw2.to_str().unwrap()]));
        run_ok(
            vaultfs(&v.state)
                .args(["passwd", "--passfile"])
                .arg(&pw2)
                .arg("--new-passfile")
                .arg(&v.passfile)
                .arg(&v.vault),
        );
        // The attacker drops the append-only triggers, changes the log, and puts them back
        // (the schema check would catch missing triggers).
        let db = rusqlite::Connection::open(v.vault.join("vaultfs.db")).unwrap();
        let triggers: Vec<String> = db
            .prepare("SELECT sql FROM sqlite_schema WHERE type = 'trigger'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        db.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        db.execute_batch(sql).unwrap();
        for t in &triggers {
            db.execute_batch(t).unwrap();
        }
        drop(db);
        let o = v.with_password(&["fsck"]).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(vaultfs::exitcodes::AUDIT_TAMPERED),
            "{sql}: fsck {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let o = v
            .with_password(&["passwd", "--new-passfile", pw2.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
            "{sql}: passwd {err}"
        );
        assert!(err.contains("audit log"), "{err}");
        // status still shows the log, without a password.
        run_ok(vaultfs(&v.state).arg("status").arg(&v.vault));
    }
}

/// Finding 1 (reading): the reviewer's attack. With a copy of the key database made before
/// `passwd`, the old password unwraps the slot's old private key and K_auth; put back into
/// the current database with a recomputed state MAC, it opened the vault after `rotate
/// --reencrypt` and read files written since. `passwd` now gives the slot a fresh key pair,
/// so no generation made after it is sealed to anything the old password opens.
#[test]
fn an_old_password_and_an_old_database_copy_read_nothing_written_after_the_rotation() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("before"), b"written before").unwrap();
    v.unmount();
    let old_db = v.tmp.path().join("old.db");
    fs::copy(v.vault.join("vaultfs.db"), &old_db).unwrap();

    let pw2 = v.tmp.path().join("pw2");
    fs::write(&pw2, "the new password\n").unwrap();
    run_ok(&mut v.with_password(&["passwd", "--new-passfile", pw2.to_str().unwrap()]));
    run_ok(
        vaultfs(&v.state)
            .args(["rotate", "--reencrypt", "--passfile"])
            .arg(&pw2)
            .arg(&v.vault),
    );
    run_ok(&mut mount_cmd(&v.state, &pw2, &v.vault, &v.mnt));
    fs::write(v.p("after"), b"written after the rotation").unwrap();
    v.unmount();

    // The attacker: the old password opens the old copy's slot (private key, K_auth).
    common::isolate_state();
    let old_vault = v.tmp.path().join("old-vault");
    fs::create_dir(&old_vault).unwrap();
    fs::copy(
        v.vault.join("vaultfs.vault"),
        old_vault.join("vaultfs.vault"),
    )
    .unwrap();
    fs::copy(&old_db, old_vault.join("vaultfs.db")).unwrap();
    let old = vaultfs::vault::init::unlock(&old_vault, None, false, b"test password").unwrap();
    let old_slot = old
        .state()
        .slots
        .iter()
        .find(|s| s.slot_id == 1)
        .unwrap()
        .clone();
    // Put the old slot row into the current database and recompute the state MAC.
    let db_path = v.vault.join("vaultfs.db");
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let k = old_slot.kdf.unwrap();
        db.execute(
            "UPDATE keyslots SET public_key = ?1, kdf_log_n = ?2, kdf_r = ?3, kdf_p = ?4, salt = ?5, wrapped = ?6 WHERE slot_id = 1",
            rusqlite::params![&old_slot.public_key[..], k.log_n, k.r, k.p, &old_slot.salt.unwrap()[..], old_slot.wrapped],
        )
        .unwrap();
    }
    let (state, _) = vaultfs::vault::db::KeyDb::open(&db_path, false)
        .unwrap()
        .load_state()
        .unwrap();
    let key = vaultfs::vault::state::VaultState::mac_key(&old.k_auth, &state.config.vault_id);
    let mac = state.compute_mac(&key);
    rusqlite::Connection::open(&db_path)
        .unwrap()
        .execute("UPDATE config SET state_mac = ?1", [&mac[..]])
        .unwrap();
    // On a machine that never saw the vault, the old password gets nothing: no seal of the
    // new generation opens with the old private key.
    let fresh_state = v.tmp.path().join("fresh-state");
    let o = mount_cmd(&fresh_state, &v.passfile, &v.vault, &v.mnt)
        .output()
        .unwrap();
    let mounted = v.is_mounted();
    let leaked = mounted && fs::read(v.p("after")).is_ok();
    if mounted {
        let _ = vaultfs(&fresh_state).arg("unmount").arg(&v.mnt).output();
    }
    assert!(
        !leaked,
        "the old password read a file written after the rotation"
    );
    assert!(!o.status.success(), "the old password mounted the vault");
}

/// Finding 1 (design review): a revocation in the middle of a rotation could let the resumed
/// rotation finish onto a generation the revoked slot was sealed to; `passwd` and `keyslot
/// remove` refuse until the rotation is finished.
#[test]
fn no_revocation_during_an_unfinished_rotation() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    fill_for_rotation(&v);
    let pw2 = v.tmp.path().join("pw2");
    fs::write(&pw2, "the new password\n").unwrap();
    add_slot(&v, "bob", &pw2);
    interrupt_a_reencryption(&v, |_| {});
    for args in [
        vec!["passwd", "--new-passfile", pw2.to_str().unwrap()],
        vec!["keyslot", "remove", "--label", "bob"],
    ] {
        let o = v.with_password(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} went through");
        assert!(
            err.contains("rotation") && err.contains("unfinished"),
            "{err}"
        );
    }
    // Finished, both work.
    run_ok(&mut v.with_password(&["rotate", "--reencrypt"]));
    run_ok(&mut v.with_password(&["keyslot", "remove", "--label", "bob"]));
}

/// Finding 6: a FIFO, socket or device node planted in the backing store under a regular
/// file's encrypted name reads as EIO (never a FIFO that makes readers hang); format 2 keeps
/// the vault's own FIFOs, sockets and device nodes in header-only files whose authenticated
/// header says the type, and fsck names a planted node.
#[test]
fn a_planted_fifo_socket_or_device_reads_eio_and_never_hangs() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let kinds = [
        ("fifo", libc::S_IFIFO),
        ("sock", libc::S_IFSOCK),
        ("chr", libc::S_IFCHR),
    ];
    for (name, _) in kinds {
        fs::write(v.p(name), b"a regular file").unwrap();
    }
    let ours = std::ffi::CString::new(v.p("our-fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(ours.as_ptr(), 0o644) }, 0);
    v.unmount();
    for (name, kind) in kinds {
        let backing = backing_of(&v, name);
        fs::remove_file(&backing).unwrap();
        let c = std::ffi::CString::new(backing.to_str().unwrap()).unwrap();
        // SAFETY: mknod on a NUL-terminated path (device 1:3 is /dev/null's).
        let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(1, 3)) };
        assert_eq!(r, 0, "mknod {name}");
    }
    v.mount();
    for (name, _) in kinds {
        // `timeout` turns a hang into exit 124.
        let o = Command::new("timeout")
            .args(["5", "cat"])
            .arg(v.p(name))
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(124), "{name}: reading hung");
        assert!(!o.status.success(), "{name}: read through the planted node");
        assert_eq!(
            errno_of(fs::symlink_metadata(v.p(name))),
            libc::EIO,
            "{name}"
        );
    }
    let md = fs::symlink_metadata(v.p("our-fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()));
    v.unmount();
    // The vault's own FIFO is a header-only regular file in the backing store.
    let ours = fs::symlink_metadata(backing_of(&v, "our-fifo")).unwrap();
    assert!(ours.is_file() && ours.len() == 144);
    let o = v.with_password(&["fsck"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(vaultfs::exitcodes::DAMAGED), "{out}");
    assert_eq!(out.matches("planted").count(), 3, "{out}");
}

/// Finding 6, format 1: a vault made by format 1 keeps its FIFOs as backing FIFOs, which
/// this build still accepts there (and only there: the key database says so, under the MAC).
#[test]
fn a_format_1_vaults_own_fifos_still_work() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let vault = tmp.path().join("vault");
    assert!(
        Command::new("cp")
            .args(["-a", "tests/vectors/v1/vault"])
            .arg(&vault)
            .status()
            .unwrap()
            .success()
    );
    let state = tmp.path().join("state");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let pw = tmp.path().join("pw");
    fs::write(&pw, "vaultfs test vector password\n").unwrap();
    let o = run_ok(
        vaultfs(&state)
            .args(["encrypt-path", "--passfile"])
            .arg(&pw)
            .arg(&vault)
            .arg("/old-fifo"),
    );
    let backing = vault.join(String::from_utf8(o.stdout).unwrap().trim());
    let c = std::ffi::CString::new(backing.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "{backing:?}");
    run_ok(&mut mount_cmd(&state, &pw, &vault, &mnt));
    let md = fs::symlink_metadata(mnt.join("old-fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()));
    run_ok(vaultfs(&state).arg("unmount").arg(&mnt));
    // Final review: a FIFO planted under a name that does not decrypt, or a hard-linked one,
    // was left as it was, and kept the vault accepting backing nodes for ever.
    let junk = vault.join("A".repeat(43));
    let c = std::ffi::CString::new(junk.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    fs::hard_link(&junk, vault.join(format!("{}B", "A".repeat(42)))).unwrap();
    // A rotation moves them into header-only files (type, mode, times kept) and, none being
    // left, the vault stops accepting backing nodes: one planted afterwards reads EIO.
    let o = run_ok(
        vaultfs(&state)
            .args(["rotate", "--passfile"])
            .arg(&pw)
            .arg(&vault),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Moved 3 FIFOs"), "{out}");
    let backing_now = |plain: &str| {
        let o = run_ok(
            vaultfs(&state)
                .args(["encrypt-path", "--passfile"])
                .arg(&pw)
                .arg(&vault)
                .arg(plain),
        );
        vault.join(String::from_utf8(o.stdout).unwrap().trim())
    };
    // (The rotation gave it a name under the new generation.)
    let converted = fs::symlink_metadata(backing_now("/old-fifo")).unwrap();
    assert!(
        converted.is_file() && converted.len() == 144,
        "{converted:?}"
    );
    assert_eq!(converted.mode() & 0o7777, md.mode() & 0o7777);
    assert_eq!(converted.mtime(), md.mtime());
    let planted = backing_now("/planted");
    let c = std::ffi::CString::new(planted.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    run_ok(&mut mount_cmd(&state, &pw, &vault, &mnt));
    let md = fs::symlink_metadata(mnt.join("old-fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()));
    assert_eq!(
        errno_of(fs::symlink_metadata(mnt.join("planted"))),
        libc::EIO
    );
    run_ok(vaultfs(&state).arg("unmount").arg(&mnt));
}

/// Final review, finding 1: a local user who owns the directory above the state directory
/// renamed root's `vaultfs/` away, and the next mount started afresh: no epoch (rollback
/// accepted again), no pending audit events. A state directory whose ancestors someone
/// else could change is refused.
#[test]
fn a_state_directory_under_another_users_directory_is_refused() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    fs::set_permissions(v.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = v.tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let o = mount_cmd(&theirs, &v.passfile, &v.vault, &v.mnt)
        .output()
        .unwrap();
    let mounted = v.is_mounted();
    if mounted {
        let _ = vaultfs(&theirs).arg("unmount").arg(&v.mnt).output();
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !mounted && !o.status.success(),
        "mounted with a state directory under uid 65534's"
    );
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(!theirs.join("vaultfs").exists());
}

/// Rewrites the key database at `db` with `edit` applied to its state and the state MAC made
/// with `k_auth`: what someone who holds that K_auth and can write the database can do.
fn forge(
    db: &Path,
    k_auth: &vaultfs::crypto::keys::Key256,
    edit: impl FnOnce(&mut vaultfs::vault::state::VaultState),
) {
    use vaultfs::vault::{db::KeyDb, state::VaultState};
    let mut kdb = KeyDb::open(db, true).unwrap();
    let (mut state, _) = kdb.load_state().unwrap();
    edit(&mut state);
    let mac = state.compute_mac(&VaultState::mac_key(k_auth, &state.config.vault_id));
    let tx = kdb.conn.transaction().unwrap();
    KeyDb::save_state(&tx, db, &state, &mac).unwrap();
    tx.commit().unwrap();
}

/// Finding 1 (forging): K_auth is renewed by every revocation. A member removed with
/// `keyslot remove`, who kept their password and a copy of the database from before, knows
/// only the old K_auth: a state they forge with it is refused by the remaining members, and
/// one they roll back to the old auth epoch is refused on every machine that saw the
/// renewal, and anywhere by a member who changed their password since. (On a machine that
/// never saw the renewal, a member whose password predates it cannot tell: SECURITY.md.)
#[test]
fn a_removed_member_cannot_forge_the_key_database_after_the_revocation() {
    common::isolate_state();
    let v = TestVault::new(4096);
    let bob_pw = v.tmp.path().join("bob");
    fs::write(&bob_pw, "bob's password\n").unwrap();
    add_slot(&v, "bob", &bob_pw);
    // Bob keeps a copy of the database, and his password opens his slot in it: K_auth.
    let copy = v.tmp.path().join("copy");
    fs::create_dir(&copy).unwrap();
    fs::copy(v.vault.join("vaultfs.vault"), copy.join("vaultfs.vault")).unwrap();
    fs::copy(v.vault.join("vaultfs.db"), copy.join("vaultfs.db")).unwrap();
    let old_k_auth = vaultfs::vault::init::unlock(&copy, None, false, b"bob's password")
        .unwrap()
        .k_auth;
    run_ok(&mut v.with_password(&["keyslot", "remove", "--label", "bob"]));
    let db = v.vault.join("vaultfs.db");
    let current = fs::read(&db).unwrap();
    let unlocks = |state: &Path, pw: &Path| {
        vaultfs(state)
            .args(["fsck", "--passfile"])
            .arg(pw)
            .arg(&v.vault)
            .output()
            .unwrap()
    };
    let fresh = |name: &str| v.tmp.path().join(name);

    // 1. The current database, edited and re-MAC'd with the old K_auth: refused anywhere.
    forge(&db, &old_k_auth, |s| s.slots[0].label = "forged".into());
    for state in [v.state.clone(), fresh("fresh-1")] {
        let o = unlocks(&state, &v.passfile);
        assert_eq!(
            o.status.code(),
            Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // 2. Bob's old copy, edited, with an epoch above anything seen and re-MAC'd with the old
    // K_auth (a rollback of the auth epoch): refused on the machine that saw the renewal.
    let forged_old = |db: &Path| {
        fs::copy(copy.join("vaultfs.db"), db).unwrap();
        forge(db, &old_k_auth, |s| {
            s.config.epoch = 1000;
            s.slots.retain(|slot| slot.label != "bob");
            s.seals.retain(|seal| seal.slot_id == 1);
        });
    };
    forged_old(&db);
    let o = unlocks(&v.state, &v.passfile);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
        "{err}"
    );
    // ... but not on a machine that never saw it, while Alice's password predates the
    // revocation (the documented limit).
    let o = unlocks(&fresh("fresh-2"), &v.passfile);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // 3. Alice changes her password: from then on the rollback fails everywhere.
    fs::write(&db, &current).unwrap();
    let alice2 = v.tmp.path().join("alice2");
    fs::write(&alice2, "alice's new password\n").unwrap();
    run_ok(&mut v.with_password(&["passwd", "--new-passfile", alice2.to_str().unwrap()]));
    let after_passwd = fs::read(&db).unwrap();
    // Bob's forgery with Alice's current slot row put in (anchored above the old epoch).
    let alice_row = vaultfs::vault::db::KeyDb::open(&db, false)
        .unwrap()
        .load_state()
        .unwrap()
        .0
        .slots
        .into_iter()
        .find(|s| s.slot_id == 1)
        .unwrap();
    forged_old(&db);
    forge(&db, &old_k_auth, |s| {
        s.slots.retain(|slot| slot.slot_id != 1);
        s.slots.push(alice_row.clone());
    });
    for state in [v.state.clone(), fresh("fresh-3")] {
        let o = unlocks(&state, &alice2);
        assert!(
            !o.status.success(),
            "forged database accepted with Alice's new password"
        );
    }
    // With her old row, only her old password opens it: her new one does not.
    forged_old(&db);
    let o = unlocks(&fresh("fresh-4"), &alice2);
    assert_eq!(o.status.code(), Some(vaultfs::exitcodes::WRONG_PASSWORD));
    // The real database still opens.
    fs::write(&db, &after_passwd).unwrap();
    run_ok(&mut unlocks_cmd(&v, &alice2));
}

fn unlocks_cmd(v: &TestVault, pw: &Path) -> Command {
    let mut c = vaultfs(&v.state);
    c.args(["fsck", "--passfile"]).arg(pw).arg(&v.vault);
    c
}

/// Finding 3, through the writeback cache: the kernel writes a large file's pages with
/// several requests at once, so a write past the end can arrive before the ones before it.
/// That gap is not a hole: the file must not get the HOLES flag, and a chunk zeroed in its
/// middle still reads as EIO.
#[test]
fn a_large_file_written_through_the_page_cache_allows_no_holes() {
    each_chunk_size(|v, cs| {
        let data: Vec<u8> = (0..16 << 20).map(|i: usize| (i % 253) as u8 + 1).collect();
        fs::write(v.p("large"), &data).unwrap();
        v.unmount();
        let backing = backing_of(v, "large");
        let head = fs::read(&backing).unwrap();
        assert_eq!(&head[8..12], &[0, 2, 0, 0], "version 2, no HOLES flag");
        let k = (10 << 20) / cs as u64;
        let ct = cs as u64 + 28;
        let f = fs::OpenOptions::new().write(true).open(&backing).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; ct as usize], 144 + k * ct)
            .unwrap();
        drop(f);
        v.mount();
        assert_eq!(errno_of(fs::read(v.p("large"))), libc::EIO);
    });
}

/// Second review, finding 1: one damaged file (a byte appended in the backing store) made
/// `rotate --reencrypt` stop halfway, and with the rotation unfinished every revocation was
/// refused: a backing-store writer could freeze key management. The rotation now finishes,
/// moving the damaged file's header to the new generation without re-encrypting it.
#[test]
fn a_damaged_file_does_not_stall_a_rotation() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("good"), b"fine").unwrap();
    fs::write(v.p("bad"), vec![7u8; 5000]).unwrap();
    let fifo = std::ffi::CString::new(v.p("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    v.unmount();
    let bob = v.tmp.path().join("bob");
    fs::write(&bob, "bob's password\n").unwrap();
    add_slot(&v, "bob", &bob);
    for name in ["bad", "fifo"] {
        let f = fs::OpenOptions::new()
            .append(true)
            .open(backing_of(&v, name))
            .unwrap();
        std::io::Write::write_all(&mut &f, b"x").unwrap();
    }
    // Third review: a header that does not authenticate (one byte of writes_used flipped)
    // stopped the rotation too.
    v.mount();
    fs::write(v.p("bad-header"), b"header damaged").unwrap();
    v.unmount();
    let bh = backing_of(&v, "bad-header");
    let mut bytes = fs::read(&bh).unwrap();
    bytes[33] ^= 1;
    fs::write(&bh, &bytes).unwrap();
    run_ok(&mut v.with_password(&["keyslot", "remove", "--label", "bob"]));
    let o = v
        .with_password(&["rotate", "--reencrypt"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("damaged files"), "{err}");
    // Damaged files keep their keys: the revocation is not complete, and status says so.
    assert_eq!(status_of(&v)["revoked_since_reencrypt"], true);
    // And revocations stay possible.
    add_slot(&v, "carol", &bob);
    run_ok(&mut v.with_password(&["keyslot", "remove", "--label", "carol"]));
    v.mount();
    assert_eq!(fs::read(v.p("good")).unwrap(), b"fine");
    assert_eq!(errno_of(fs::read(v.p("bad"))), libc::EIO);
    assert_eq!(errno_of(fs::read(v.p("bad-header"))), libc::EIO);
    v.unmount();
    let o = v.with_password(&["fsck"]).output().unwrap();
    assert_eq!(o.status.code(), Some(vaultfs::exitcodes::DAMAGED));
}

/// Format upgrade, crash-safe: `passwd` on a format-1 vault (the committed test vector)
/// migrates the schema, renews K_auth, rewrites the state and raises the marker. Killed at
/// random moments, the vault always still opens, with the old password or the new one, and
/// its files read back.
#[test]
fn a_format_upgrade_killed_at_any_moment_leaves_a_vault_that_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let pw1 = tmp.path().join("pw1");
    fs::write(&pw1, "vaultfs test vector password\n").unwrap();
    let pw2 = tmp.path().join("pw2");
    fs::write(&pw2, "a new password\n").unwrap();
    let mut outcomes = [0u32; 2];
    for round in 0..16u64 {
        let vault = tmp.path().join(format!("v{round}"));
        let state = tmp.path().join(format!("s{round}"));
        assert!(
            Command::new("cp")
                .args(["-a", "tests/vectors/v1/vault"])
                .arg(&vault)
                .status()
                .unwrap()
                .success()
        );
        let mut child = vaultfs(&state)
            .args(["passwd", "--passfile"])
            .arg(&pw1)
            .arg("--new-passfile")
            .arg(&pw2)
            .arg(&vault)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(2_000 + round * 1_500));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Whatever the moment: one of the two passwords opens it, and a file decrypts.
        let opened = [&pw1, &pw2].iter().position(|pw| {
            vaultfs(&state)
                .args(["decrypt-path", "--passfile"])
                .arg(pw)
                .arg(&vault)
                .arg(".")
                .output()
                .unwrap()
                .status
                .success()
        });
        let which = opened.unwrap_or_else(|| {
            panic!("round {round} ({status:?}): neither password opens the vault")
        });
        outcomes[which] += 1;
        let pw = if which == 0 { &pw1 } else { &pw2 };
        let fsck = |repair: bool| {
            let mut c = vaultfs(&state);
            c.arg("fsck");
            if repair {
                c.arg("--repair");
            }
            c.arg("--passfile").arg(pw).arg(&vault).output().unwrap()
        };
        // A kill between a temporary file and its rename leaves the temporary: a leftover
        // that fsck --repair removes; nothing else may be wrong.
        let o = fsck(false);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let problems: Vec<&str> = out.lines().filter(|l| !l.contains("problems;")).collect();
        if !problems.is_empty() {
            eprintln!("round {round}: {problems:?}");
        }
        assert!(
            o.status.success() || problems.iter().all(|l| l.starts_with("Leftover")),
            "round {round} ({status:?}): {:?} {out} {err}",
            o.status
        );
        let o = fsck(true);
        assert!(o.status.success() || o.status.code() == Some(vaultfs::exitcodes::REPAIRED));
        let o = fsck(false);
        assert!(
            o.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    eprintln!(
        "upgrade kills: {} left the old password, {} the new one",
        outcomes[0], outcomes[1]
    );
}

/// Design review (3.7, 3.11): `status` says when someone was revoked and no `rotate
/// --reencrypt` has finished since (until then they read what their copy of the keys opens),
/// and a removed slot's ID is never given to another slot (audit entries name slots).
#[test]
fn status_tracks_an_incomplete_revocation_and_slot_ids_are_never_reused() {
    let v = TestVault::new(4096);
    let status = || status_of(&v);
    let pw = v.tmp.path().join("other");
    fs::write(&pw, "another password\n").unwrap();
    let add = |label: &str| add_slot(&v, label, &pw);
    assert_eq!(status()["revoked_since_reencrypt"], false);
    add("bob");
    let bob_id = status()["keyslots"][1]["id"].as_u64().unwrap();
    run_ok(&mut v.with_password(&["keyslot", "remove", "--label", "bob"]));
    add("carol");
    let s = status();
    let carol_id = s["keyslots"][1]["id"].as_u64().unwrap();
    assert!(carol_id > bob_id, "slot ID {bob_id} given out again");
    assert_eq!(s["revoked_since_reencrypt"], true);
    run_ok(&mut v.with_password(&["rotate"]));
    assert_eq!(
        status()["revoked_since_reencrypt"],
        true,
        "a rotation without --reencrypt"
    );
    run_ok(&mut v.with_password(&["rotate", "--reencrypt"]));
    assert_eq!(status()["revoked_since_reencrypt"], false);
}

/// Third review, finding 1: `sync_file_range` of a later range (PostgreSQL and RocksDB do
/// this) sends the daemon a write past its end while the earlier pages are still dirty in the
/// kernel, with nothing in flight to wait for. The gap is filled with sealed zeros (the
/// pages overwrite them later), so the file still allows no holes.
#[test]
fn sync_file_range_of_a_later_range_leaves_no_holes() {
    use std::os::fd::AsRawFd;
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    // 64 KiB with its last 16 KiB synced first; and (fourth review) 24 MiB with its last MiB
    // synced first, a gap larger than the first fix filled.
    let cases: [(&str, usize, i64); 2] =
        [("db", 65536, 49152), ("big", 24 << 20, (23 << 20) as i64)];
    for (name, len, tail) in cases {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        let f = fs::File::create(v.p(name)).unwrap();
        std::io::Write::write_all(&mut &f, &data).unwrap();
        // SAFETY: sync_file_range on an open fd.
        let r = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                tail,
                len as i64 - tail,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        assert_eq!(r, 0);
        drop(f);
        assert!(fs::read(v.p(name)).unwrap() == data, "{name} reads back");
    }
    v.unmount();
    for name in ["db", "big"] {
        let backing = backing_of(&v, name);
        assert_eq!(
            &fs::read(&backing).unwrap()[8..12],
            &[0, 2, 0, 0],
            "{name}: no HOLES flag"
        );
        let f = fs::OpenOptions::new().write(true).open(&backing).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4124], 144 + 2 * 4124).unwrap();
    }
    v.mount();
    for name in ["db", "big"] {
        assert_eq!(errno_of(fs::read(v.p(name))), libc::EIO, "{name}");
    }
    v.unmount();
}

/// Third review, finding 3: the damaged files an interrupted `rotate --reencrypt` met are
/// not known to the run that resumes it, so a resumed rotation never declares the
/// revocation complete; a later full one does.
#[test]
fn a_resumed_reencryption_does_not_declare_the_revocation_complete() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    fill_for_rotation(&v);
    let pw2 = v.tmp.path().join("pw2");
    fs::write(&pw2, "bob's password\n").unwrap();
    add_slot(&v, "bob", &pw2);
    run_ok(&mut v.with_password(&["keyslot", "remove", "--label", "bob"]));
    let status = || status_of(&v);
    interrupt_a_reencryption(&v, |n| {
        if status()["revoked_since_reencrypt"] == false {
            // A rotation that finished before the kill: revoke someone again.
            let label = format!("bob{n}");
            add_slot(&v, &label, &pw2);
            run_ok(&mut v.with_password(&["keyslot", "remove", "--label", &label]));
        }
    });
    run_ok(&mut v.with_password(&["rotate", "--reencrypt"]));
    assert_eq!(
        status()["revoked_since_reencrypt"],
        true,
        "after a resumed rotation"
    );
    run_ok(&mut v.with_password(&["rotate", "--reencrypt"]));
    assert_eq!(status()["revoked_since_reencrypt"], false);
}

/// Fourth review, findings 2 and 3: a damaged directory ID stopped every rotation (and so
/// every revocation), and files whose names were lost (moved by the backing-store writer, or
/// kept in lost+found by fsck --repair) kept their old keys, lost for good once the old
/// generation was destroyed. The rotation now finishes and moves every file key it can
/// reach without names; fsck --repair then recovers the names.
#[test]
fn rotation_moves_the_keys_of_files_whose_names_cannot_be_read() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir_all(v.p("d/sub")).unwrap();
    fs::write(v.p("d/sub/inside"), b"inside a damaged directory").unwrap();
    fs::create_dir(v.p("e")).unwrap();
    fs::write(v.p("moved"), b"moved by the writer").unwrap();
    fs::write(v.p("kept"), b"kept in lost+found").unwrap();
    v.unmount();
    // A name moved to another directory, and one moved and then put in lost+found.
    let moved = backing_of(&v, "moved");
    let e = backing_of(&v, "e");
    fs::rename(&moved, e.join(moved.file_name().unwrap())).unwrap();
    let kept = backing_of(&v, "kept");
    fs::rename(&kept, e.join(kept.file_name().unwrap())).unwrap();
    let o = v.with_password(&["fsck", "--repair"]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(vaultfs::exitcodes::REPAIRED),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The writer moves "kept"'s twin out again: "moved" is back in e/ by hand.
    let lf = v.vault.join("lost+found");
    let in_lf: Vec<_> = fs::read_dir(&lf)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(in_lf.len(), 2);
    fs::rename(&in_lf[0], e.join(in_lf[0].file_name().unwrap())).unwrap();
    // A damaged directory ID.
    let d = backing_of(&v, "d");
    let mut id = fs::read(d.join("vaultfs.dirid")).unwrap();
    id[20] ^= 1;
    fs::write(d.join("vaultfs.dirid"), &id).unwrap();
    let o = v.with_password(&["rotate"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Every file header in the vault (lost names, lost+found, the damaged directory's
    // file) names only the new generation (2): no key was lost with generation 1.
    fn headers(dir: &Path, out: &mut Vec<(PathBuf, u32, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                headers(&p, out);
            } else if p.is_file() && !name.starts_with("vaultfs.") {
                let b = fs::read(&p).unwrap();
                let g0 = u32::from_be_bytes(b[40..44].try_into().unwrap());
                let g1 = u32::from_be_bytes(b[92..96].try_into().unwrap());
                out.push((p, g0, g1));
            }
        }
    }
    let mut found = Vec::new();
    headers(&v.vault, &mut found);
    found.retain(|(p, _, _)| !p.ends_with("vaultfs.db"));
    assert_eq!(found.len(), 3, "{found:?}");
    for (p, g0, g1) in &found {
        assert!(
            *g0 != 1 && *g1 != 1 && (*g0 == 2 || *g1 == 2),
            "{p:?}: generations {g0}, {g1}"
        );
    }
}

/// Design review H4: every member anchored where the recovery slot is knows the K_auth that
/// seals the recovery files, so a removed member who writes the backing store can plant
/// `vaultfs.recovery.<N+1>` holding a master key of their own. `recover --rebuild-keystore`
/// made the newest generation it found active, and everything written after the rebuild
/// was wrapped under the planted key. Now two recovery files stop the rebuild (only the
/// owner knows whether a rotation was running), and a rebuild ends with a rotation to a
/// generation it made itself, under a fresh K_auth: nothing written afterwards opens with
/// any key the recovery files named.
#[test]
fn a_planted_recovery_file_never_becomes_the_generation_new_files_use() {
    use vaultfs::crypto::header::{FileHeader, HEADER_LEN};
    use vaultfs::crypto::keys::Key256;
    use vaultfs::crypto::{GenerationKeys, Keyring};
    use vaultfs::vault::recovery_file::RecoveryFileInfo;
    if !fuse_available() {
        return;
    }
    common::isolate_state();
    let v = TestVault::new(4096);
    let key_file = v.add_recovery_key();
    let bob_pw = v.tmp.path().join("bob");
    fs::write(&bob_pw, "bob's password\n").unwrap();
    add_slot(&v, "bob", &bob_pw);
    // Bob, a member, learns K_auth from his slot (in a copy, as any member can).
    let copy = v.tmp.path().join("copy");
    fs::create_dir(&copy).unwrap();
    for f in ["vaultfs.vault", "vaultfs.db"] {
        fs::copy(v.vault.join(f), copy.join(f)).unwrap();
    }
    let bob = vaultfs::vault::init::unlock(&copy, None, false, b"bob's password").unwrap();
    let (k_auth, vault_id) = (bob.k_auth.clone(), bob.keyring.vault_id);
    drop(bob);
    run_ok(&mut v.with_password(&["keyslot", "remove", "--label", "bob"]));
    // Removed, he plants generation 2 with a master key of his own, sealed as the real one.
    let real = fs::read(v.vault.join("vaultfs.recovery.1")).unwrap();
    let mut info = RecoveryFileInfo::decode(&real).unwrap();
    info.generation = 2;
    let bobs_master = Key256::random().unwrap();
    fs::write(
        v.vault.join("vaultfs.recovery.2"),
        info.seal(&k_auth, &bobs_master).unwrap(),
    )
    .unwrap();
    v.mount();
    fs::write(v.p("before"), b"written before the loss").unwrap();
    v.unmount();
    let db = v.vault.join("vaultfs.db");
    fs::write(&db, b"lost").unwrap();
    let o = v.rebuild_keystore(&key_file, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "two recovery files were trusted");
    assert!(
        err.contains("vaultfs.recovery.2") && err.contains("planted"),
        "{err}"
    );
    assert_eq!(fs::read(&db).unwrap(), b"lost", "nothing was touched");
    // The owner ran no rotation: the newer file goes aside, and the rebuild runs.
    fs::rename(
        v.vault.join("vaultfs.recovery.2"),
        v.tmp.path().join("planted"),
    )
    .unwrap();
    let o = v.rebuild_keystore(&key_file, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    v.mount();
    assert_eq!(fs::read(v.p("before")).unwrap(), b"written before the loss");
    fs::write(v.p("after"), b"written after the rebuild").unwrap();
    v.unmount();
    // No key the recovery files named opens anything written since: not Bob's planted one,
    // not generation 1's (which Bob held as a member).
    let old_master = {
        let seed =
            vaultfs::crypto::recovery_key::decode(fs::read_to_string(&key_file).unwrap().trim())
                .unwrap();
        vaultfs::vault::recovery_file::open(&real, &seed).unwrap().2
    };
    for name in ["after", "before"] {
        // (Found on the owner's machine: this process is Bob's, whose record of the vault's
        // K_auth the rebuilt database does not continue.)
        let o = run_ok(
            vaultfs(&v.state)
                .args(["encrypt-path", "--passfile"])
                .arg(&v.passfile)
                .arg(&v.vault)
                .arg(format!("/{name}")),
        );
        let backing = v.vault.join(String::from_utf8(o.stdout).unwrap().trim());
        let bytes = fs::read(backing).unwrap();
        let header = FileHeader::decode(&bytes[..HEADER_LEN]).unwrap();
        for g in header.generations().collect::<Vec<_>>() {
            for master in [&bobs_master, &old_master] {
                let keyring = Keyring::new(
                    vault_id,
                    GenerationKeys::derive(&vault_id, g, master.clone()),
                    None,
                );
                assert!(
                    header.unwrap_key(&keyring).is_err(),
                    "{name}: a key from the recovery files opens its header (generation {g})"
                );
            }
        }
    }
    // The recovery file left is resealed under the rebuilt database's K_auth, not Bob's.
    let now = fs::read_dir(&v.vault)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vaultfs.recovery."))
        .unwrap();
    let resealed = RecoveryFileInfo::decode(&fs::read(v.vault.join(&now)).unwrap()).unwrap();
    assert_ne!(
        resealed.slot_blob, info.slot_blob,
        "recovery slot rewrapped"
    );
}

/// Final review, finding 1: a directory planted under a name vaultfs writes (the staged
/// directory ID `vaultfs.dirid.new`, the next generation's recovery file) made every
/// `rotate` fail with EISDIR, and with the rotation unfinished every revocation was refused.
/// vaultfs owns those names: a directory there is removed, and the rotation finishes.
#[test]
fn a_directory_planted_under_a_reserved_name_does_not_stall_a_rotation() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    // A recovery slot, so that the rotation writes a recovery file.
    v.add_recovery_key();
    v.mount();
    fs::create_dir(v.p("sub")).unwrap();
    fs::write(v.p("sub/file"), b"kept").unwrap();
    v.unmount();
    let sub = backing_of(&v, "sub");
    // Second review: a tree over 64 levels deep still stalled it.
    let deep = (0..100).fold(v.vault.join("vaultfs.dirid.new"), |p, _| p.join("d"));
    for planted in [
        sub.join("vaultfs.dirid.new/deep/er"),
        deep,
        v.vault.join("vaultfs.recovery.2/x"),
    ] {
        fs::create_dir_all(&planted).unwrap();
        fs::write(planted.join("junk"), b"x").unwrap();
    }
    let odd = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff\xfe");
    fs::write(sub.join("vaultfs.dirid.new").join(odd), b"x").unwrap();
    let o = v.with_password(&["rotate"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(v.vault.join("vaultfs.recovery.2").is_file());
    // Third review: a process that plants the directory again every millisecond, during
    // the rotation, in every directory.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let planter = {
        let (stop, vault) = (stop.clone(), v.vault.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for dir in [vault.clone(), sub_of(&vault)] {
                    let _ = fs::create_dir(dir.join("vaultfs.dirid.new"));
                    let _ = fs::create_dir(dir.join("vaultfs.recovery.3"));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let o = v.with_password(&["rotate"]).output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    planter.join().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The vault is whole, and revocations are possible again.
    v.mount();
    assert_eq!(fs::read(v.p("sub/file")).unwrap(), b"kept");
    v.unmount();
    let pw2 = v.tmp.path().join("pw2");
    fs::write(&pw2, "second password\n").unwrap();
    run_ok(&mut v.with_password(&["passwd", "--new-passfile", pw2.to_str().unwrap()]));
}

/// The one subdirectory of a vault's backing root (`sub` above).
fn sub_of(vault: &Path) -> PathBuf {
    fs::read_dir(vault)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vaultfs.")
        })
        .unwrap()
}
