// Fixed keys for the fuzz targets: the parsers must reject garbage without panicking, and
// a fixed key lets the fuzzer reach the code behind authentication with the seed corpus.
#![allow(dead_code)]

use vaultfs::crypto::keys::Key256;
use vaultfs::crypto::{GenerationKeys, Keyring};

pub fn keyring() -> Keyring {
    let vault_id = [0x11; 16];
    let mk = Key256::from_slice(&mut [0x42; 32]).unwrap();
    Keyring::new(vault_id, GenerationKeys::derive(&vault_id, 1, mk), None)
}
