//! Whole-file codec: a header followed by its chunks, in memory. The FUSE layer works chunk
//! by chunk; this is for small files, tests, test vectors and tools.

use super::chunk::{ChunkError, ChunkLayout, ContentCipher};
use super::header::{FileHeader, HEADER_LEN};
use super::{CryptoError, Keyring};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("bad header: {0}")]
    Header(#[from] CryptoError),
    #[error("{0}")]
    Chunk(#[from] ChunkError),
    #[error("impossible ciphertext size")]
    Size,
}

/// Encrypts `plaintext` as a new file (fresh ID and key) under the active generation.
pub fn seal_file(
    keyring: &Keyring,
    layout: ChunkLayout,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (header, key) = FileHeader::create(keyring, layout.chunk_count(plaintext.len() as u64))?;
    let cipher = ContentCipher::for_header(&header, &key, layout);
    let mut out = vec![0u8; HEADER_LEN + cipher.sealed_run_len(plaintext.len())];
    out[..HEADER_LEN].copy_from_slice(&header.encode());
    cipher.seal_run(0, true, plaintext, &mut out[HEADER_LEN..])?;
    Ok(out)
}

/// Decrypts a whole backing file.
pub fn open_file(
    keyring: &Keyring,
    layout: ChunkLayout,
    bytes: &[u8],
) -> Result<Vec<u8>, FileError> {
    let header = FileHeader::decode(bytes)?;
    let key = header.unwrap_key(keyring)?;
    let size = layout
        .plaintext_size(bytes.len() as u64)
        .map_err(|_| FileError::Size)?;
    let cipher = ContentCipher::for_header(&header, &key, layout);
    let mut out = vec![0u8; size as usize];
    cipher.open_run(
        0,
        layout.last_chunk_index(size),
        &bytes[HEADER_LEN..],
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::keyring_with;

    #[test]
    fn whole_file_round_trip_and_header_swap() {
        let kr = keyring_with(1, 1);
        let layout = ChunkLayout::new(4096).unwrap();
        let a = seal_file(&kr, layout, &[1u8; 5000]).unwrap();
        let b = seal_file(&kr, layout, &[2u8; 5000]).unwrap();
        assert_eq!(open_file(&kr, layout, &a).unwrap(), vec![1u8; 5000]);
        // Headers swapped between two files: chunks no longer match the file ID and key.
        let mut swapped = a.clone();
        swapped[..HEADER_LEN].copy_from_slice(&b[..HEADER_LEN]);
        assert!(open_file(&kr, layout, &swapped).is_err());
        // Truncated mid-chunk and at the chunk boundary.
        assert!(open_file(&kr, layout, &a[..a.len() - 3]).is_err());
        assert!(open_file(&kr, layout, &a[..HEADER_LEN + 4096 + 28]).is_err());
        assert!(open_file(&kr, layout, &a[..HEADER_LEN]).is_err());
    }
}
