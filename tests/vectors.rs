//! Fixed test vectors: a vault made by this version's code, committed under tests/vectors/v1.
//! If a change breaks the on-disk format, these fail. Regenerate only with a format version
//! bump: `VAULTFS_WRITE_VECTORS=1 cargo test --test vectors generate_vectors` (without the
//! variable the generator writes to a temporary directory and checks its own output).

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;
use serde_json::{Value, json};
use vaultfs::crypto::chunk::ChunkLayout;
use vaultfs::crypto::dirid::{open_dir_id, seal_dir_id};
use vaultfs::crypto::keys::{Key256, random_array};
use vaultfs::crypto::names::{
    BackingName, DIRID_FILE, EntryKind, classify, decrypt_name, encrypt_name, read_side_file,
};
use vaultfs::crypto::{GenerationKeys, Keyring, blob, file, recovery_key};
use vaultfs::vault::init::{init, open_keystore};
use vaultfs::vault::recovery_file;

const PASSWORD: &str = "vaultfs test vector password";

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v1")
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// The plaintext tree the vector vault holds: (path, kind, content or target).
fn expected_tree() -> Vec<(String, &'static str, Vec<u8>)> {
    let long = format!("{}.txt", "L".repeat(200));
    vec![
        ("hello.txt".into(), "file", b"Hello, vaultfs!\n".to_vec()),
        ("empty".into(), "file", Vec::new()),
        ("two-chunks.bin".into(), "file", pattern(4096 + 100)),
        ("docs".into(), "dir", Vec::new()),
        (
            format!("docs/{long}"),
            "file",
            b"a file with a long name\n".to_vec(),
        ),
        ("docs/link".into(), "symlink", b"../hello.txt".to_vec()),
    ]
}

fn put_entry(dir: &Path, name: BackingName) -> PathBuf {
    if let BackingName::Long {
        side_file, encoded, ..
    } = &name
    {
        fs::write(dir.join(side_file), encoded).unwrap();
    }
    dir.join(name.entry())
}

#[test]
fn generate_vectors() {
    common::isolate_state();
    let tmp = tempfile::tempdir().unwrap();
    let write = std::env::var_os("VAULTFS_WRITE_VECTORS").is_some();
    let out = if write {
        vectors_dir()
    } else {
        tmp.path().join("v1")
    };
    generate(&out);
    check_vectors(&out);
}

fn generate(out: &Path) {
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out).unwrap();
    let vault = out.join("vault");
    let report = init(&common::fast_options(&vault), PASSWORD.as_bytes()).unwrap();
    let unlocked = open_keystore(&vault, None, false)
        .unwrap()
        .unlock_with_password(PASSWORD.as_bytes(), None)
        .unwrap();
    let kr = &unlocked.keyring;
    let layout = unlocked.layout();
    let (root_id, _) =
        open_dir_id(kr, &[0; 16], "", &fs::read(vault.join(DIRID_FILE)).unwrap()).unwrap();
    let max = unlocked.state().config.longname_max as usize;

    let mut dirs = vec![(String::new(), vault.clone(), root_id)];
    for (path, kind, content) in expected_tree() {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
        let (_, pdir, pid) = dirs.iter().find(|(p, _, _)| p == parent).unwrap().clone();
        let enc = encrypt_name(kr.active(), &pid, name.as_bytes()).unwrap();
        let backing = put_entry(&pdir, BackingName::new(enc, max));
        match kind {
            "file" => fs::write(&backing, file::seal_file(kr, layout, &content).unwrap()).unwrap(),
            "symlink" => {
                symlink(blob::seal_symlink(kr.active(), &content).unwrap(), &backing).unwrap()
            }
            "dir" => {
                fs::create_dir(&backing).unwrap();
                let id: [u8; 16] = random_array().unwrap();
                let entry = backing.file_name().unwrap().to_str().unwrap();
                fs::write(
                    backing.join(DIRID_FILE),
                    seal_dir_id(kr.active(), &kr.vault_id, &pid, entry, &id),
                )
                .unwrap();
                dirs.push((path.clone(), backing.clone(), id));
            }
            _ => unreachable!(),
        }
    }

    // Deterministic primitives from a fixed master key: checked by re-computation.
    let mk = Key256::from_slice(&mut [0x42u8; 32]).unwrap();
    let fixed = GenerationKeys::derive(&[0x24u8; 16], 7, mk);
    let name = encrypt_name(&fixed, &[0x99u8; 16], "Grüße.txt".as_bytes()).unwrap();
    let vectors = json!({
        "format_version": 1,
        "password": PASSWORD,
        "recovery_key": report.recovery_key.as_ref().unwrap().as_str(),
        "fixed": {
            "vault_id": HEXLOWER.encode(&[0x24u8; 16]),
            "generation": 7,
            "master_key": HEXLOWER.encode(&[0x42u8; 32]),
            "header_wrap_key": HEXLOWER.encode(fixed.header_wrap.expose()),
            "names_key": HEXLOWER.encode(fixed.names.expose()),
            "dirid_key": HEXLOWER.encode(fixed.dirid.expose()),
            "symlink_key": HEXLOWER.encode(fixed.symlink.expose()),
            "xattr_name_key": HEXLOWER.encode(fixed.xattr_name.expose()),
            "xattr_value_key": HEXLOWER.encode(fixed.xattr_value.expose()),
            "dir_id": HEXLOWER.encode(&[0x99u8; 16]),
            "name": "Grüße.txt",
            "encrypted_name": name,
            "xattr_name": "user.comment",
            "encrypted_xattr_name": blob::encrypt_xattr_name(&fixed, b"user.comment").unwrap(),
        },
        "tree": expected_tree().iter().map(|(p, k, c)| json!({"path": p, "kind": k, "content_hex": HEXLOWER.encode(c)})).collect::<Vec<_>>(),
    });
    fs::write(
        out.join("vectors.json"),
        serde_json::to_string_pretty(&vectors).unwrap() + "\n",
    )
    .unwrap();
}

/// Decrypts a backing directory recursively, as the FUSE layer will.
fn walk(
    kr: &Keyring,
    layout: ChunkLayout,
    dir: &Path,
    dir_id: &[u8; 16],
    prefix: &str,
    out: &mut Vec<(String, String, Vec<u8>)>,
) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let entry = e.file_name().into_string().unwrap();
        let encoded = match classify(&entry) {
            EntryKind::Encrypted => entry.clone(),
            EntryKind::LongName { side_file } => {
                read_side_file(&entry, &fs::read(dir.join(side_file)).unwrap()).unwrap()
            }
            EntryKind::Reserved => continue,
            EntryKind::Foreign => panic!("foreign entry {entry}"),
        };
        let (name, _) = decrypt_name(kr, dir_id, &encoded).unwrap();
        let path = format!("{prefix}{}", String::from_utf8(name).unwrap());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            let (id, _) = open_dir_id(
                kr,
                dir_id,
                &entry,
                &fs::read(e.path().join(DIRID_FILE)).unwrap(),
            )
            .unwrap();
            out.push((path.clone(), "dir".into(), Vec::new()));
            walk(kr, layout, &e.path(), &id, &format!("{path}/"), out);
        } else if ft.is_symlink() {
            let target = fs::read_link(e.path()).unwrap();
            let plain = blob::open_symlink(kr, target.as_os_str().as_encoded_bytes()).unwrap();
            out.push((path, "symlink".into(), plain));
        } else {
            out.push((
                path,
                "file".into(),
                file::open_file(kr, layout, &fs::read(e.path()).unwrap()).unwrap(),
            ));
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_dir(&e.path(), &dst);
        } else if ft.is_symlink() {
            symlink(fs::read_link(e.path()).unwrap(), dst).unwrap();
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn committed_vault_still_unlocks_and_decrypts() {
    common::isolate_state();
    check_vectors(&vectors_dir());
}

/// Unlocks the vault under `dir` with the password in its vectors.json and checks that it
/// decrypts to the listed tree, and that the recovery key opens its recovery file.
fn check_vectors(dir: &Path) {
    let v: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("vectors.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let vault = tmp.path().join("vault");
    copy_dir(&dir.join("vault"), &vault);

    let unlocked = open_keystore(&vault, None, false)
        .unwrap()
        .unlock_with_password(v["password"].as_str().unwrap().as_bytes(), None)
        .unwrap();
    let kr = &unlocked.keyring;
    let (root_id, _) =
        open_dir_id(kr, &[0; 16], "", &fs::read(vault.join(DIRID_FILE)).unwrap()).unwrap();
    let mut tree = Vec::new();
    walk(kr, unlocked.layout(), &vault, &root_id, "", &mut tree);
    let mut want: Vec<(String, String, Vec<u8>)> = v["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let hex = e["content_hex"].as_str().unwrap();
            (
                e["path"].as_str().unwrap().into(),
                e["kind"].as_str().unwrap().into(),
                HEXLOWER.decode(hex.as_bytes()).unwrap(),
            )
        })
        .collect();
    want.sort();
    tree.sort();
    assert_eq!(tree, want);

    // The recovery key opens the recovery file to the same master key.
    let seed = recovery_key::decode(v["recovery_key"].as_str().unwrap()).unwrap();
    let (_, _, mk) = recovery_file::open(
        &fs::read(vault.join(recovery_file::file_name(1))).unwrap(),
        &seed,
    )
    .unwrap();
    assert_eq!(mk.expose(), kr.active().master_key.expose());
}

#[test]
fn fixed_key_derivations_and_deterministic_encryptions_are_unchanged() {
    let v: Value =
        serde_json::from_str(&fs::read_to_string(vectors_dir().join("vectors.json")).unwrap())
            .unwrap();
    let f = &v["fixed"];
    let hex = |k: &str| HEXLOWER.decode(f[k].as_str().unwrap().as_bytes()).unwrap();
    let vault_id: [u8; 16] = hex("vault_id").try_into().unwrap();
    let mut mk = hex("master_key");
    let keys = GenerationKeys::derive(
        &vault_id,
        f["generation"].as_u64().unwrap() as u32,
        Key256::from_slice(&mut mk).unwrap(),
    );
    assert_eq!(keys.header_wrap.expose().to_vec(), hex("header_wrap_key"));
    assert_eq!(keys.names.expose().to_vec(), hex("names_key"));
    assert_eq!(keys.dirid.expose().to_vec(), hex("dirid_key"));
    assert_eq!(keys.symlink.expose().to_vec(), hex("symlink_key"));
    assert_eq!(keys.xattr_name.expose().to_vec(), hex("xattr_name_key"));
    assert_eq!(keys.xattr_value.expose().to_vec(), hex("xattr_value_key"));
    let dir_id: [u8; 16] = hex("dir_id").try_into().unwrap();
    let name = f["name"].as_str().unwrap().as_bytes();
    assert_eq!(
        encrypt_name(&keys, &dir_id, name).unwrap(),
        f["encrypted_name"].as_str().unwrap()
    );
    assert_eq!(
        blob::encrypt_xattr_name(&keys, f["xattr_name"].as_str().unwrap().as_bytes()).unwrap(),
        f["encrypted_xattr_name"].as_str().unwrap()
    );
}
