//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Once;

use vaultfs::crypto::keyslot::KdfParams;
use vaultfs::vault::init::{InitOptions, InitReport, init};

pub const PASSWORD: &[u8] = b"correct horse battery staple";

/// Points $XDG_STATE_HOME of this test process at a private directory, once, before any test
/// touches it (tests in one binary share the process environment).
pub fn isolate_state() -> PathBuf {
    static ONCE: Once = Once::new();
    static mut DIR: Option<PathBuf> = None;
    ONCE.call_once(|| {
        let dir = tempfile::Builder::new()
            .prefix("vaultfs-state-")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: runs once, before any test reads the environment (every test calls this first).
        unsafe {
            std::env::set_var("XDG_STATE_HOME", &dir);
            DIR = Some(dir);
        }
    });
    // SAFETY: written once above, read-only afterwards.
    #[allow(static_mut_refs)]
    unsafe {
        DIR.clone().unwrap()
    }
}

pub fn fast_options(vault: &Path) -> InitOptions {
    InitOptions {
        vault: vault.to_path_buf(),
        keystore: None,
        kdf: KdfParams {
            log_n: 10,
            r: 8,
            p: 1,
        },
        chunk_size: 4096,
        longname_max: 255,
        recovery_key: true,
        sparse: false,
    }
}

pub fn new_vault(parent: &Path, name: &str) -> (PathBuf, InitReport) {
    isolate_state();
    let vault = parent.join(name);
    let report = init(&fast_options(&vault), PASSWORD).unwrap();
    (vault, report)
}

// ---- Real mounts through the built binary ----

use std::process::{Command, Output, Stdio};

/// True if FUSE tests can run. In CI (CI=true) a missing FUSE is a failure, not a skip;
/// locally the test is skipped with a loud message.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && (rustix::process::geteuid().is_root() || Path::new("/usr/bin/fusermount3").exists());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "FUSE is not available (need /dev/fuse, and root or fusermount3): FUSE tests must run in CI"
            );
        }
        eprintln!(
            "\n*** SKIPPING FUSE TEST: /dev/fuse or fusermount3 is missing on this machine ***\n"
        );
    }
    ok
}

pub fn vaultfs(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaultfs"));
    c.env("XDG_STATE_HOME", state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

pub fn run_ok(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A vault with a mount point and a password file, in a temp dir; unmounted on drop.
pub struct TestVault {
    pub tmp: tempfile::TempDir,
    pub vault: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub passfile: PathBuf,
}

impl TestVault {
    pub fn new(chunk_size: u32) -> TestVault {
        TestVault::with_init_args(chunk_size, &[])
    }

    /// A vault made by `init --sparse`: files store holes.
    pub fn sparse(chunk_size: u32) -> TestVault {
        TestVault::with_init_args(chunk_size, &["--sparse"])
    }

    pub fn with_init_args(chunk_size: u32, extra: &[&str]) -> TestVault {
        let tmp = tempfile::Builder::new()
            .prefix("vaultfs-test-")
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        let (vault, mnt, state, passfile) = (
            root.join("vault"),
            root.join("mnt"),
            root.join("state"),
            root.join("pw"),
        );
        std::fs::create_dir(&mnt).unwrap();
        std::fs::write(&passfile, "test password\n").unwrap();
        run_ok(
            vaultfs(&state)
                .args([
                    "init",
                    "--scrypt-logn",
                    "10",
                    "--no-recovery-key",
                    "--chunk-size",
                ])
                .arg(chunk_size.to_string())
                .args(extra)
                .arg("--passfile")
                .arg(&passfile)
                .arg(&vault),
        );
        TestVault {
            tmp,
            vault,
            mnt,
            state,
            passfile,
        }
    }

    /// Issues a recovery key (TestVault makes none), written to `rk` in the test's
    /// directory; returns that file.
    pub fn add_recovery_key(&self) -> PathBuf {
        let key_file = self.tmp.path().join("rk");
        run_ok(
            vaultfs(&self.state)
                .args(["keyslot", "add", "--recovery", "--passfile"])
                .arg(&self.passfile)
                .arg("--recovery-key-file")
                .arg(&key_file)
                .arg(&self.vault),
        );
        key_file
    }

    /// `recover --rebuild-keystore` with the recovery key in `key_file`, the test password
    /// as the new one, and `extra` options.
    pub fn rebuild_keystore(&self, key_file: &Path, extra: &[&str]) -> Output {
        vaultfs(&self.state)
            .args([
                "recover",
                "--rebuild-keystore",
                "--scrypt-logn",
                "10",
                "--recovery-key-file",
            ])
            .arg(key_file)
            .arg("--new-passfile")
            .arg(&self.passfile)
            .args(extra)
            .arg(&self.vault)
            .output()
            .unwrap()
    }

    pub fn mount_args(&self, extra: &[&str]) -> Output {
        vaultfs(&self.state)
            .arg("mount")
            .arg("--passfile")
            .arg(&self.passfile)
            .args(extra)
            .arg(&self.vault)
            .arg(&self.mnt)
            .output()
            .unwrap()
    }

    /// Mounts with --allow-other, the way a server shares a vault, and opens the path to
    /// the mount and its root to other users (a test vault's directories are private).
    pub fn mount_for_everyone(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = self.mount_args(&["--allow-other"]);
        assert!(
            o.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::set_permissions(&self.mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn mount(&self) {
        let o = self.mount_args(&[]);
        assert!(
            o.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn unmount(&self) {
        // Tests run in parallel threads that spawn processes: a child between fork and exec
        // briefly holds copies of this process's fds, which unmount rightly reports as busy.
        for _ in 0..50 {
            let o = vaultfs(&self.state)
                .arg("unmount")
                .arg(&self.mnt)
                .output()
                .unwrap();
            if o.status.success() {
                return;
            }
            if o.status.code() != Some(vaultfs::exitcodes::BUSY) {
                panic!("unmount failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{} stayed busy", self.mnt.display());
    }

    pub fn is_mounted(&self) -> bool {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let m = std::fs::canonicalize(&self.mnt).unwrap_or(self.mnt.clone());
        mi.lines()
            .any(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap()))
    }

    /// `vaultfs ARGS --passfile P VAULT`: a command that unlocks this vault.
    pub fn with_password(&self, args: &[&str]) -> Command {
        let mut c = vaultfs(&self.state);
        c.args(args)
            .arg("--passfile")
            .arg(&self.passfile)
            .arg(&self.vault);
        c
    }

    /// The pid of the daemon serving this vault's mount (from its pid file).
    pub fn daemon_pid(&self) -> i32 {
        let dir = self.state.join("vaultfs/mounts");
        for _ in 0..100 {
            if let Some(Ok(e)) = std::fs::read_dir(&dir).ok().and_then(|mut d| d.next())
                && let Ok(pid) = std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .trim()
                    .parse()
            {
                return pid;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no daemon pid file");
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Every byte of every backing file, names included, for "no plaintext leaks" checks.
    pub fn backing_dump(&self) -> Vec<u8> {
        fn walk(dir: &Path, out: &mut Vec<u8>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                out.extend_from_slice(e.file_name().as_encoded_bytes());
                out.push(b'\n');
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    walk(&e.path(), out);
                } else if ft.is_symlink() {
                    out.extend_from_slice(
                        std::fs::read_link(e.path())
                            .unwrap()
                            .as_os_str()
                            .as_encoded_bytes(),
                    );
                } else if ft.is_file() {
                    out.extend_from_slice(&std::fs::read(e.path()).unwrap());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.vault, &mut out);
        out
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        if self.is_mounted() {
            let _ = vaultfs(&self.state)
                .arg("unmount")
                .arg("--lazy")
                .arg(&self.mnt)
                .output();
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The backing path of a plaintext path (relative to the mount root), computed with the
/// library: unlock, then encrypt each component under its directory's ID.
pub fn backing_of(v: &TestVault, rel: &str) -> PathBuf {
    use vaultfs::crypto::dirid::{ROOT_PARENT, open_dir_id};
    use vaultfs::crypto::names::{BackingName, DIRID_FILE, encrypt_name};
    isolate_state();
    let pw = std::fs::read_to_string(&v.passfile).unwrap();
    let u = vaultfs::vault::init::unlock(&v.vault, None, false, pw.trim_end().as_bytes()).unwrap();
    let kr = &u.keyring;
    let max = u.state().config.longname_max as usize;
    let (mut id, _) = open_dir_id(
        kr,
        &ROOT_PARENT,
        "",
        &std::fs::read(v.vault.join(DIRID_FILE)).unwrap(),
    )
    .unwrap();
    let mut path = v.vault.clone();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let bn = BackingName::new(
            encrypt_name(kr.active(), &id, part.as_bytes()).unwrap(),
            max,
        );
        path = path.join(bn.entry());
        if i + 1 < parts.len() {
            id = open_dir_id(
                kr,
                &id,
                bn.entry(),
                &std::fs::read(path.join(DIRID_FILE)).unwrap(),
            )
            .unwrap()
            .0;
        }
    }
    path
}

/// The errno of a failed call; 0 for success, -1 for an error without one.
pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// FUSE and root (for tests that switch users): false, loudly, where either is missing;
/// in CI a missing one fails the test.
pub fn root_and_fuse() -> bool {
    if !fuse_available() {
        return false;
    }
    let root = rustix::process::geteuid().is_root();
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("this test switches users and needs root: CI runs as root");
        }
        eprintln!("\n*** SKIPPING: this test switches users and needs root ***\n");
    }
    root
}

/// Runs `f` on a fresh mounted vault for each chunk size tested (4 KiB and 64 KiB).
pub fn each_chunk_size(f: impl Fn(&TestVault, usize)) {
    each_chunk_size_with(&[], f)
}

/// `each_chunk_size` on vaults made by `init --sparse`.
pub fn each_chunk_size_sparse(f: impl Fn(&TestVault, usize)) {
    each_chunk_size_with(&["--sparse"], f)
}

fn each_chunk_size_with(init_args: &[&str], f: impl Fn(&TestVault, usize)) {
    if !fuse_available() {
        return;
    }
    for cs in [4096u32, 65536] {
        let v = TestVault::with_init_args(cs, init_args);
        v.mount();
        f(&v, cs as usize);
        v.unmount();
    }
}
