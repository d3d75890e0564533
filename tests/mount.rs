//! The filesystem through real FUSE mounts of the built binary: files, directories, names,
//! renames, truncation, links, attributes, concurrency; and that the backing directory holds
//! no plaintext.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::{TestVault, contains, each_chunk_size, errno_of, fuse_available};
use rustix::fs::{CWD, RenameFlags, renameat_with};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 ^ seed)
        .collect()
}

#[test]
fn files_of_every_size_round_trip_and_survive_remount() {
    each_chunk_size(|v, cs| {
        let sizes = [
            0,
            1,
            100,
            cs - 1,
            cs,
            cs + 1,
            3 * cs,
            3 * cs + 7,
            (1 << 20) + 3,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            fs::write(v.p(&format!("f{i}")), pattern(n, i as u8)).unwrap();
        }
        for (i, &n) in sizes.iter().enumerate() {
            let got = fs::read(v.p(&format!("f{i}"))).unwrap();
            assert_eq!(got.len(), n);
            assert!(got == pattern(n, i as u8), "size {n}");
            assert_eq!(fs::metadata(v.p(&format!("f{i}"))).unwrap().len(), n as u64);
        }
        v.unmount();
        v.mount();
        for (i, &n) in sizes.iter().enumerate() {
            assert!(
                fs::read(v.p(&format!("f{i}"))).unwrap() == pattern(n, i as u8),
                "after remount, size {n}"
            );
        }
    });
}

#[test]
fn backing_directory_holds_no_plaintext() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::create_dir(v.p("SecretProjectDir")).unwrap();
    fs::write(
        v.p("SecretProjectDir/quarterly-results.txt"),
        b"TOP SECRET CONTENT: revenue up 42%",
    )
    .unwrap();
    std::os::unix::fs::symlink("TargetOfTheSymlink", v.p("SymlinkWithSecretName")).unwrap();
    v.unmount();
    let dump = v.backing_dump();
    for needle in [
        "SecretProjectDir",
        "quarterly-results",
        "TOP SECRET",
        "TargetOfTheSymlink",
        "SymlinkWithSecretName",
    ] {
        assert!(
            !contains(&dump, needle.as_bytes()),
            "{needle} leaked into the backing directory"
        );
    }
}

#[test]
fn directories_and_names() {
    each_chunk_size(|v, _| {
        fs::create_dir_all(v.p("a/b/c")).unwrap();
        fs::write(v.p("a/b/c/deep"), b"deep").unwrap();
        let mut names: Vec<_> = fs::read_dir(v.p("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["b"]);
        assert_eq!(errno_of(fs::remove_dir(v.p("a/b"))), libc::ENOTEMPTY);
        assert_eq!(errno_of(fs::create_dir(v.p("a"))), libc::EEXIST);
        fs::remove_file(v.p("a/b/c/deep")).unwrap();
        fs::remove_dir(v.p("a/b/c")).unwrap();
        assert!(!v.p("a/b/c").exists());

        // Long names up to 255 bytes, and any byte but '/' and NUL.
        let long = "L".repeat(255);
        fs::write(v.p(&long), b"long").unwrap();
        assert_eq!(fs::read(v.p(&long)).unwrap(), b"long");
        assert_eq!(
            errno_of(fs::write(v.p(&"L".repeat(256)), b"x")),
            libc::ENAMETOOLONG
        );
        let odd = std::ffi::OsStr::from_encoded_bytes_unchecked_safe(
            b"\x01odd \xff\xfe name \\ \n \xc3\xbc",
        );
        fs::write(v.mnt.join(odd), b"odd").unwrap();
        let listed: Vec<_> = fs::read_dir(&v.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(listed.iter().any(|n| n == odd));
        assert!(listed.iter().any(|n| n.len() == 255));
        fs::create_dir(v.p(&"D".repeat(255))).unwrap();
        fs::write(v.p(&format!("{}/inner", "D".repeat(255))), b"in").unwrap();
        v.unmount();
        v.mount();
        assert_eq!(fs::read(v.p(&long)).unwrap(), b"long");
        assert_eq!(fs::read(v.mnt.join(odd)).unwrap(), b"odd");
        assert_eq!(
            fs::read(v.p(&format!("{}/inner", "D".repeat(255)))).unwrap(),
            b"in"
        );
        fs::remove_file(v.p(&long)).unwrap();
        assert!(!v.p(&long).exists());
    });
}

trait FromBytes {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr;
}
impl FromBytes for std::ffi::OsStr {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

fn rename2(from: &Path, to: &Path, flags: RenameFlags) -> rustix::io::Result<()> {
    renameat_with(CWD, from, CWD, to, flags)
}

#[test]
fn renames() {
    each_chunk_size(|v, _| {
        fs::create_dir_all(v.p("x/y")).unwrap();
        fs::create_dir(v.p("z")).unwrap();
        fs::write(v.p("x/f"), b"file f").unwrap();
        fs::write(v.p("x/y/g"), b"file g").unwrap();
        let ino = fs::metadata(v.p("x/f")).unwrap().ino();
        // Within and across directories, keeping the inode.
        fs::rename(v.p("x/f"), v.p("x/f2")).unwrap();
        fs::rename(v.p("x/f2"), v.p("z/f3")).unwrap();
        assert_eq!(fs::metadata(v.p("z/f3")).unwrap().ino(), ino);
        assert_eq!(fs::read(v.p("z/f3")).unwrap(), b"file f");
        // Over an existing file.
        fs::write(v.p("z/victim"), b"old").unwrap();
        fs::rename(v.p("z/f3"), v.p("z/victim")).unwrap();
        assert_eq!(fs::read(v.p("z/victim")).unwrap(), b"file f");
        assert!(!v.p("z/f3").exists());
        // NOREPLACE and EXCHANGE.
        fs::write(v.p("z/other"), b"other").unwrap();
        assert_eq!(
            rename2(&v.p("z/victim"), &v.p("z/other"), RenameFlags::NOREPLACE),
            Err(rustix::io::Errno::EXIST)
        );
        rename2(&v.p("z/victim"), &v.p("z/other"), RenameFlags::EXCHANGE).unwrap();
        assert_eq!(fs::read(v.p("z/victim")).unwrap(), b"other");
        assert_eq!(fs::read(v.p("z/other")).unwrap(), b"file f");
        rename2(&v.p("z/other"), &v.p("z/fresh"), RenameFlags::NOREPLACE).unwrap();
        // Directory renames, within and across, including over an empty directory and
        // exchanging a directory with a file.
        fs::rename(v.p("x/y"), v.p("z/y2")).unwrap();
        assert_eq!(fs::read(v.p("z/y2/g")).unwrap(), b"file g");
        fs::create_dir(v.p("empty")).unwrap();
        fs::rename(v.p("z/y2"), v.p("empty")).unwrap();
        assert_eq!(fs::read(v.p("empty/g")).unwrap(), b"file g");
        fs::create_dir(v.p("full")).unwrap();
        fs::write(v.p("full/x"), b"").unwrap();
        assert_eq!(errno_of(fs::rename(v.p("x"), v.p("full"))), libc::ENOTEMPTY);
        assert_eq!(
            errno_of(fs::rename(v.p("z/fresh"), v.p("full"))),
            libc::EISDIR
        );
        assert_eq!(
            errno_of(fs::rename(v.p("full"), v.p("z/fresh"))),
            libc::ENOTDIR
        );
        rename2(&v.p("empty"), &v.p("z/fresh"), RenameFlags::EXCHANGE).unwrap();
        assert_eq!(fs::read(v.p("z/fresh/g")).unwrap(), b"file g");
        assert_eq!(fs::read(v.p("empty")).unwrap(), b"file f");
        // Long name to long name across directories.
        let (l1, l2) = ("M".repeat(240), "N".repeat(250));
        fs::write(v.p(&l1), b"long").unwrap();
        fs::rename(v.p(&l1), v.p(&format!("z/{l2}"))).unwrap();
        assert_eq!(fs::read(v.p(&format!("z/{l2}"))).unwrap(), b"long");
        // Everything still reads after a remount (directory IDs followed their directories).
        v.unmount();
        v.mount();
        assert_eq!(fs::read(v.p("z/fresh/g")).unwrap(), b"file g");
        assert_eq!(fs::read(v.p(&format!("z/{l2}"))).unwrap(), b"long");
        assert!(!v.p(&l1).exists());
        assert_eq!(fs::read(v.p("z/victim")).unwrap(), b"other");
    });
}

#[test]
fn truncate_against_a_model() {
    each_chunk_size(|v, cs| {
        let path = v.p("t");
        let mut model = pattern(3 * cs + 100, 9);
        fs::write(&path, &model).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        for &size in &[
            3 * cs + 50,
            3 * cs,
            2 * cs + 1,
            2 * cs - 1,
            cs,
            10,
            0,
            5,
            cs + 3,
            4 * cs,
            4 * cs + 1,
            9 * cs + 17,
            2 * cs,
        ] {
            f.set_len(size as u64).unwrap();
            model.resize(size, 0);
            let mut got = Vec::new();
            OpenOptions::new()
                .read(true)
                .open(&path)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert!(got == model, "after truncate to {size}");
            // Write into the middle after each resize, crossing a chunk boundary.
            if size > cs + 10 {
                let at = cs - 5;
                f.write_all_at(b"0123456789", at as u64).unwrap();
                model[at..at + 10].copy_from_slice(b"0123456789");
            }
        }
        drop(f);
        v.unmount();
        v.mount();
        assert!(fs::read(&path).unwrap() == model);
        // O_TRUNC gives an empty file that takes new content.
        fs::write(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    });
}

#[test]
fn sparse_writes_append_and_overwrites() {
    each_chunk_size(|v, cs| {
        let path = v.p("s");
        let mut model = Vec::new();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        for (at, len) in [
            (5 * cs + 3, 10),
            (0, 1),
            (cs / 2, cs),
            (5 * cs, 20),
            (7 * cs, cs),
            (100, 50),
        ] {
            let data = pattern(len, at as u8);
            f.write_all_at(&data, at as u64).unwrap();
            if model.len() < at + len {
                model.resize(at + len, 0);
            }
            model[at..at + len].copy_from_slice(&data);
            let mut got = vec![0u8; model.len() + 10];
            let n = f.read_at(&mut got, 0).unwrap();
            assert_eq!(n, model.len());
            assert!(got[..n] == model[..], "after write at {at}");
        }
        let mut a = OpenOptions::new().append(true).open(&path).unwrap();
        a.write_all(b"appended").unwrap();
        model.extend_from_slice(b"appended");
        assert!(fs::read(&path).unwrap() == model);
        // Short reads only at end of file.
        let mut r = fs::File::open(&path).unwrap();
        r.seek(SeekFrom::Start(model.len() as u64 - 3)).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    });
}

#[test]
fn unlinked_open_files_stay_readable() {
    each_chunk_size(|v, cs| {
        let data = pattern(2 * cs + 5, 3);
        fs::write(v.p("gone"), &data).unwrap();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(v.p("gone"))
            .unwrap();
        fs::remove_file(v.p("gone")).unwrap();
        assert!(!v.p("gone").exists());
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert!(got == data);
        f.write_all_at(b"still writable", 1).unwrap();
        let mut buf = [0u8; 14];
        f.read_exact_at(&mut buf, 1).unwrap();
        assert_eq!(&buf, b"still writable");
    });
}

#[test]
fn attributes_links_and_special_files() {
    each_chunk_size(|v, _| {
        let p = v.p("attr");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 5678));
        } else {
            assert_eq!(
                errno_of(std::os::unix::fs::chown(&p, Some(1234), None)),
                libc::EPERM
            );
        }
        let t = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 123_456_789,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1_500_000_000,
                tv_nsec: 987_654_321,
            },
        };
        rustix::fs::utimensat(CWD, &p, &t, rustix::fs::AtFlags::empty()).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 987_654_321));
        // Symlinks: encrypted target, lstat size is the plaintext target's length.
        std::os::unix::fs::symlink("../some/target", v.p("link")).unwrap();
        assert_eq!(
            fs::read_link(v.p("link")).unwrap(),
            Path::new("../some/target")
        );
        assert_eq!(fs::symlink_metadata(v.p("link")).unwrap().len(), 14);
        std::os::unix::fs::symlink("attr", v.p("rel")).unwrap();
        assert_eq!(fs::read(v.p("rel")).unwrap(), b"x");
        // Hard links share the inode and count.
        fs::hard_link(&p, v.p("hard")).unwrap();
        assert_eq!(
            fs::metadata(v.p("hard")).unwrap().ino(),
            fs::metadata(&p).unwrap().ino()
        );
        assert_eq!(fs::metadata(&p).unwrap().nlink(), 2);
        fs::remove_file(&p).unwrap();
        assert_eq!(fs::metadata(v.p("hard")).unwrap().nlink(), 1);
        assert_eq!(fs::read(v.p("hard")).unwrap(), b"x");
        // FIFOs.
        rustix::fs::mknodat(
            CWD,
            v.p("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(
            &fs::symlink_metadata(v.p("fifo")).unwrap().file_type()
        ));
        // statfs: names up to 255 bytes.
        let s = rustix::fs::statfs(&v.mnt).unwrap();
        assert_eq!(s.f_namelen, 255);
        // fsync, fdatasync, fsyncdir.
        let f = OpenOptions::new().write(true).open(v.p("hard")).unwrap();
        f.sync_all().unwrap();
        f.sync_data().unwrap();
        fs::File::open(&v.mnt).unwrap().sync_all().unwrap();
        // Inode numbers stay the same while mounted.
        let ino = fs::metadata(v.p("hard")).unwrap().ino();
        fs::rename(v.p("hard"), v.p("hard2")).unwrap();
        assert_eq!(fs::metadata(v.p("hard2")).unwrap().ino(), ino);
    });
}

#[test]
fn concurrent_writers_to_one_file_never_tear_chunks() {
    each_chunk_size(|v, cs| {
        let path = v.p("shared");
        let threads = 4;
        let per = 6;
        let region = cs + 333; // not chunk-aligned: neighbours share chunks
        fs::File::create(&path).unwrap();
        std::thread::scope(|s| {
            for t in 0..threads {
                let path = path.clone();
                s.spawn(move || {
                    let f = OpenOptions::new().write(true).open(&path).unwrap();
                    for k in 0..per {
                        let idx = k * threads + t;
                        f.write_all_at(&vec![idx as u8 + 1; region], (idx * region) as u64)
                            .unwrap();
                    }
                });
            }
        });
        let got = fs::read(&path).unwrap();
        assert_eq!(got.len(), threads * per * region);
        for (i, c) in got.chunks(region).enumerate() {
            assert!(c.iter().all(|&b| b == i as u8 + 1), "region {i} torn");
        }
    });
}

#[test]
fn read_only_mount_refuses_writes() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    fs::write(v.p("f"), b"data").unwrap();
    v.unmount();
    let o = v.mount_args(&["--read-only"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(v.p("f")).unwrap(), b"data");
    assert_eq!(errno_of(fs::write(v.p("f"), b"x")), libc::EROFS);
    assert_eq!(errno_of(fs::create_dir(v.p("d"))), libc::EROFS);
    v.unmount();
}

#[test]
fn create_exclusive_and_mode() {
    each_chunk_size(|v, _| {
        let p = v.p("excl");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o604)
            .open(&p)
            .unwrap();
        assert_eq!(
            errno_of(OpenOptions::new().write(true).create_new(true).open(&p)),
            libc::EEXIST
        );
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o022, 0o604 & !0o022);
    });
}

/// Runs this whole file again as `nobody`, mounting through fusermount3 (the unprivileged
/// path), from the root run. Needs a /dev/fuse that others may open, as on stock Debian.
#[test]
fn the_suite_passes_as_an_unprivileged_user_through_fusermount3() {
    if !rustix::process::geteuid().is_root() || std::env::var_os("VAULTFS_NESTED").is_some() {
        return; // only the outer, root run drives the nested one
    }
    if !fuse_available() {
        return;
    }
    let dev_ok = fs::metadata("/dev/fuse")
        .map(|m| m.permissions().mode() & 0o006 == 0o006)
        .unwrap_or(false);
    if !dev_ok || !Path::new("/usr/bin/fusermount3").exists() {
        let why = "unprivileged FUSE needs fusermount3 and a /dev/fuse others can open (mode 0666)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        eprintln!("\n*** SKIPPING unprivileged run: {why} ***\n");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&exe)
        .arg("--test-threads=2")
        .env("VAULTFS_NESTED", "1")
        .env("HOME", "/tmp")
        .env_remove("XDG_STATE_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unprivileged run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: usize = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("test result: ok. ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        passed >= 10,
        "the unprivileged run really ran the suite: {stdout}"
    );
}
