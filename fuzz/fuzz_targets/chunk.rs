#![no_main]
//! The chunk decoder, runs of chunks, and the size mapping.
use libfuzzer_sys::fuzz_target;
use vaultfs::crypto::chunk::{CHUNK_OVERHEAD, ChunkLayout, ContentCipher};
use vaultfs::crypto::keys::Key256;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let layout = ChunkLayout::new(4096).unwrap();
    let (flags, ct) = data.split_at(2);
    let holes = flags[1] & 2 == 2;
    let cipher = ContentCipher::new([7; 16], &Key256::from_slice(&mut [9; 32]).unwrap(), layout, holes);
    let index = u64::from(flags[0]);
    let is_final = flags[1] & 1 == 1;
    let mut out = vec![0u8; ct.len().saturating_sub(CHUNK_OVERHEAD)];
    let _ = cipher.open_chunk(index, is_final, ct, &mut out);
    let size = layout.plaintext_size_lenient(ct.len() as u64 + 144);
    if let Ok(size) = layout.plaintext_size(ct.len() as u64 + 144) {
        let mut plain = vec![0u8; size as usize];
        let _ = cipher.open_run(0, layout.last_chunk_index(size), ct, &mut plain);
    }
    let _ = size;
});
