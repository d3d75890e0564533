#![no_main]
//! The key database loader: any bytes as vaultfs.db give a clear refusal, never a panic.
use libfuzzer_sys::fuzz_target;
use vaultfs::vault::init::open_keystore;
use vaultfs::vault::layout::Marker;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let marker = Marker { format_version: 1, vault_id: [1; 16], external_keystore: false };
    std::fs::write(dir.path().join("vaultfs.vault"), marker.render()).unwrap();
    std::fs::write(dir.path().join("vaultfs.db"), data).unwrap();
    let _ = open_keystore(dir.path(), None, false);
});
