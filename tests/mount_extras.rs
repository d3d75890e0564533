//! Part two of the POSIX surface through real mounts: extended attributes, fallocate and
//! punched holes, SEEK_DATA/SEEK_HOLE, huge sparse files, shared writable mmap,
//! copy_file_range and sendfile; for the default chunk size and 64 KiB.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::{TestVault, contains, each_chunk_size, each_chunk_size_sparse};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn setx(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid strings and buffer.
    let r = unsafe {
        libc::setxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 { Ok(()) } else { Err(last_errno()) }
}

fn getx(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 70000];
    // SAFETY: valid strings and buffer.
    let r = unsafe {
        libc::getxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn listx(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 70000];
    // SAFETY: valid path and buffer.
    let r = unsafe { libc::listxattr(cpath(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", last_errno());
    let mut names: Vec<String> = buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn extended_attributes() {
    each_chunk_size(|v, _| {
        let f = v.p("file");
        fs::write(&f, b"x").unwrap();
        fs::create_dir(v.p("dir")).unwrap();
        setx(&f, "user.comment", b"PlaintextXattrValue", 0).unwrap();
        setx(&f, "user.empty", b"", 0).unwrap();
        setx(&v.p("dir"), "user.on-dir", b"d", 0).unwrap();
        assert_eq!(getx(&f, "user.comment").unwrap(), b"PlaintextXattrValue");
        assert_eq!(getx(&f, "user.empty").unwrap(), b"");
        assert_eq!(getx(&v.p("dir"), "user.on-dir").unwrap(), b"d");
        assert_eq!(listx(&f), ["user.comment", "user.empty"]);
        assert_eq!(getx(&f, "user.missing"), Err(libc::ENODATA));
        // XATTR_CREATE / XATTR_REPLACE.
        assert_eq!(
            setx(&f, "user.comment", b"y", libc::XATTR_CREATE),
            Err(libc::EEXIST)
        );
        assert_eq!(
            setx(&f, "user.new", b"y", libc::XATTR_REPLACE),
            Err(libc::ENODATA)
        );
        setx(&f, "user.comment", b"replaced", libc::XATTR_REPLACE).unwrap();
        assert_eq!(getx(&f, "user.comment").unwrap(), b"replaced");
        // Caps: the longest name and value that fit once encrypted; beyond, ERANGE / E2BIG.
        let longest = format!("user.{}", "n".repeat(vaultfs::crypto::blob::XATTR_NAME_MAX));
        setx(&f, &longest, b"v", 0).unwrap();
        assert_eq!(getx(&f, &longest).unwrap(), b"v");
        let too_long = format!(
            "user.{}",
            "n".repeat(vaultfs::crypto::blob::XATTR_NAME_MAX + 1)
        );
        assert_eq!(setx(&f, &too_long, b"v", 0), Err(libc::ERANGE));
        // The largest value that fits once sealed; the backing filesystem may hold less
        // (ext4 keeps one block of xattrs per inode) and then says ENOSPC itself.
        let big = vec![0xabu8; vaultfs::crypto::blob::XATTR_VALUE_MAX];
        match setx(&f, "user.big", &big, 0) {
            Ok(()) => assert_eq!(getx(&f, "user.big").unwrap(), big),
            Err(code) => assert!(code == libc::ENOSPC || code == libc::E2BIG, "errno {code}"),
        }
        let fits = vec![0xcdu8; 1000];
        setx(&f, "user.fits", &fits, 0).unwrap();
        assert_eq!(getx(&f, "user.fits").unwrap(), fits);
        assert_eq!(
            setx(
                &f,
                "user.big",
                &vec![0u8; vaultfs::crypto::blob::XATTR_VALUE_MAX + 1],
                0
            ),
            Err(libc::E2BIG)
        );
        // Remove.
        // SAFETY: valid strings.
        let n = CString::new("user.empty").unwrap();
        assert_eq!(
            unsafe { libc::removexattr(cpath(&f).as_ptr(), n.as_ptr()) },
            0
        );
        assert_eq!(
            unsafe { libc::removexattr(cpath(&f).as_ptr(), n.as_ptr()) },
            -1
        );
        assert_eq!(last_errno(), libc::ENODATA);
        v.unmount();
        v.mount();
        assert_eq!(getx(&f, "user.comment").unwrap(), b"replaced");
        let listed = listx(&f);
        for want in ["user.comment", "user.fits", longest.as_str()] {
            assert!(listed.iter().any(|n| n == want), "{want} in {listed:?}");
        }
        let dump = v.backing_dump();
        assert!(!contains(&dump, b"PlaintextXattrValue") && !contains(&dump, b"comment"));
    });
}

/// `trusted.*` (overlayfs's own attributes) and `security.*` (labels) are stored, encrypted
/// by their whole name: root sees and sets trusted ones, other users neither see nor set
/// them; an absent label is "not supported" so `ls -l` stops asking. They survive a remount
/// and a rotation, fsck accepts them, and a vault holding them is format 3 (a format-2
/// vaultfs would skip them and lose them in a rotation).
#[test]
fn trusted_and_security_attributes_are_stored_encrypted() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !common::root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount_for_everyone();
    let (f, d) = (v.p("file"), v.p("dir"));
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
    fs::create_dir(&d).unwrap();
    setx(&f, "trusted.overlay.origin", b"SecretOrigin", 0).unwrap();
    setx(&d, "trusted.overlay.opaque", b"y", 0).unwrap();
    setx(&f, "security.label", b"SecretLabel", 0).unwrap();
    setx(&f, "user.plain", b"u", 0).unwrap();
    // A symlink itself takes them too (not user.*, as on any Linux filesystem).
    let l = v.p("lnk");
    std::os::unix::fs::symlink("file", &l).unwrap();
    let lset = |name: &str, value: &[u8]| {
        let n = CString::new(name).unwrap();
        // SAFETY: valid strings and buffer.
        let r = unsafe {
            libc::lsetxattr(
                cpath(&l).as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 { Ok(()) } else { Err(last_errno()) }
    };
    lset("trusted.on-link", b"SecretOnLink").unwrap();
    assert_eq!(lset("user.on-link", b"x"), Err(libc::EPERM));
    assert_eq!(
        setx(&f, "trusted.overlay.origin", b"z", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(getx(&f, "security.selinux"), Err(libc::EOPNOTSUPP));
    assert_eq!(getx(&f, "trusted.absent"), Err(libc::ENODATA));
    let check = |v: &TestVault| {
        assert_eq!(getx(&f, "trusted.overlay.origin").unwrap(), b"SecretOrigin");
        assert_eq!(getx(&d, "trusted.overlay.opaque").unwrap(), b"y");
        assert_eq!(getx(&f, "security.label").unwrap(), b"SecretLabel");
        assert_eq!(
            listx(&f),
            ["security.label", "trusted.overlay.origin", "user.plain"]
        );
        let mut buf = vec![0u8; 256];
        let n = CString::new("trusted.on-link").unwrap();
        // SAFETY: valid strings and buffer.
        let r = unsafe {
            libc::lgetxattr(
                cpath(&l).as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(r > 0, "lgetxattr: {r} {}", last_errno());
        assert_eq!(&buf[..r as usize], b"SecretOnLink");
        assert!(getx(&l, "trusted.on-link").is_err(), "the target has none");
        // Another user: trusted ones are neither listed nor settable (the kernel refuses
        // the set before it reaches vaultfs).
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg("getfattr --absolute-names -d -m - \"$0\"; setfattr -n trusted.mine -v 1 \"$0\" && echo SET")
            .arg(&f)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("user.plain") && !out.contains("trusted") && !out.contains("SET"),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let dump = v.backing_dump();
        for secret in [
            &b"SecretOrigin"[..],
            b"SecretLabel",
            b"SecretOnLink",
            b"on-link",
            b"overlay",
            b"trusted",
            b"security.",
        ] {
            assert!(
                !contains(&dump, secret),
                "{}",
                String::from_utf8_lossy(secret)
            );
        }
    };
    check(&v);
    v.unmount();
    let marker = fs::read_to_string(v.vault.join("vaultfs.vault")).unwrap();
    assert!(marker.contains("format-version: 3"), "{marker}");
    let o = v.with_password(&["rotate"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = v.with_password(&["fsck"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = v.mount_args(&["--allow-other"]);
    assert!(o.status.success());
    check(&v);
    v.unmount();
}

fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

#[test]
fn fallocate_and_punch_hole_against_a_model() {
    each_chunk_size(fallocate_and_punch_against_a_model);
    each_chunk_size_sparse(fallocate_and_punch_against_a_model);
}

fn fallocate_and_punch_against_a_model(v: &TestVault, cs: usize) {
    {
        let p = v.p("fa");
        let mut model: Vec<u8> = (0..6 * cs + 77).map(|i| (i % 251) as u8 + 1).collect();
        fs::write(&p, &model).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let fd = f.as_raw_fd();
        // Mode 0 beyond the end grows the file with zeros; KEEP_SIZE does not.
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, (7 * cs) as u64).unwrap();
        model.resize(7 * cs, 0);
        assert_eq!(read_all(&p), model);
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            (20 * cs) as u64,
        )
        .unwrap();
        assert_eq!(f.metadata().unwrap().len(), (7 * cs) as u64);
        // Punch: partial head, whole chunks, partial tail; then one inside a chunk; then the tail.
        for (off, len) in [(cs / 2, 3 * cs), (5 * cs + 10, 100), (6 * cs, cs)] {
            let punch =
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(&f, punch, off as u64, len as u64).unwrap();
            let end = (off + len).min(model.len());
            model[off..end].fill(0);
            assert_eq!(read_all(&p), model, "after punching {off}+{len}");
        }
        // Whole chunks really became holes in the backing file.
        let mut buf = vec![0u8; 10];
        f.read_exact_at(&mut buf, (2 * cs) as u64).unwrap();
        assert_eq!(buf, vec![0u8; 10]);
        let _ = fd;
        drop(f);
        v.unmount();
        v.mount();
        assert_eq!(read_all(&p), model);
    }
}

/// A new file of 20 chunks and 3 bytes: "head" at 0, "middle" in chunk 10, the rest never
/// written (holes in a sparse vault), open for reading and writing.
fn head_middle_and_gaps(p: &Path, cs: usize) -> std::fs::File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"middle", (10 * cs + 5) as u64).unwrap();
    f.set_len((20 * cs + 3) as u64).unwrap();
    f
}

#[test]
fn seek_data_and_seek_hole_follow_the_holes() {
    each_chunk_size_sparse(|v, cs| {
        let p = v.p("sparse");
        let f = head_middle_and_gaps(&p, cs);
        let data = |off: u64| rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(off));
        let hole = |off: u64| rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(off));
        assert_eq!(data(0).unwrap(), 0);
        assert_eq!(hole(0).unwrap(), cs as u64);
        assert_eq!(data(cs as u64 + 1).unwrap(), (10 * cs) as u64);
        assert_eq!(hole((10 * cs) as u64).unwrap(), (11 * cs) as u64);
        // The final chunk is data; the end of file is a hole.
        assert_eq!(data((11 * cs) as u64).unwrap(), (20 * cs) as u64);
        assert_eq!(hole((20 * cs) as u64).unwrap(), (20 * cs + 3) as u64);
        assert_eq!(data((20 * cs + 3) as u64), Err(rustix::io::Errno::NXIO));
    });
}

/// A vault made without `--sparse` stores no holes: the same file is data up to its end,
/// and its backing file is allocated throughout.
#[test]
fn without_sparse_the_same_file_is_data_throughout() {
    each_chunk_size(|v, cs| {
        let p = v.p("dense");
        let f = head_middle_and_gaps(&p, cs);
        let data = |off: u64| rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(off));
        let hole = |off: u64| rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(off));
        assert_eq!(hole(0).unwrap(), (20 * cs + 3) as u64);
        assert_eq!(data(cs as u64 + 1).unwrap(), cs as u64 + 1);
        let mut expected = vec![0u8; 20 * cs + 3];
        expected[..4].copy_from_slice(b"head");
        expected[10 * cs + 5..10 * cs + 11].copy_from_slice(b"middle");
        assert_eq!(read_all(&p), expected);
        drop(f);
        v.unmount();
        let meta = fs::metadata(common::backing_of(v, "dense")).unwrap();
        assert!(
            meta.blocks() * 512 >= (20 * cs) as u64,
            "allocated {} of {} bytes",
            meta.blocks() * 512,
            meta.len()
        );
        v.mount();
    });
}

#[test]
fn huge_sparse_files_stay_small_in_the_backing_store() {
    each_chunk_size_sparse(|v, _| {
        let p = v.p("huge");
        let five_gib = 5u64 << 30;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(five_gib).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), five_gib);
        // Beyond 4 GiB: write and read back across the 2^32 boundary.
        f.write_all_at(b"past four gibibytes", (1u64 << 32) - 7)
            .unwrap();
        let mut buf = vec![0u8; 19];
        f.read_exact_at(&mut buf, (1u64 << 32) - 7).unwrap();
        assert_eq!(&buf, b"past four gibibytes");
        let mut tail = vec![1u8; 100];
        f.read_exact_at(&mut tail, five_gib - 100).unwrap();
        assert_eq!(tail, vec![0u8; 100]);
        drop(f);
        let backing = common::backing_of(v, "huge");
        let meta = fs::metadata(&backing).unwrap();
        assert!(meta.len() > five_gib, "ciphertext size covers 5 GiB");
        assert!(
            meta.blocks() * 512 < 4 << 20,
            "backing file stays sparse: {} bytes allocated",
            meta.blocks() * 512
        );
    });
}

#[test]
fn shared_writable_mmap() {
    each_chunk_size(|v, cs| {
        let p = v.p("mapped");
        let len = 3 * cs + 100;
        fs::write(&p, vec![0u8; len]).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        // SAFETY: mapping a file we own for its whole length, writing within it, unmapping.
        unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(m, libc::MAP_FAILED);
            let s = std::slice::from_raw_parts_mut(m as *mut u8, len);
            for (i, b) in s.iter_mut().enumerate() {
                *b = (i % 199) as u8;
            }
            assert_eq!(libc::msync(m, len, libc::MS_SYNC), 0);
            libc::munmap(m, len);
        }
        drop(f);
        let want: Vec<u8> = (0..len).map(|i| (i % 199) as u8).collect();
        assert_eq!(fs::read(&p).unwrap(), want);
        v.unmount();
        v.mount();
        assert_eq!(fs::read(&p).unwrap(), want);
    });
}

#[test]
fn copy_file_range_and_sendfile() {
    each_chunk_size(|v, cs| {
        let src = v.p("src");
        let data: Vec<u8> = (0..5 * cs + 11).map(|i| (i * 7 % 256) as u8).collect();
        fs::write(&src, &data).unwrap();
        let from = fs::File::open(&src).unwrap();
        let to = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(v.p("copy"))
            .unwrap();
        let mut copied = 0;
        while copied < data.len() {
            let n =
                rustix::fs::copy_file_range(&from, None, &to, None, data.len() - copied).unwrap();
            assert!(n > 0);
            copied += n;
        }
        drop(to);
        assert_eq!(fs::read(v.p("copy")).unwrap(), data);
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(v.p("sent"))
            .unwrap();
        let mut off: libc::off_t = 0;
        let mut sent = 0;
        while sent < data.len() {
            // SAFETY: valid fds and offset pointer.
            let n = unsafe {
                libc::sendfile(
                    out.as_raw_fd(),
                    from.as_raw_fd(),
                    &mut off,
                    data.len() - sent,
                )
            };
            assert!(n > 0, "sendfile: {}", last_errno());
            sent += n as usize;
        }
        drop(out);
        assert_eq!(fs::read(v.p("sent")).unwrap(), data);
    });
}

/// What a file does not have: an absent label reads as "not supported", as from a
/// filesystem with no handler for labels (ls -l then stops asking for SELinux labels and
/// ACLs after the first file); absent file capabilities and trusted attributes are "no such
/// attribute". Where the kernel handles ACLs (POSIX_ACL, granted where it checks
/// permissions), an ACL is "not there": the kernel's permission checks ask for it.
#[test]
fn foreign_xattr_namespaces_are_unsupported() {
    if !common::fuse_available() {
        return;
    }
    let v = common::TestVault::new(4096);
    let root = rustix::process::geteuid().is_root();
    for args in [&[][..], &["--allow-other"][..]] {
        if !args.is_empty() && !root {
            continue; // --allow-other needs user_allow_other in /etc/fuse.conf
        }
        let o = v.mount_args(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let f = v.p("file");
        fs::write(&f, b"x").unwrap();
        let kernel_acls = !args.is_empty() || !root;
        for target in [f.clone(), v.p("")] {
            assert_eq!(
                getx(&target, "security.selinux"),
                Err(libc::EOPNOTSUPP),
                "{args:?}"
            );
            assert_eq!(
                getx(&target, "security.capability"),
                Err(libc::ENODATA),
                "{args:?}"
            );
            if root {
                assert_eq!(getx(&target, "trusted.x"), Err(libc::ENODATA));
            }
            let no_acl = if kernel_acls {
                libc::ENODATA
            } else {
                libc::EOPNOTSUPP
            };
            for name in ["system.posix_acl_access", "system.posix_acl_default"] {
                let got = getx(&target, name);
                // The kernel answers a default ACL of a non-directory itself.
                if name.ends_with("default") && target == f && kernel_acls {
                    assert!(got.is_err(), "{got:?}");
                    continue;
                }
                assert_eq!(got, Err(no_acl), "{name} {args:?}");
            }
            let n = CString::new("security.capability").unwrap();
            // SAFETY: valid strings.
            let r = unsafe { libc::removexattr(cpath(&target).as_ptr(), n.as_ptr()) };
            assert_eq!((r, last_errno()), (-1, libc::ENODATA), "nothing to remove");
        }
        fs::remove_file(&f).unwrap();
        v.unmount();
    }
}

/// File capabilities (`security.capability`, setcap) are stored, and removed by every
/// change of contents or owner, whoever makes it (the kernel's killpriv, which
/// FUSE_HANDLE_KILLPRIV_V2 leaves to vaultfs; xfstests generic/688).
#[test]
fn file_capabilities_are_stored_and_dropped_by_changes() {
    use std::process::Command;
    if !common::root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let t = v.p("prog");
    fs::copy("/bin/true", &t).unwrap();
    let getcap = |p: &Path| {
        let o = Command::new("getcap").arg(p).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let setcap = |p: &Path| {
        let o = Command::new("setcap")
            .args(["cap_setuid+ep"])
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    setcap(&t);
    v.unmount();
    v.mount();
    assert!(getcap(&t).contains("cap_setuid=ep"), "kept: {}", getcap(&t));
    type Change = fn(&Path);
    let changes: [(&str, Change); 4] = [
        ("write", |p| {
            OpenOptions::new()
                .append(true)
                .open(p)
                .unwrap()
                .write_all_at(b"x", 0)
                .unwrap()
        }),
        ("truncate", |p| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(10)
                .unwrap()
        }),
        ("fallocate", |p| {
            let f = OpenOptions::new().write(true).open(p).unwrap();
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 65536).unwrap()
        }),
        ("chown", |p| {
            std::os::unix::fs::chown(p, Some(65534), None).unwrap()
        }),
    ];
    for (what, change) in changes {
        setcap(&t);
        assert!(getcap(&t).contains("cap_setuid"), "{what}");
        change(&t);
        assert_eq!(getcap(&t), "", "{what} removes the capabilities");
    }
    v.unmount();
}
