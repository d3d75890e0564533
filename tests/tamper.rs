//! Tampering with the backing directory, then reading through a fresh mount: every change
//! gives EIO or ENOENT, never wrong bytes, never a hang, and the rest of the vault still works.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use common::{TestVault, backing_of, fuse_available};
use vaultfs::crypto::header::HEADER_LEN;
use vaultfs::crypto::names::DIRID_FILE;

const CS: usize = 4096;
const CT: usize = CS + 28;

fn data(seed: u8) -> Vec<u8> {
    (0..3 * CS + 100)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn chunk_range(i: usize) -> std::ops::Range<usize> {
    HEADER_LEN + i * CT..HEADER_LEN + (i + 1) * CT
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = fs::read(path).unwrap();
    f(&mut b);
    fs::write(path, b).unwrap();
}

/// Files whose contents the test damages: a whole read fails with EIO, fsck names each.
const CONTENT_DAMAGED: [&str; 11] = [
    "flip",
    "swap",
    "copy",
    "cut_boundary",
    "cut_mid",
    "cut_last",
    "hdr_a",
    "hdr_b",
    "zero_hdr",
    "empty",
    "cut_to_empty",
];

#[test]
fn tampered_backing_files_give_eio_and_the_rest_keeps_working() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(CS as u32);
    v.mount();
    let files = [
        "flip",
        "swap",
        "copy",
        "cut_boundary",
        "cut_mid",
        "cut_last",
        "hdr_a",
        "hdr_b",
        "zero_hdr",
        "empty",
        "good",
        "donor",
        "victim_link",
        "victim_fifo",
        "cut_to_empty",
    ];
    for (i, name) in files.iter().enumerate() {
        fs::write(v.p(name), data(i as u8)).unwrap();
    }
    for d in ["d1", "d2", "src", "dst", "good_dir"] {
        fs::create_dir(v.p(d)).unwrap();
        fs::write(v.p(&format!("{d}/inner")), format!("inner of {d}")).unwrap();
    }
    let long = "Q".repeat(220);
    fs::write(v.p(&long), b"long named").unwrap();
    v.unmount();

    let b = |rel: &str| backing_of(&v, rel);
    edit(&b("flip"), |f| f[chunk_range(1).start + 40] ^= 0x01);
    edit(&b("swap"), |f| {
        let c0 = f[chunk_range(0)].to_vec();
        let c1 = f[chunk_range(1)].to_vec();
        f[chunk_range(0)].copy_from_slice(&c1);
        f[chunk_range(1)].copy_from_slice(&c0);
    });
    let donor = fs::read(b("donor")).unwrap();
    edit(&b("copy"), |f| {
        f[chunk_range(1)].copy_from_slice(&donor[chunk_range(1)])
    });
    edit(&b("cut_boundary"), |f| f.truncate(chunk_range(2).start));
    edit(&b("cut_mid"), |f| f.truncate(chunk_range(1).start + 100));
    edit(&b("cut_last"), |f| f.truncate(f.len() - 1));
    // Cut back to exactly an empty file's length: a valid size, but no valid last chunk.
    edit(&b("cut_to_empty"), |f| f.truncate(HEADER_LEN + 28));
    let (ha, hb) = (fs::read(b("hdr_a")).unwrap(), fs::read(b("hdr_b")).unwrap());
    edit(&b("hdr_a"), |f| {
        f[..HEADER_LEN].copy_from_slice(&hb[..HEADER_LEN])
    });
    edit(&b("hdr_b"), |f| {
        f[..HEADER_LEN].copy_from_slice(&ha[..HEADER_LEN])
    });
    edit(&b("zero_hdr"), |f| f[..HEADER_LEN].fill(0));
    fs::write(b("empty"), b"").unwrap();
    // A valid directory ID file copied into another directory.
    fs::copy(b("d1").join(DIRID_FILE), b("d2").join(DIRID_FILE)).unwrap();
    // An encrypted name moved into another directory.
    fs::rename(
        b("src/inner"),
        b("dst").join(b("src/inner").file_name().unwrap()),
    )
    .unwrap();
    // A symlink to a real file, and a FIFO, planted under existing encrypted names.
    let link = b("victim_link");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let fifo = b("victim_fifo");
    fs::remove_file(&fifo).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // A FIFO in place of a directory ID file and of a long name's side file: no hang.
    fs::remove_file(b("good_dir").join(DIRID_FILE)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        b("good_dir").join(DIRID_FILE),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let side = format!("{}.name", b(&long).display());
    fs::remove_file(&side).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        Path::new(&side),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();

    v.mount();
    for name in CONTENT_DAMAGED {
        assert_eq!(
            errno_of(fs::read(v.p(name))),
            libc::EIO,
            "{name}: whole-file read must fail with EIO"
        );
    }
    // A read that touches only an intact chunk of a damaged file still works; one that
    // touches the damaged chunk fails whole.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(v.p("flip"));
    if let Ok(f) = f {
        let mut buf = vec![0u8; CS];
        if f.read_exact_at(&mut buf, 0).is_ok() {
            assert_eq!(buf, data(0)[..CS]);
        }
        assert_eq!(errno_of(f.read_exact_at(&mut buf, CS as u64)), libc::EIO);
    }
    assert_eq!(
        errno_of(fs::read_dir(v.p("d2")).map(|d| d.count())),
        libc::EIO,
        "copied directory ID"
    );
    assert_eq!(errno_of(fs::read(v.p("d2/inner"))), libc::EIO);
    // dst has its own "inner"; the entry moved in from src does not decrypt there, so it is
    // hidden, and never read as dst's file.
    assert_eq!(fs::read(v.p("dst/inner")).unwrap(), b"inner of dst");
    let listed: Vec<_> = fs::read_dir(v.p("dst"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, ["inner"]);
    assert_eq!(
        errno_of(fs::read(v.p("src/inner"))),
        libc::ENOENT,
        "moved name is gone from its directory"
    );
    // The planted symlink is not followed to /etc/passwd: its target does not decrypt.
    assert_eq!(errno_of(fs::read_link(v.p("victim_link"))), libc::EIO);
    assert_ne!(
        fs::read(v.p("victim_link")).ok(),
        fs::read("/etc/passwd").ok()
    );
    // A planted FIFO is damage (format 2 keeps the vault's own FIFOs in header-only files):
    // EIO, never a FIFO that a reader would block on.
    assert_eq!(
        errno_of(fs::symlink_metadata(v.p("victim_fifo"))),
        libc::EIO
    );
    assert_eq!(
        errno_of(fs::read_dir(v.p("good_dir")).map(|d| d.count())),
        libc::EIO,
        "FIFO as directory ID"
    );
    assert!(
        !fs::read_dir(&v.mnt)
            .unwrap()
            .any(|e| e.unwrap().file_name().len() == 224),
        "long name with a FIFO side file is hidden"
    );
    // The rest of the vault keeps working.
    assert_eq!(fs::read(v.p("good")).unwrap(), data(10));
    assert_eq!(fs::read(v.p("donor")).unwrap(), data(11));
    assert_eq!(fs::read(v.p("d1/inner")).unwrap(), b"inner of d1");
    fs::write(v.p("new"), b"still writable").unwrap();
    assert_eq!(fs::read(v.p("new")).unwrap(), b"still writable");
    // Each failure is logged once, with the backing path, however often it is read.
    for _ in 0..3 {
        let _ = fs::read(v.p("swap"));
    }
    v.unmount();
    let mut log = String::new();
    for e in fs::read_dir(v.state.join("vaultfs")).unwrap().flatten() {
        if let Ok(text) = fs::read_to_string(e.path().join("daemon.log")) {
            log.push_str(&text);
        }
    }
    // fsck names every damaged object (and only those).
    let o = v.with_password(&["fsck", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(vaultfs::exitcodes::DAMAGED));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    let plain: Vec<&str> = problems
        .iter()
        .filter_map(|p| p["plain_path"].as_str())
        .collect();
    for damaged in CONTENT_DAMAGED
        .iter()
        .chain(&["victim_link", "d2", "good_dir"])
    {
        assert!(plain.contains(damaged), "fsck reports {damaged}: {plain:?}");
    }
    for good in ["good", "donor", "d1/inner", "dst/inner", "new"] {
        assert!(!plain.contains(&good), "fsck does not report {good}");
    }
    let kinds: Vec<&str> = problems.iter().filter_map(|p| p["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"lost-name"),
        "the name moved into dst is lost there: {kinds:?}"
    );
    assert!(
        kinds.contains(&"bad-long-name"),
        "the FIFO side file: {kinds:?}"
    );
    let swap_entry = b("swap").file_name().unwrap().to_str().unwrap().to_string();
    let lines = log.lines().filter(|l| l.contains(&swap_entry)).count();
    assert_eq!(
        lines, 1,
        "one log line for the damaged file, naming its backing path:\n{log}"
    );
}
