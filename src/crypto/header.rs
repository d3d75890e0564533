//! The file header: 144 bytes at the start of every regular backing file.
//!
//! ```text
//! offset len field
//!      0   8 magic "VAULTFS\0"
//!      8   2 format version (u16 BE): 1, or 2 for files written since format 2
//!     10   2 flags (u16 BE): version 2 only, bit 0 = HOLES, bits 8..11 = node type;
//!              version 1: must be 0
//!     12   4 device number of a device node (u32 BE), else 0
//!     16  16 file ID (random)
//!     32   8 chunk-write budget used under this file key (u64 BE)
//!     40  52 key slot 0: generation (u32 BE, 0 = empty) || AES-256-SIV(file key) (48)
//!     92  52 key slot 1: same layout
//! ```
//! A slot's wrapped key has associated data = bytes 0..40, the slot index and the slot's
//! generation: every header field except the other slot, so rotation can fill one slot and
//! later clear the other without invalidating it.
//!
//! Holes: a version-1 file reads any all-zero non-final chunk as a hole (zeros), so a writer
//! of the backing store could zero a chunk of data unnoticed. A version-2 file does so only
//! if its (authenticated) HOLES flag is set, which vaultfs sets before it first leaves a hole
//! in the file; every other version-2 file reads an all-zero chunk as damage (EIO).

use zeroize::Zeroizing;

use super::keys::{Key256, ct_eq};
use super::siv::{self, SIV_TAG_LEN};
use super::{CryptoError, FileId, GenerationKeys, Keyring};

pub const HEADER_LEN: usize = 144;
pub const MAGIC: &[u8; 8] = b"VAULTFS\0";
/// Version of headers written now; version 1 is still read.
pub const FORMAT_VERSION: u16 = 2;
/// Flag of a version-2 header: the file may hold holes (all-zero chunks read as zeros).
pub const FLAG_HOLES: u16 = 1;
/// Bits 8..11 of a version-2 header's flags: the node type of a header-only file.
const NODE_SHIFT: u16 = 8;
const NODE_MASK: u16 = 0xf << NODE_SHIFT;

/// What a header-only backing file stands for (format 2): FIFOs, sockets and device nodes
/// are stored as a 144-byte header, so their type (and device number) is authenticated
/// like everything else in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    Fifo = 1,
    Socket = 2,
    CharDevice = 3,
    BlockDevice = 4,
}

impl NodeType {
    fn from_code(code: u16) -> Option<NodeType> {
        match code {
            1 => Some(NodeType::Fifo),
            2 => Some(NodeType::Socket),
            3 => Some(NodeType::CharDevice),
            4 => Some(NodeType::BlockDevice),
            _ => None,
        }
    }

    /// The type of a `mknod` mode (S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK).
    pub fn from_mode(mode: u32) -> Option<NodeType> {
        match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(NodeType::Fifo),
            libc::S_IFSOCK => Some(NodeType::Socket),
            libc::S_IFCHR => Some(NodeType::CharDevice),
            libc::S_IFBLK => Some(NodeType::BlockDevice),
            _ => None,
        }
    }
}
const FIXED_LEN: usize = 40;
const WRAPPED_LEN: usize = 32 + SIV_TAG_LEN;
const SLOT_LEN: usize = 4 + WRAPPED_LEN;
/// A file key serves at most this many chunk writes (random 96-bit nonces).
pub const MAX_CHUNK_WRITES: u64 = 1 << 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    pub generation: u32,
    pub wrapped: [u8; WRAPPED_LEN],
}

/// A decoded header. The file key itself is never stored here, only its wrapped forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// 1 or 2 (bytes 8..10); kept as read, since the wrapped keys' AD covers it.
    pub version: u16,
    /// Version 2: FLAG_HOLES and the node type bits. Version 1: 0 (holes always allowed).
    pub flags: u16,
    /// Device number of a device node (bytes 12..16), else 0.
    pub rdev: u32,
    pub file_id: FileId,
    pub writes_used: u64,
    pub slots: [Option<KeySlot>; 2],
}

impl FileHeader {
    /// A header for a new file: fresh ID, fresh key wrapped under the active generation, and
    /// `reserve` chunk writes already counted as used (the writer's first reservation).
    pub fn create(keyring: &Keyring, reserve: u64) -> Result<(FileHeader, Key256), CryptoError> {
        if reserve > MAX_CHUNK_WRITES {
            return Err(CryptoError::TooLong);
        }
        let file_id = super::keys::random_array()?;
        let file_key = Key256::random()?;
        let mut header = FileHeader {
            version: FORMAT_VERSION,
            flags: 0,
            rdev: 0,
            file_id,
            writes_used: reserve,
            slots: [None, None],
        };
        header.slots[0] = Some(header.wrap(0, keyring.active(), &file_key));
        Ok((header, file_key))
    }

    /// The header of a FIFO, socket or device node: a fresh ID and key (the key is never
    /// used; it makes the header authenticate), the type and device number in the fields
    /// the wrapped key's AD covers.
    pub fn create_node(
        keyring: &Keyring,
        node: NodeType,
        rdev: u32,
    ) -> Result<FileHeader, CryptoError> {
        let (mut header, key) = Self::create(keyring, 0)?;
        header.flags = (node as u16) << NODE_SHIFT;
        header.rdev = if matches!(node, NodeType::CharDevice | NodeType::BlockDevice) {
            rdev
        } else {
            0
        };
        header.slots[0] = Some(header.wrap(0, keyring.active(), &key));
        Ok(header)
    }

    /// The node type of a header-only file, None for a regular file.
    pub fn node(&self) -> Option<NodeType> {
        NodeType::from_code((self.flags & NODE_MASK) >> NODE_SHIFT)
    }

    fn fixed_fields(&self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&self.version.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.rdev.to_be_bytes());
        b[16..32].copy_from_slice(&self.file_id);
        b[32..40].copy_from_slice(&self.writes_used.to_be_bytes());
        b
    }

    fn slot_ad(&self, index: usize, generation: u32) -> ([u8; FIXED_LEN], [u8; 5]) {
        let mut tail = [0u8; 5];
        tail[0] = index as u8;
        tail[1..].copy_from_slice(&generation.to_be_bytes());
        (self.fixed_fields(), tail)
    }

    fn wrap(&self, index: usize, keys: &GenerationKeys, file_key: &Key256) -> KeySlot {
        let (fixed, tail) = self.slot_ad(index, keys.generation);
        let sealed = siv::seal(&keys.header_wrap, &[&fixed, &tail], file_key.expose());
        let mut wrapped = [0u8; WRAPPED_LEN];
        wrapped.copy_from_slice(&sealed);
        KeySlot {
            generation: keys.generation,
            wrapped,
        }
    }

    /// Unwraps the file key. Every non-empty slot must name a live generation, authenticate,
    /// and hold the same key: a header is accepted whole or not at all.
    pub fn unwrap_key(&self, keyring: &Keyring) -> Result<Key256, CryptoError> {
        let mut found: Option<Key256> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let keys = keyring.get(slot.generation)?;
            let (fixed, tail) = self.slot_ad(index, slot.generation);
            let plain = Zeroizing::new(siv::open(
                &keys.header_wrap,
                &[&fixed, &tail],
                &slot.wrapped,
            )?);
            match &found {
                Some(key) if !ct_eq(key.expose(), &plain) => {
                    return Err(CryptoError::Authentication);
                }
                Some(_) => {}
                None => found = Some(Key256::from_slice(&mut Zeroizing::new(plain.to_vec()))?),
            }
        }
        found.ok_or(CryptoError::Malformed("file header has no key"))
    }

    /// Whether an all-zero non-final chunk of this file is a hole (reads as zeros) rather
    /// than damage.
    pub fn holes_allowed(&self) -> bool {
        self.version == 1 || self.flags & FLAG_HOLES != 0
    }

    /// Sets the HOLES flag (before the file's first hole is made) and rewraps both slots,
    /// whose AD covers the flags. Returns whether the header changed.
    pub fn allow_holes(
        &mut self,
        keyring: &Keyring,
        file_key: &Key256,
    ) -> Result<bool, CryptoError> {
        if self.holes_allowed() {
            return Ok(false);
        }
        let used = self.writes_used;
        self.flags |= FLAG_HOLES;
        self.set_writes_used(used, keyring, file_key)?;
        Ok(true)
    }

    /// Generations the header's slots name.
    pub fn generations(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().flatten().map(|s| s.generation)
    }

    /// Rotation step 1: wraps `file_key` under `keys` into the empty slot (or the slot that
    /// already names that generation). Write and sync the header before clearing the other.
    pub fn fill_spare_slot(
        &mut self,
        keys: &GenerationKeys,
        file_key: &Key256,
    ) -> Result<(), CryptoError> {
        let index = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.generation == keys.generation))
            .or_else(|| self.slots.iter().position(Option::is_none))
            .ok_or(CryptoError::Malformed("both header key slots are in use"))?;
        self.slots[index] = Some(self.wrap(index, keys, file_key));
        Ok(())
    }

    /// Rotation step 2: empties the slot of `generation`.
    pub fn clear_generation(&mut self, generation: u32) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|s| s.generation == generation) {
                *slot = None;
            }
        }
    }

    /// Records more chunk writes as used and rewraps both slots (their AD covers the count).
    /// Fails once the file key's budget is spent; the file must then get a new key.
    pub fn reserve_writes(
        &mut self,
        count: u64,
        keyring: &Keyring,
        file_key: &Key256,
    ) -> Result<(), CryptoError> {
        let used = self
            .writes_used
            .checked_add(count)
            .ok_or(CryptoError::TooLong)?;
        self.set_writes_used(used, keyring, file_key)
    }

    /// Sets the count of chunk writes used under this key (a writer gives back the unused
    /// part of its reservation this way) and rewraps both slots.
    pub fn set_writes_used(
        &mut self,
        used: u64,
        keyring: &Keyring,
        file_key: &Key256,
    ) -> Result<(), CryptoError> {
        if used > MAX_CHUNK_WRITES {
            return Err(CryptoError::TooLong);
        }
        let keys: Vec<_> = self
            .slots
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| keyring.get(s.generation).cloned())
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        self.writes_used = used;
        for (index, keys) in keys.iter().enumerate() {
            if let Some(keys) = keys {
                self.slots[index] = Some(self.wrap(index, keys, file_key));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..FIXED_LEN].copy_from_slice(&self.fixed_fields());
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(slot) = slot {
                let at = FIXED_LEN + i * SLOT_LEN;
                b[at..at + 4].copy_from_slice(&slot.generation.to_be_bytes());
                b[at + 4..at + SLOT_LEN].copy_from_slice(&slot.wrapped);
            }
        }
        b
    }

    /// Parses a header. Structure only: the wrapped keys authenticate in `unwrap_key`.
    pub fn decode(bytes: &[u8]) -> Result<FileHeader, CryptoError> {
        if bytes.len() < HEADER_LEN {
            return Err(CryptoError::Malformed("file header is truncated"));
        }
        if &bytes[..8] != MAGIC {
            return Err(CryptoError::Malformed("not a vaultfs file header"));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != 1 && version != FORMAT_VERSION {
            return Err(CryptoError::Malformed(
                "file header of another format version (a newer vaultfs?)",
            ));
        }
        let flags = u16::from_be_bytes([bytes[10], bytes[11]]);
        let rdev = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let known = if version == 1 {
            0
        } else {
            FLAG_HOLES | NODE_MASK
        };
        let node = (flags & NODE_MASK) >> NODE_SHIFT;
        let is_device = matches!(
            NodeType::from_code(node),
            Some(NodeType::CharDevice | NodeType::BlockDevice)
        );
        if flags & !known != 0
            || (node != 0 && NodeType::from_code(node).is_none())
            || (node != 0 && flags & FLAG_HOLES != 0)
            || (rdev != 0 && !is_device)
        {
            return Err(CryptoError::Malformed("unknown file header flags"));
        }
        let mut file_id = [0u8; 16];
        file_id.copy_from_slice(&bytes[16..32]);
        let writes_used = u64::from_be_bytes(bytes[32..40].try_into().expect("8 bytes"));
        let mut slots = [None, None];
        for (i, slot) in slots.iter_mut().enumerate() {
            let at = FIXED_LEN + i * SLOT_LEN;
            let generation = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            let mut wrapped = [0u8; WRAPPED_LEN];
            wrapped.copy_from_slice(&bytes[at + 4..at + SLOT_LEN]);
            if generation == 0 {
                if wrapped.iter().any(|&b| b != 0) {
                    return Err(CryptoError::Malformed(
                        "empty header key slot is not zeroed",
                    ));
                }
            } else {
                *slot = Some(KeySlot {
                    generation,
                    wrapped,
                });
            }
        }
        if slots.iter().all(Option::is_none) {
            return Err(CryptoError::Malformed("file header has no key"));
        }
        Ok(FileHeader {
            version,
            flags,
            rdev,
            file_id,
            writes_used,
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::{keyring_with, rotating_keyring};

    #[test]
    fn round_trip_and_unwrap() {
        let kr = keyring_with(1, 9);
        let (h, key) = FileHeader::create(&kr, 1).unwrap();
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEADER_LEN);
        let back = FileHeader::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.unwrap_key(&kr).unwrap().expose(), key.expose());
    }

    #[test]
    fn the_holes_flag_is_authenticated_and_version_1_always_allows_holes() {
        let kr = keyring_with(1, 9);
        let (mut h, key) = FileHeader::create(&kr, 1).unwrap();
        assert_eq!(h.version, 2);
        assert!(!h.holes_allowed());
        // Setting the flag without rewrapping (what a writer of the backing store can do to
        // the bytes) fails authentication.
        let mut forged = h.encode();
        forged[11] |= FLAG_HOLES as u8;
        let forged = FileHeader::decode(&forged).unwrap();
        assert!(forged.holes_allowed());
        assert!(forged.unwrap_key(&kr).is_err());
        // Setting it properly rewraps.
        assert!(h.allow_holes(&kr, &key).unwrap());
        assert!(!h.allow_holes(&kr, &key).unwrap());
        let back = FileHeader::decode(&h.encode()).unwrap();
        assert!(back.holes_allowed());
        assert_eq!(back.unwrap_key(&kr).unwrap().expose(), key.expose());
        // Unknown flags and reserved bytes are refused.
        let mut bad = h.encode();
        bad[10] = 0x80;
        assert!(FileHeader::decode(&bad).is_err());
        // A version-1 header (as format 1 wrote it) reads with holes allowed; its flags must
        // be zero, and it stays version 1 when rewrapped.
        let mut v1 = FileHeader {
            version: 1,
            flags: 0,
            ..h.clone()
        };
        v1.set_writes_used(3, &kr, &key).unwrap();
        let bytes = v1.encode();
        assert_eq!(&bytes[8..12], &[0, 1, 0, 0]);
        let back = FileHeader::decode(&bytes).unwrap();
        assert!(back.holes_allowed());
        assert_eq!(back.unwrap_key(&kr).unwrap().expose(), key.expose());
        let mut flagged = bytes;
        flagged[11] = 1;
        assert!(FileHeader::decode(&flagged).is_err());
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let kr = keyring_with(1, 9);
        let (h, _) = FileHeader::create(&kr, 1).unwrap();
        let bytes = h.encode();
        for bit in 0..HEADER_LEN * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            let ok = FileHeader::decode(&bad).and_then(|h| h.unwrap_key(&kr));
            assert!(ok.is_err(), "bit {bit}");
        }
    }

    #[test]
    fn zero_and_foreign_headers_are_rejected() {
        let kr = keyring_with(1, 9);
        assert!(FileHeader::decode(&[0u8; HEADER_LEN]).is_err());
        assert!(FileHeader::decode(&[0u8; 10]).is_err());
        let (h, _) = FileHeader::create(&keyring_with(1, 8), 1).unwrap();
        assert!(matches!(
            h.unwrap_key(&kr),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn rotation_fills_then_clears_and_the_key_survives_each_step() {
        let rk = rotating_keyring();
        let old_only = keyring_with(1, 1);
        let (mut h, key) = FileHeader::create(&old_only, 1).unwrap();
        h.fill_spare_slot(rk.active(), &key).unwrap();
        let mid = FileHeader::decode(&h.encode()).unwrap();
        assert_eq!(mid.unwrap_key(&rk).unwrap().expose(), key.expose());
        // Every filled slot must name a live generation.
        assert!(mid.unwrap_key(&old_only).is_err());
        h.clear_generation(1);
        let done = FileHeader::decode(&h.encode()).unwrap();
        assert_eq!(done.generations().collect::<Vec<_>>(), vec![2]);
        assert_eq!(done.unwrap_key(&rk).unwrap().expose(), key.expose());
        assert!(done.unwrap_key(&old_only).is_err());
    }

    #[test]
    fn write_budget_is_authenticated_and_bounded() {
        let kr = keyring_with(1, 9);
        let (mut h, key) = FileHeader::create(&kr, 1).unwrap();
        h.reserve_writes(1 << 16, &kr, &key).unwrap();
        let mut bytes = h.encode();
        assert_eq!(
            FileHeader::decode(&bytes)
                .unwrap()
                .unwrap_key(&kr)
                .unwrap()
                .expose(),
            key.expose()
        );
        bytes[39] ^= 1; // roll the counter back
        assert!(FileHeader::decode(&bytes).unwrap().unwrap_key(&kr).is_err());
        assert!(h.reserve_writes(MAX_CHUNK_WRITES, &kr, &key).is_err());
    }
}
