#![no_main]
//! Name and long-name decoding, classification of backing names.
use libfuzzer_sys::fuzz_target;
use vaultfs::crypto::names::{classify, decrypt_name, read_side_file};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let kr = common::keyring();
    let split = data.first().copied().unwrap_or(0) as usize % (data.len().max(1));
    let (a, b) = data.split_at(split.min(data.len()));
    if let Ok(s) = std::str::from_utf8(a) {
        let _ = classify(s);
        let _ = decrypt_name(&kr, &[3; 16], s);
        let _ = read_side_file(s, b);
    }
});
