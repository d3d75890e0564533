//! vaultfs: an encrypted FUSE filesystem with per-file keys, keyslots and master-key rotation.
//!
//! Layout: `crypto` (pure cryptography and on-disk codecs), `vault` (the key database, keyslots,
//! generations, audit, the backing-directory layout), `cli` (the command line, thin).

pub mod cli;
pub mod crypto;
pub mod daemon;
pub mod exitcodes;
pub mod fs;
pub mod fsck;
pub mod mountinfo;
pub mod rotate;
pub mod vault;
