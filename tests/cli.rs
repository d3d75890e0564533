//! The built `vaultfs` binary: init then status --json, password sources, exit codes.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn vaultfs(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(args)
        .env("XDG_STATE_HOME", state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_then_status_json() {
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "s3cret password\nignored second line\n").unwrap();
    let vault = tmp.path().join("vault");
    let v = vault.to_str().unwrap();
    let o = vaultfs(
        tmp.path(),
        &[
            "init",
            "--passfile",
            pw.to_str().unwrap(),
            "--scrypt-logn",
            "10",
            "--chunk-size",
            "65536",
            v,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("Recovery key"), "{out}");
    assert!(!out.contains("s3cret"), "password must not be echoed");

    let o = vaultfs(tmp.path(), &["status", "--json", v]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["format_version"], 3);
    assert_eq!(s["chunk_size"], 65536);
    let slots = s["keyslots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[0]["label"], "default");
    assert_eq!(slots[0]["kind"], "password");
    assert_eq!(slots[0]["kdf"]["log_n"], 10);
    assert_eq!(slots[1]["kind"], "recovery");
    let gens = s["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0]["state"], "active");
    assert_eq!(s["recent_audit"][0]["event"], "init");
    assert_eq!(s["authenticated"], false);

    let o = vaultfs(tmp.path(), &["status", v]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("generations"));
}

#[test]
fn recovery_key_file_and_no_recovery_key() {
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pw").unwrap();
    let keyfile = tmp.path().join("recovery.txt");
    let v1 = tmp.path().join("v1");
    let o = vaultfs(
        tmp.path(),
        &[
            "init",
            "--passfile",
            pw.to_str().unwrap(),
            "--scrypt-logn",
            "10",
            "--recovery-key-file",
            keyfile.to_str().unwrap(),
            v1.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let key = std::fs::read_to_string(&keyfile).unwrap();
    assert!(vaultfs::crypto::recovery_key::decode(&key).is_ok());
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(key.trim()),
        "key not printed when written to a file"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&keyfile).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let v2 = tmp.path().join("v2");
    let o = vaultfs(
        tmp.path(),
        &[
            "init",
            "--passfile",
            pw.to_str().unwrap(),
            "--scrypt-logn",
            "10",
            "--no-recovery-key",
            v2.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Recovery key"));
    let s: Value = serde_json::from_slice(
        &vaultfs(tmp.path(), &["status", "--json", v2.to_str().unwrap()]).stdout,
    )
    .unwrap();
    assert_eq!(s["keyslots"].as_array().unwrap().len(), 1);
}

#[test]
fn extpass_gives_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("v");
    let o = vaultfs(
        tmp.path(),
        &[
            "init",
            "--extpass",
            "printf 'from a command\\n'",
            "--scrypt-logn",
            "10",
            v.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let u = {
        // SAFETY: this test binary sets the variable before any unlock reads it.
        unsafe { std::env::set_var("XDG_STATE_HOME", tmp.path()) };
        vaultfs::vault::init::unlock(&v, None, false, b"from a command")
    };
    assert!(u.is_ok());
    let o = vaultfs(
        tmp.path(),
        &[
            "init",
            "--extpass",
            "exit 3",
            "--scrypt-logn",
            "10",
            tmp.path().join("w").to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(vaultfs::exitcodes::PASSWORD_SOURCE),
        "{}",
        stderr(&o)
    );
}

#[test]
fn errors_are_one_line_with_distinct_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let v = tmp.path().join("v");
    let p = pw.to_str().unwrap();
    let vs = v.to_str().unwrap();
    assert!(
        vaultfs(
            tmp.path(),
            &["init", "--passfile", p, "--scrypt-logn", "10", vs]
        )
        .status
        .success()
    );

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["init", "--passfile", p, "--scrypt-logn", "10", vs],
            vaultfs::exitcodes::ALREADY_EXISTS,
            "already exists",
        ),
        (
            vec!["status", tmp.path().to_str().unwrap()],
            vaultfs::exitcodes::NOT_A_VAULT,
            "not a vaultfs vault",
        ),
        (
            vec!["init", "--passfile", p, "--chunk-size", "5000", "x1"],
            vaultfs::exitcodes::USAGE,
            "chunk",
        ),
        (
            vec!["init", "--passfile", p, "--scrypt-logn", "23", "x2"],
            vaultfs::exitcodes::USAGE,
            "scrypt",
        ),
        (
            vec!["init", "--passfile", empty.to_str().unwrap(), "x3"],
            vaultfs::exitcodes::PASSWORD_SOURCE,
            "empty password",
        ),
        (
            vec!["init", "--passfile", "/nonexistent/pw", "x4"],
            vaultfs::exitcodes::PASSWORD_SOURCE,
            "cannot read password file",
        ),
        (
            vec!["init", "x5"],
            vaultfs::exitcodes::PASSWORD_SOURCE,
            "--passfile",
        ),
        (
            vec!["frobnicate"],
            vaultfs::exitcodes::USAGE,
            "unknown command 'frobnicate'",
        ),
    ];
    for (args, code, needle) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vaultfs"));
        // No controlling terminal, as in CI: the prompt must fail cleanly, not hang.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let o = cmd
            .args(&args)
            .current_dir(tmp.path())
            .env("XDG_STATE_HOME", tmp.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if code != vaultfs::exitcodes::USAGE {
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{args:?}: one line: {err}"
            );
        }
    }
    // A damaged database: exit status for a refused keystore.
    std::fs::write(v.join("vaultfs.db"), b"garbage").unwrap();
    let o = vaultfs(tmp.path(), &["status", vs]);
    assert_eq!(
        o.status.code(),
        Some(vaultfs::exitcodes::KEYSTORE_REFUSED),
        "{}",
        stderr(&o)
    );
}

#[test]
fn version_names_the_format() {
    let tmp = tempfile::tempdir().unwrap();
    let o = vaultfs(tmp.path(), &["--version"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("on-disk format 3"),
        "{:?}",
        o
    );
}
