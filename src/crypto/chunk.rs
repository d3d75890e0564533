//! File contents: the plaintext/ciphertext offset math (all of it, in one place) and the
//! AES-256-GCM chunk codec.
//!
//! A backing file is `header || chunk_0 || chunk_1 || ... || chunk_n`. Each chunk is
//! `nonce(12) || ciphertext || tag(16)` over at most `chunk_size` plaintext bytes. All chunks
//! but the last are full. The last chunk is sealed with the last-chunk flag in its associated
//! data; an empty file is a header plus one empty chunk flagged last. A non-final chunk is
//! accepted with either flag (the grow protocol reseals it). A non-final chunk whose
//! ciphertext is all zeros is a hole and reads as zeros only in a file whose header allows
//! holes; elsewhere it is damage, so zeroing a chunk in the backing store cannot pass as one.

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::keys::{Key256, fill_random};
use super::{CryptoError, FileId};
use crate::crypto::header::HEADER_LEN;

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Ciphertext bytes a chunk adds to its plaintext.
pub const CHUNK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const DEFAULT_CHUNK_SIZE: u32 = 4096;
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;
/// Length of a chunk's associated data: file ID, chunk index (u64 BE), last-chunk flag.
pub const CHUNK_AD_LEN: usize = 16 + 8 + 1;

/// Offset math for one chunk size. Pure and cheap: getattr uses it without decrypting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    chunk_size: u64,
}

/// A backing file size that no sequence of vaultfs writes produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("backing file size {0} is not a valid vaultfs file size")]
pub struct InvalidCiphertextSize(pub u64);

impl ChunkLayout {
    pub fn new(chunk_size: u32) -> Result<Self, CryptoError> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(CryptoError::Malformed(
                "chunk size must be a power of two from 4096 to 1048576",
            ));
        }
        Ok(ChunkLayout {
            chunk_size: chunk_size.into(),
        })
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size as usize
    }

    /// Size of a full chunk on disk.
    pub fn ciphertext_chunk_len(&self) -> u64 {
        self.chunk_size + CHUNK_OVERHEAD as u64
    }

    /// Backing-file offset where chunk `index` starts.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        HEADER_LEN as u64 + index * self.ciphertext_chunk_len()
    }

    /// Number of chunks of a file of `size` plaintext bytes (an empty file has one).
    pub fn chunk_count(&self, size: u64) -> u64 {
        size.div_ceil(self.chunk_size).max(1)
    }

    /// Index of the last chunk of a file of `size` bytes.
    pub fn last_chunk_index(&self, size: u64) -> u64 {
        self.chunk_count(size) - 1
    }

    /// Chunk holding plaintext byte `offset`.
    pub fn chunk_index_of(&self, offset: u64) -> u64 {
        offset / self.chunk_size
    }

    /// Plaintext bytes in chunk `index` of a file of `size` bytes (0 past the end).
    pub fn plaintext_len_of_chunk(&self, index: u64, size: u64) -> usize {
        let start = index * self.chunk_size;
        if index == 0 && size == 0 {
            return 0;
        }
        size.saturating_sub(start).min(self.chunk_size) as usize
    }

    /// Backing-file size of a file of `size` plaintext bytes.
    pub fn ciphertext_size(&self, size: u64) -> u64 {
        let full = size / self.chunk_size;
        let rem = size % self.chunk_size;
        let tail = if rem > 0 || size == 0 {
            rem + CHUNK_OVERHEAD as u64
        } else {
            0
        };
        HEADER_LEN as u64 + full * self.ciphertext_chunk_len() + tail
    }

    /// Plaintext size of a backing file of `backing` bytes; inverse of `ciphertext_size`.
    pub fn plaintext_size(&self, backing: u64) -> Result<u64, InvalidCiphertextSize> {
        let body = backing
            .checked_sub(HEADER_LEN as u64)
            .ok_or(InvalidCiphertextSize(backing))?;
        let full = body / self.ciphertext_chunk_len();
        let rem = body % self.ciphertext_chunk_len();
        let overhead = CHUNK_OVERHEAD as u64;
        let size = match (full, rem) {
            (0, r) if r == overhead => 0,
            (f, 0) if f > 0 => f * self.chunk_size,
            (f, r) if r > overhead => f * self.chunk_size + (r - overhead),
            _ => return Err(InvalidCiphertextSize(backing)),
        };
        Ok(size)
    }

    /// Plaintext size to report for a backing file even when it is damaged: the largest valid
    /// size that fits. Reads of the damaged part still fail with EIO.
    pub fn plaintext_size_lenient(&self, backing: u64) -> u64 {
        match self.plaintext_size(backing) {
            Ok(size) => size,
            Err(_) => {
                let body = backing.saturating_sub(HEADER_LEN as u64);
                (body / self.ciphertext_chunk_len()) * self.chunk_size
            }
        }
    }
}

/// Associated data of a chunk: file ID, index, last-chunk flag.
pub fn chunk_ad(file_id: &FileId, index: u64, last: bool) -> [u8; CHUNK_AD_LEN] {
    let mut ad = [0u8; CHUNK_AD_LEN];
    ad[..16].copy_from_slice(file_id);
    ad[16..24].copy_from_slice(&index.to_be_bytes());
    ad[24] = last as u8;
    ad
}

/// Runs of at least twice this many bytes are split in two and sealed or opened on two
/// threads (rayon's pool, one thread per core): a 1 MiB request then uses every core.
/// Below it, handing work to another thread costs more than it saves.
const PARALLEL_RUN_MIN: usize = 64 * 1024;

/// Why a chunk did not decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {0} failed authentication")]
    Authentication(u64),
    #[error("chunk {0} has an impossible length")]
    BadLength(u64),
}

/// The content cipher of one file: its file ID and content key. This is the small interface
/// behind which the AEAD implementation lives, so a faster AES-256-GCM can be swapped in
/// without a format change.
pub struct ContentCipher {
    file_id: FileId,
    aead: Aes256Gcm,
    layout: ChunkLayout,
    /// Whether an all-zero non-final chunk reads as a hole (the header says: `FileHeader::
    /// holes_allowed`); otherwise it is damage.
    holes_allowed: bool,
}

impl ContentCipher {
    /// `holes_allowed` must come from the file's authenticated header.
    pub fn new(file_id: FileId, key: &Key256, layout: ChunkLayout, holes_allowed: bool) -> Self {
        ContentCipher {
            file_id,
            aead: Aes256Gcm::new(key.expose().into()),
            layout,
            holes_allowed,
        }
    }

    /// The cipher of a file with this header and key.
    pub fn for_header(
        header: &super::header::FileHeader,
        key: &Key256,
        layout: ChunkLayout,
    ) -> Self {
        Self::new(header.file_id, key, layout, header.holes_allowed())
    }

    pub fn holes_allowed(&self) -> bool {
        self.holes_allowed
    }

    /// From now on all-zero chunks are holes (after the header's HOLES flag was written).
    pub fn allow_holes(&mut self) {
        self.holes_allowed = true;
    }

    pub fn file_id(&self) -> &FileId {
        &self.file_id
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    /// Seals `plaintext` (at most one chunk) as chunk `index` into `out`, which must hold
    /// `plaintext.len() + CHUNK_OVERHEAD` bytes. Uses a fresh random nonce.
    pub fn seal_chunk(
        &self,
        index: u64,
        last: bool,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.seal_chunk_with_nonce(index, last, plaintext, out, nonce)
    }

    fn seal_chunk_with_nonce(
        &self,
        index: u64,
        last: bool,
        plaintext: &[u8],
        out: &mut [u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<(), CryptoError> {
        if plaintext.len() > self.layout.chunk_size()
            || out.len() != plaintext.len() + CHUNK_OVERHEAD
        {
            return Err(CryptoError::InvalidLength);
        }
        let (nonce_out, rest) = out.split_at_mut(NONCE_LEN);
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        nonce_out.copy_from_slice(&nonce);
        let ad = chunk_ad(&self.file_id, index, last);
        let tag = self
            .aead
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &ad,
                InOutBuf::new(plaintext, body).map_err(|_| CryptoError::InvalidLength)?,
            )
            .map_err(|_| CryptoError::InvalidLength)?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Opens chunk `index` from `ciphertext` into `out` (`ciphertext.len() - CHUNK_OVERHEAD`
    /// bytes). `is_final` says whether this is the file's last chunk: a final chunk must carry
    /// the last-chunk flag; a non-final one may carry either, and may be a hole.
    pub fn open_chunk(
        &self,
        index: u64,
        is_final: bool,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let len = ciphertext
            .len()
            .checked_sub(CHUNK_OVERHEAD)
            .ok_or(ChunkError::BadLength(index))?;
        if len > self.layout.chunk_size()
            || out.len() != len
            || (!is_final && len != self.layout.chunk_size())
        {
            return Err(ChunkError::BadLength(index));
        }
        if !is_final && self.holes_allowed && is_hole(ciphertext) {
            out.fill(0);
            return Ok(());
        }
        let (nonce, rest) = ciphertext.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(len);
        let nonce = Nonce::try_from(nonce).map_err(|_| ChunkError::BadLength(index))?;
        let tag = Tag::try_from(tag).map_err(|_| ChunkError::BadLength(index))?;
        // Final chunk: only "last". Non-final: normally "not last"; "last" is left over from
        // an interrupted grow (FORMAT.md, "Size changes").
        let flags: &[bool] = if is_final { &[true] } else { &[false, true] };
        for &last in flags {
            let ad = chunk_ad(&self.file_id, index, last);
            if self
                .aead
                .decrypt_inout_detached(
                    &nonce,
                    &ad,
                    InOutBuf::new(body, &mut *out).map_err(|_| ChunkError::BadLength(index))?,
                    &tag,
                )
                .is_ok()
            {
                return Ok(());
            }
        }
        out.fill(0);
        Err(ChunkError::Authentication(index))
    }

    /// Seals the run of chunks starting at chunk `first` from `plaintext` into `out`.
    /// `plaintext` covers whole chunks except possibly the last; the run's last chunk is
    /// flagged last if `ends_file`. `out` must be `sealed_run_len(plaintext.len())` bytes.
    pub fn seal_run(
        &self,
        first: u64,
        ends_file: bool,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let cs = self.layout.chunk_size();
        if out.len() != self.sealed_run_len(plaintext.len()) {
            return Err(CryptoError::InvalidLength);
        }
        let n = plaintext.len().div_ceil(cs).max(1);
        if plaintext.len() >= 2 * PARALLEL_RUN_MIN {
            // Two halves on two cores (recursively: all cores for a large run).
            let half = n / 2;
            let (pt_a, pt_b) = plaintext.split_at(half * cs);
            let (out_a, out_b) = out.split_at_mut(half * (cs + CHUNK_OVERHEAD));
            let (a, b) = rayon::join(
                || self.seal_run(first, false, pt_a, out_a),
                || self.seal_run(first + half as u64, ends_file, pt_b, out_b),
            );
            return a.and(b);
        }
        let mut nonces = vec![0u8; n * NONCE_LEN];
        fill_random(&mut nonces)?;
        let ct_len = cs + CHUNK_OVERHEAD;
        for i in 0..n {
            let pt = &plaintext[(i * cs).min(plaintext.len())..((i + 1) * cs).min(plaintext.len())];
            let start = i * ct_len;
            let dst = &mut out[start..start + pt.len() + CHUNK_OVERHEAD];
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&nonces[i * NONCE_LEN..(i + 1) * NONCE_LEN]);
            self.seal_chunk_with_nonce(first + i as u64, ends_file && i == n - 1, pt, dst, nonce)?;
        }
        Ok(())
    }

    /// Ciphertext length of a run of chunks holding `plaintext_len` bytes.
    pub fn sealed_run_len(&self, plaintext_len: usize) -> usize {
        let cs = self.layout.chunk_size();
        let n = plaintext_len.div_ceil(cs).max(1);
        plaintext_len + n * CHUNK_OVERHEAD
    }

    /// Opens a run of chunks starting at chunk `first` of a file whose last chunk is
    /// `final_index`, into `out`. Fails whole if any chunk fails.
    pub fn open_run(
        &self,
        first: u64,
        final_index: u64,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let ct_len = self.layout.chunk_size() + CHUNK_OVERHEAD;
        let cs = self.layout.chunk_size();
        if ciphertext.len() >= 2 * PARALLEL_RUN_MIN {
            let half = ciphertext.len().div_ceil(ct_len) / 2;
            let (ct_a, ct_b) = ciphertext.split_at(half * ct_len);
            if out.len() < half * cs {
                return Err(ChunkError::BadLength(first));
            }
            let (out_a, out_b) = out.split_at_mut(half * cs);
            let (a, b) = rayon::join(
                || self.open_run(first, final_index, ct_a, out_a),
                || self.open_run(first + half as u64, final_index, ct_b, out_b),
            );
            return a.and(b);
        }
        let mut pt_off = 0;
        for (i, ct) in ciphertext.chunks(ct_len).enumerate() {
            let index = first + i as u64;
            let pt_len = ct
                .len()
                .checked_sub(CHUNK_OVERHEAD)
                .ok_or(ChunkError::BadLength(index))?;
            let dst = out
                .get_mut(pt_off..pt_off + pt_len)
                .ok_or(ChunkError::BadLength(index))?;
            self.open_chunk(index, index == final_index, ct, dst)?;
            pt_off += cs.min(pt_len);
        }
        if pt_off != out.len() {
            return Err(ChunkError::BadLength(first));
        }
        Ok(())
    }
}

/// A hole: a full-size chunk whose ciphertext is all zeros (never produced by encryption in
/// practice: that would need a 2^-128 tag match).
pub fn is_hole(ciphertext: &[u8]) -> bool {
    ciphertext.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cipher(chunk_size: u32) -> ContentCipher {
        let key = Key256::from_slice(&mut [5u8; 32]).unwrap();
        ContentCipher::new([3u8; 16], &key, ChunkLayout::new(chunk_size).unwrap(), true)
    }

    fn seal_file(c: &ContentCipher, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; c.sealed_run_len(data.len())];
        c.seal_run(0, true, data, &mut out).unwrap();
        out
    }

    fn open_file(c: &ContentCipher, sealed: &[u8], size: u64) -> Result<Vec<u8>, ChunkError> {
        let l = c.layout();
        let mut out = vec![0u8; size as usize];
        c.open_run(0, l.last_chunk_index(size), sealed, &mut out)?;
        Ok(out)
    }

    #[test]
    fn chunk_size_validation() {
        assert!(ChunkLayout::new(4096).is_ok());
        assert!(ChunkLayout::new(1 << 20).is_ok());
        for bad in [0, 2048, 4095, 6000, 1 << 21] {
            assert!(ChunkLayout::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_at_the_edges() {
        let l = ChunkLayout::new(4096).unwrap();
        let h = HEADER_LEN as u64;
        assert_eq!(l.ciphertext_size(0), h + 28);
        assert_eq!(l.ciphertext_size(1), h + 29);
        assert_eq!(l.ciphertext_size(4096), h + 4124);
        assert_eq!(l.ciphertext_size(4097), h + 4124 + 29);
        assert_eq!(l.chunk_count(0), 1);
        assert_eq!(l.chunk_count(4096), 1);
        assert_eq!(l.chunk_count(4097), 2);
        for bad in [0, h, h + 27, h + 4124 + 28, h + 4124 + 5] {
            assert!(l.plaintext_size(bad).is_err(), "{bad}");
        }
        assert_eq!(l.plaintext_size_lenient(h + 4124 + 5), 4096);
    }

    proptest! {
        #[test]
        fn size_mapping_round_trips(size in 0u64..(1 << 40), shift in 12u32..=20) {
            let l = ChunkLayout::new(1 << shift).unwrap();
            prop_assert_eq!(l.plaintext_size(l.ciphertext_size(size)).unwrap(), size);
            let last = l.last_chunk_index(size);
            let last_len = l.plaintext_len_of_chunk(last, size) as u64;
            prop_assert_eq!(l.chunk_offset(last) + last_len + CHUNK_OVERHEAD as u64,
                l.ciphertext_size(size));
        }

        #[test]
        fn content_round_trips(data in proptest::collection::vec(any::<u8>(), 0..20000)) {
            let c = cipher(4096);
            let sealed = seal_file(&c, &data);
            prop_assert_eq!(sealed.len() as u64 + HEADER_LEN as u64,
                c.layout().ciphertext_size(data.len() as u64));
            prop_assert_eq!(open_file(&c, &sealed, data.len() as u64).unwrap(), data);
        }
    }

    #[test]
    fn exact_chunk_boundaries_round_trip() {
        let c = cipher(4096);
        for size in [0usize, 1, 4095, 4096, 4097, 8192, 8193] {
            let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let sealed = seal_file(&c, &data);
            assert_eq!(open_file(&c, &sealed, size as u64).unwrap(), data, "{size}");
        }
    }

    #[test]
    fn every_bit_flip_of_a_chunk_is_rejected() {
        let c = cipher(4096);
        let data = vec![0xabu8; 100];
        let sealed = seal_file(&c, &data);
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open_file(&c, &bad, 100).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn swapped_copied_truncated_and_unflagged_chunks_are_rejected() {
        let c = cipher(4096);
        let ct = 4096 + CHUNK_OVERHEAD;
        let data: Vec<u8> = (0..3 * 4096 + 10).map(|i| (i * 7) as u8).collect();
        let sealed = seal_file(&c, &data);
        let size = data.len() as u64;

        // Chunk 0 and 1 swapped.
        let mut swapped = sealed.clone();
        let (a, b) = swapped.split_at_mut(ct);
        a.swap_with_slice(&mut b[..ct]);
        assert!(open_file(&c, &swapped, size).is_err());

        // Chunk 1 copied from another file with the same key but another file ID.
        let other = ContentCipher::new(
            [4u8; 16],
            &Key256::from_slice(&mut [5u8; 32]).unwrap(),
            c.layout(),
            true,
        );
        let other_sealed = seal_file(&other, &data);
        let mut copied = sealed.clone();
        copied[ct..2 * ct].copy_from_slice(&other_sealed[ct..2 * ct]);
        assert!(open_file(&c, &copied, size).is_err());

        // Last chunk removed at a chunk boundary: chunk 2 is now final but not flagged last.
        let cut = &sealed[..3 * ct];
        assert!(open_file(&c, cut, 3 * 4096).is_err());

        // Last chunk resealed without the flag.
        let mut unflagged = sealed.clone();
        let tail = data.len() - 3 * 4096;
        let mut buf = vec![0u8; tail + CHUNK_OVERHEAD];
        c.seal_chunk(3, false, &data[3 * 4096..], &mut buf).unwrap();
        unflagged[3 * ct..].copy_from_slice(&buf);
        assert!(open_file(&c, &unflagged, size).is_err());
    }

    /// Runs large enough to be split across threads: the halves meet at the right chunk
    /// index, and damage anywhere (either half, across the split) is still caught.
    #[test]
    fn runs_split_across_threads_round_trip_and_catch_damage() {
        for chunk_size in [4096u32, 65536] {
            let c = cipher(chunk_size);
            let cs = chunk_size as usize;
            let ct = cs + CHUNK_OVERHEAD;
            for len in [2 * PARALLEL_RUN_MIN, (1 << 20) + 17, 3 << 20] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let sealed = seal_file(&c, &data);
                assert_eq!(open_file(&c, &sealed, len as u64).unwrap(), data);
                // Sealing in one piece and chunk by chunk give chunks that open alike.
                let n = len.div_ceil(cs);
                let mut one_by_one = vec![0u8; sealed.len()];
                for i in 0..n {
                    let pt = &data[i * cs..((i + 1) * cs).min(len)];
                    c.seal_chunk(
                        i as u64,
                        i == n - 1,
                        pt,
                        &mut one_by_one[i * ct..i * ct + pt.len() + CHUNK_OVERHEAD],
                    )
                    .unwrap();
                }
                assert_eq!(open_file(&c, &one_by_one, len as u64).unwrap(), data);
                for victim in [0, n / 2 - 1, n / 2, n - 1] {
                    let mut bad = sealed.clone();
                    bad[victim * ct + NONCE_LEN] ^= 1;
                    assert!(open_file(&c, &bad, len as u64).is_err(), "chunk {victim}");
                }
                // The two chunks either side of the split swapped.
                let mut swapped = sealed.clone();
                let mid = (n / 2 - 1) * ct;
                let (a, b) = swapped[mid..].split_at_mut(ct);
                a.swap_with_slice(&mut b[..ct]);
                assert!(open_file(&c, &swapped, len as u64).is_err());
            }
        }
    }

    #[test]
    fn non_final_chunk_accepts_either_flag_and_holes() {
        let c = cipher(4096);
        let ct = 4096 + CHUNK_OVERHEAD;
        let data = vec![1u8; 4096 * 2];
        let mut sealed = seal_file(&c, &data);
        // Chunk 0 resealed as "last" (an interrupted grow) still reads.
        c.seal_chunk(0, true, &data[..4096], &mut sealed[..ct])
            .unwrap();
        assert_eq!(open_file(&c, &sealed, 8192).unwrap(), data);
        // A hole in chunk 0 reads as zeros.
        sealed[..ct].fill(0);
        let mut expect = data.clone();
        expect[..4096].fill(0);
        assert_eq!(open_file(&c, &sealed, 8192).unwrap(), expect);
        // But a final all-zero chunk is an error.
        let mut zero_tail = sealed.clone();
        zero_tail[ct..].fill(0);
        assert!(open_file(&c, &zero_tail, 8192).is_err());
        // In a file whose header does not allow holes, the zeroed chunk is an error too.
        let strict = ContentCipher::new(
            [3u8; 16],
            &Key256::from_slice(&mut [5u8; 32]).unwrap(),
            c.layout(),
            false,
        );
        assert!(open_file(&strict, &sealed, 8192).is_err());
    }

    #[test]
    fn empty_file_must_have_its_last_chunk() {
        let c = cipher(4096);
        let sealed = seal_file(&c, &[]);
        assert_eq!(sealed.len(), CHUNK_OVERHEAD);
        assert_eq!(open_file(&c, &sealed, 0).unwrap(), Vec::<u8>::new());
        assert!(open_file(&c, &[0u8; CHUNK_OVERHEAD], 0).is_err());
    }

    #[test]
    fn nonces_are_fresh_per_write() {
        let c = cipher(4096);
        let a = seal_file(&c, b"same");
        let b = seal_file(&c, b"same");
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }
}
