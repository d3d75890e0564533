//! The tamper campaign: thousands of random mutations of backing files, read back through a
//! fresh mount each batch. Every mutated object must give EIO or ENOENT, every other object
//! its exact bytes: the count of wrong bytes returned must be 0. Prints the count per class.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{TestVault, backing_of, fuse_available};
use vaultfs::crypto::header::HEADER_LEN;
use vaultfs::crypto::names::DIRID_FILE;

const CS: usize = 4096;
const CT: usize = CS + 28;
const BATCHES: u64 = 160;

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn chunks_of(len: usize) -> usize {
    (len.saturating_sub(HEADER_LEN)).div_ceil(CT)
}

#[test]
fn thousands_of_mutations_never_return_wrong_bytes() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(CS as u32);
    v.mount();
    let mut rng = Rng(0x5eed);
    let dirs = ["alpha", "beta", "gamma", "delta"];
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for d in dirs {
        fs::create_dir(v.p(d)).unwrap();
        for i in 0..20 {
            let len = match i % 4 {
                0 => rng.next(100),
                1 => CS * (1 + rng.next(3)),
                _ => rng.next(5 * CS) + 1,
            };
            let content: Vec<u8> = (0..len).map(|_| rng.next(256) as u8).collect();
            let name = if i == 7 {
                format!("{d}/{}", "long-name-".repeat(22))
            } else {
                format!("{d}/file{i}")
            };
            fs::write(v.p(&name), &content).unwrap();
            files.insert(name, content);
        }
        std::os::unix::fs::symlink(format!("target-of-{d}"), v.p(&format!("{d}/link"))).unwrap();
    }
    v.unmount();
    let backing: BTreeMap<String, PathBuf> = files
        .keys()
        .map(|f| (f.clone(), backing_of(&v, f)))
        .collect();
    let dir_backing: BTreeMap<&str, PathBuf> =
        dirs.iter().map(|d| (*d, backing_of(&v, d))).collect();
    let links: BTreeMap<&str, PathBuf> = dirs
        .iter()
        .map(|d| (*d, backing_of(&v, &format!("{d}/link"))))
        .collect();
    let pristine = v.tmp.path().join("pristine");
    copy_tree(&v.vault, &pristine);

    let classes = [
        "bit flip",
        "chunk swap in file",
        "chunk copied across files",
        "cut at chunk boundary",
        "cut mid-chunk",
        "header swap",
        "name moved across dirs",
        "directory ID swap",
        "side file deleted",
        "side file duplicated",
        "symlink target flip",
        "chunk zeroed",
        "chunk punched",
    ];
    let mut tried: BTreeMap<&str, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut wrong_bytes = 0u64;
    let mut unexpected: Vec<String> = Vec::new();
    let names: Vec<String> = files.keys().cloned().collect();
    for _batch in 0..BATCHES {
        copy_tree(&pristine, &v.vault);
        let mut affected: BTreeMap<String, &str> = BTreeMap::new();
        let mut used_dirs = std::collections::HashSet::new();
        for _ in 0..40 {
            let class = classes[rng.next(classes.len())];
            let f = &names[rng.next(names.len())];
            if affected.contains_key(f) {
                continue;
            }
            let d = f.split('/').next().unwrap();
            let bp = &backing[f];
            let mut bytes = fs::read(bp).unwrap();
            let n = chunks_of(bytes.len());
            let done = match class {
                "bit flip" => {
                    let i = rng.next(bytes.len());
                    bytes[i] ^= 1 << rng.next(8);
                    fs::write(bp, &bytes).unwrap();
                    true
                }
                "chunk swap in file" if n >= 2 && bytes.len() >= HEADER_LEN + 2 * CT => {
                    let (a, b) = (
                        0,
                        1 + rng.next((n - 1).min((bytes.len() - HEADER_LEN) / CT - 1).max(1)),
                    );
                    if HEADER_LEN + (b + 1) * CT > bytes.len() {
                        false
                    } else {
                        let ca = bytes[HEADER_LEN + a * CT..HEADER_LEN + (a + 1) * CT].to_vec();
                        let cb = bytes[HEADER_LEN + b * CT..HEADER_LEN + (b + 1) * CT].to_vec();
                        bytes[HEADER_LEN + a * CT..HEADER_LEN + (a + 1) * CT].copy_from_slice(&cb);
                        bytes[HEADER_LEN + b * CT..HEADER_LEN + (b + 1) * CT].copy_from_slice(&ca);
                        fs::write(bp, &bytes).unwrap();
                        true
                    }
                }
                "chunk copied across files" => {
                    // (The donor may have been moved away earlier in this batch.)
                    let other =
                        fs::read(&backing[&names[rng.next(names.len())]]).unwrap_or_default();
                    let len = CT
                        .min(bytes.len() - HEADER_LEN)
                        .min(other.len().saturating_sub(HEADER_LEN));
                    if len < 28 || other == bytes {
                        false
                    } else {
                        bytes[HEADER_LEN..HEADER_LEN + len]
                            .copy_from_slice(&other[HEADER_LEN..HEADER_LEN + len]);
                        fs::write(bp, &bytes).unwrap();
                        true
                    }
                }
                // Zeros where a chunk was: a file that never had a hole must not read it as
                // one (issue 14, finding 3).
                "chunk zeroed" => {
                    let k = rng.next(n);
                    let end = (HEADER_LEN + (k + 1) * CT).min(bytes.len());
                    bytes[HEADER_LEN + k * CT..end].fill(0);
                    fs::write(bp, &bytes).unwrap();
                    true
                }
                "chunk punched" => {
                    let k = rng.next(n) as u64;
                    let at = HEADER_LEN as u64 + k * CT as u64;
                    let file = fs::OpenOptions::new().write(true).open(bp).unwrap();
                    rustix::fs::fallocate(
                        &file,
                        rustix::fs::FallocateFlags::PUNCH_HOLE
                            | rustix::fs::FallocateFlags::KEEP_SIZE,
                        at,
                        (CT as u64).min(bytes.len() as u64 - at),
                    )
                    .unwrap();
                    true
                }
                "cut at chunk boundary" if n >= 2 => {
                    bytes.truncate(HEADER_LEN + (n - 1 - rng.next(n - 1)) * CT);
                    fs::write(bp, &bytes).unwrap();
                    true
                }
                "cut mid-chunk" => {
                    let cut = HEADER_LEN + rng.next(bytes.len() - HEADER_LEN);
                    bytes.truncate(cut);
                    fs::write(bp, &bytes).unwrap();
                    true
                }
                "header swap" => {
                    let g = &names[rng.next(names.len())];
                    if g == f || affected.contains_key(g) {
                        false
                    } else {
                        let mut other = fs::read(&backing[g]).unwrap();
                        let h = bytes[..HEADER_LEN].to_vec();
                        bytes[..HEADER_LEN].copy_from_slice(&other[..HEADER_LEN]);
                        other[..HEADER_LEN].copy_from_slice(&h);
                        fs::write(bp, &bytes).unwrap();
                        fs::write(&backing[g], &other).unwrap();
                        affected.insert(g.clone(), class);
                        true
                    }
                }
                "name moved across dirs" if !f.contains("long-name") => {
                    let to = dirs[(dirs.iter().position(|x| *x == d).unwrap() + 1) % dirs.len()];
                    fs::rename(bp, dir_backing[to].join(bp.file_name().unwrap())).unwrap();
                    true
                }
                "directory ID swap" if !used_dirs.contains(d) => {
                    let other = dirs[(dirs.iter().position(|x| *x == d).unwrap() + 1) % dirs.len()];
                    if used_dirs.contains(other) {
                        false
                    } else {
                        let (a, b) = (
                            dir_backing[d].join(DIRID_FILE),
                            dir_backing[other].join(DIRID_FILE),
                        );
                        let (ba, bb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
                        fs::write(&a, bb).unwrap();
                        fs::write(&b, ba).unwrap();
                        used_dirs.insert(d);
                        used_dirs.insert(other);
                        for g in names.iter().filter(|g| {
                            g.starts_with(&format!("{d}/")) || g.starts_with(&format!("{other}/"))
                        }) {
                            affected.insert(g.clone(), class);
                        }
                        affected.insert(format!("{d}/link"), class);
                        affected.insert(format!("{other}/link"), class);
                        true
                    }
                }
                "side file deleted" if f.contains("long-name") => {
                    fs::remove_file(format!("{}.name", bp.display())).unwrap();
                    true
                }
                "side file duplicated" if f.contains("long-name") => {
                    let other = names
                        .iter()
                        .find(|g| g.contains("long-name") && *g != f)
                        .unwrap();
                    fs::copy(
                        format!("{}.name", backing[other].display()),
                        format!("{}.name", bp.display()),
                    )
                    .unwrap();
                    true
                }
                // Once per link and batch: a second flip of the same character can put the
                // original back (B -> A -> B), which is no tampering at all.
                "symlink target flip"
                    if !used_dirs.contains(d) && !affected.contains_key(&format!("{d}/link")) =>
                {
                    let link = &links[d];
                    let mut t = fs::read_link(link).unwrap().into_os_string().into_vec();
                    let i = rng.next(t.len());
                    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
                    fs::remove_file(link).unwrap();
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), link).unwrap();
                    affected.insert(format!("{d}/link"), class);
                    false // counted below, its file is the link
                }
                _ => false,
            };
            if done {
                affected.insert(f.clone(), class);
            }
            if done || class == "symlink target flip" && affected.contains_key(&format!("{d}/link"))
            {
                *tried.entry(class).or_default() += 1;
            }
        }
        v.mount();
        for (name, content) in &files {
            match (fs::read(v.p(name)), affected.get(name)) {
                (Ok(got), None) => assert!(got == *content, "{name} untouched but differs"),
                (Ok(got), Some(class)) => {
                    let wrong = got.iter().zip(content).filter(|(a, b)| a != b).count() as u64
                        + got.len().abs_diff(content.len()) as u64;
                    wrong_bytes += wrong;
                    // A long name's side file only serves listings; a lookup by name needs
                    // only the hashed entry, so the (intact) content still reads exactly.
                    if wrong == 0 && class.starts_with("side file") {
                        *outcomes.entry("read intact by name").or_default() += 1;
                    } else {
                        unexpected.push(format!("{name} read {} bytes after '{class}'", got.len()));
                    }
                }
                (Err(e), None) => panic!("{name} untouched but unreadable: {e}"),
                (Err(e), Some(class)) => {
                    let code = e.raw_os_error().unwrap_or(0);
                    assert!(
                        code == libc::EIO || code == libc::ENOENT,
                        "{name} after '{class}': {e}"
                    );
                    *outcomes
                        .entry(if code == libc::EIO { "EIO" } else { "ENOENT" })
                        .or_default() += 1;
                }
            }
        }
        for d in dirs {
            let link = format!("{d}/link");
            match (fs::read_link(v.p(&link)), affected.contains_key(&link)) {
                (Ok(t), false) => assert_eq!(t, Path::new(&format!("target-of-{d}"))),
                (Ok(t), true) => panic!("{link} read as {t:?} after tampering"),
                (Err(e), true) => assert!(matches!(
                    e.raw_os_error(),
                    Some(libc::EIO) | Some(libc::ENOENT)
                )),
                (Err(e), false) => panic!("{link} untouched but unreadable: {e}"),
            }
        }
        v.unmount();
    }
    let total: u64 = tried.values().sum();
    eprintln!(
        "tamper campaign: {total} mutations in {BATCHES} batches, wrong bytes returned: {wrong_bytes}"
    );
    for (class, n) in &tried {
        eprintln!("  {class:<28} {n}");
    }
    eprintln!("  outcomes: {outcomes:?}");
    assert!(
        unexpected.is_empty(),
        "mutated objects that read: {unexpected:?}"
    );
    assert_eq!(wrong_bytes, 0);
    assert!(total >= 1000, "at least a thousand mutations ({total})");
    assert!(
        classes
            .iter()
            .all(|c| tried.get(c).copied().unwrap_or(0) > 0),
        "every class tried: {tried:?}"
    );
}

use std::os::unix::ffi::{OsStrExt, OsStringExt};
