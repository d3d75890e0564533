//! POSIX ACLs where the kernel enforces them (`--allow-other`, user mounts): stored
//! encrypted, enforced, kept in step with the mode (setting one moves the other), inherited
//! from a directory's default ACL in place of the umask, and kept through a remount and a
//! rotation. setfacl/getfacl (package acl) do what a user would.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;

fn facl(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `sh -c script` as nobody; whether it succeeded.
fn as_nobody(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .uid(65534)
        .gid(65534)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn acls_are_enforced_follow_the_mode_and_are_inherited() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount_for_everyone();
    let f = v.p("f");
    let fp = f.to_str().unwrap();
    fs::write(&f, b"secret").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!as_nobody(&format!("cat {fp}")));
    // A named entry: nobody may read and write; the mode's group bits show the mask.
    facl(&["setfacl", "-m", "u:nobody:rw", fp]);
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o660);
    assert!(as_nobody(&format!("cat {fp} && echo more >> {fp}")));
    // chmod narrows the mask: the named entry loses its effect.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(facl(&["getfacl", "-c", fp]).contains("mask::---"));
    assert!(!as_nobody(&format!("cat {fp}")));
    // A default ACL: new entries inherit it in place of the umask (022 here).
    let d = v.p("d");
    let dp = d.to_str().unwrap();
    fs::create_dir(&d).unwrap();
    facl(&["setfacl", "-d", "-m", "u:nobody:rwx", dp]);
    let old_umask = unsafe { libc::umask(0o022) };
    fs::write(d.join("new"), b"inherited").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    unsafe { libc::umask(old_umask) };
    assert_eq!(
        fs::metadata(d.join("new")).unwrap().mode() & 0o777,
        0o664,
        "the default ACL, not the umask"
    );
    assert!(as_nobody(&format!("echo x >> {dp}/new")));
    let check = |v: &TestVault| {
        let file_acl = facl(&["getfacl", "-c", fp]);
        assert!(file_acl.contains("user:nobody:rw-"), "{file_acl}");
        let new_acl = facl(&["getfacl", "-c", &format!("{dp}/new")]);
        assert!(
            new_acl.contains("user:nobody:rwx\t#effective:rw-"),
            "{new_acl}"
        );
        let sub_acl = facl(&["getfacl", "-c", &format!("{dp}/sub")]);
        assert!(
            sub_acl.contains("default:user:nobody:rwx") && sub_acl.contains("user:nobody:rwx"),
            "{sub_acl}"
        );
        let dump = v.backing_dump();
        assert!(!contains(&dump, b"posix_acl"));
    };
    check(&v);
    // Removing every ACL leaves the mode as it is.
    let g = v.p("g");
    fs::write(&g, b"").unwrap();
    facl(&["setfacl", "-m", "u:nobody:r", g.to_str().unwrap()]);
    facl(&["setfacl", "-b", g.to_str().unwrap()]);
    assert!(!facl(&["getfacl", "-c", g.to_str().unwrap()]).contains("nobody"));
    v.unmount();
    let o = v.with_password(&["rotate"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = v.mount_args(&["--allow-other"]);
    assert!(o.status.success());
    check(&v);
    assert!(as_nobody(&format!("cat {dp}/new")));
    v.unmount();
}

/// A root mount without --allow-other admits only root, whom ACLs do not stop: the kernel
/// does not enforce them there, so none is stored.
#[test]
fn without_kernel_enforcement_acls_are_not_supported() {
    if !root_and_fuse() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let f = v.p("f");
    fs::write(&f, b"x").unwrap();
    let o = Command::new("setfacl")
        .args(["-m", "u:nobody:rw"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not supported"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    v.unmount();
}
