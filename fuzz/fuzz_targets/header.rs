#![no_main]
//! The file header parser and key unwrap.
use libfuzzer_sys::fuzz_target;
use vaultfs::crypto::header::FileHeader;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = FileHeader::decode(data) {
        let _ = h.unwrap_key(&common::keyring());
        let _ = h.encode();
    }
});
