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
    }
}

pub fn new_vault(parent: &Path, name: &str) -> (PathBuf, InitReport) {
    isolate_state();
    let vault = parent.join(name);
    let report = init(&fast_options(&vault), PASSWORD).unwrap();
    (vault, report)
}
