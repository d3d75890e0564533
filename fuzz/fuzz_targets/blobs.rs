#![no_main]
//! Symlink targets, xattr names and values, directory ID files, recovery files and keys.
use libfuzzer_sys::fuzz_target;
use vaultfs::crypto::keys::Key256;
use vaultfs::crypto::{blob, dirid, recovery_key};
use vaultfs::vault::recovery_file;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let kr = common::keyring();
    let _ = blob::open_symlink(&kr, data);
    let _ = blob::decrypt_xattr_name(&kr, data);
    let _ = blob::open_xattr_value(&kr, "user.x", data);
    let _ = blob::blob_generation(data);
    let _ = dirid::open_dir_id(&kr, &[0; 16], "entry", data);
    let _ = recovery_file::RecoveryFileInfo::decode(data);
    let _ = recovery_file::open(data, &Key256::from_slice(&mut [5; 32]).unwrap());
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = recovery_key::decode(s);
    }
});
