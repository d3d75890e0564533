//! An open regular file: its backing fd, header, content key and plaintext size, shared by
//! every handle on the inode. Reads take the inode's lock shared, writes and truncates take
//! it exclusive, so concurrent writers never tear a chunk; no lock is global.
//!
//! Size changes follow docs/FORMAT.md section 11: to grow, the old last chunk is first
//! resealed (full) still flagged last, then the new chunks are written, then the old last
//! chunk is resealed as non-last. Chunks skipped over are written as sealed zeros, unless
//! the vault is sparse (`init --sparse`), where they stay holes.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::RwLock;

use libc::{EFBIG, EIO};

use super::FsResult;
use super::backing;
use super::buffers::{self, Buffer};
use crate::crypto::chunk::{CHUNK_OVERHEAD, ChunkLayout, ContentCipher};
use crate::crypto::header::{FileHeader, HEADER_LEN, MAX_CHUNK_WRITES};
use crate::crypto::keys::Key256;
use crate::crypto::{CryptoError, Keyring};

/// What the content protocols need from a backing file. The real one is an fd; tests use a
/// recording store to replay every crash state the write and sync order allows.
pub trait FileStore: Send + Sync {
    /// Reads up to `buf.len()` bytes at `off`; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize>;
    fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()>;
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    fn size(&self) -> std::io::Result<u64>;
    fn sync(&self, data_only: bool) -> std::io::Result<()>;
    fn allocate(&self, how: Allocation, off: u64, len: u64) -> std::io::Result<()>;
    /// SEEK_DATA (`data`) or SEEK_HOLE from `pos`; None past the end.
    fn seek(&self, pos: u64, data: bool) -> std::io::Result<Option<u64>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Reserve space without changing the size.
    KeepSize,
    /// Deallocate (reads as zeros), keeping the size.
    PunchHole,
}

impl FileStore for OwnedFd {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        backing::pread_full(self.as_fd(), buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        backing::pwrite_all(self.as_fd(), buf, off)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        backing::ftruncate(self.as_fd(), len)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(backing::fstat(self.as_fd())?.st_size as u64)
    }
    fn sync(&self, data_only: bool) -> std::io::Result<()> {
        if data_only {
            backing::fdatasync(self.as_fd())
        } else {
            backing::fsync(self.as_fd())
        }
    }
    fn allocate(&self, how: Allocation, off: u64, len: u64) -> std::io::Result<()> {
        let flags = match how {
            Allocation::KeepSize => rustix::fs::FallocateFlags::KEEP_SIZE,
            Allocation::PunchHole => {
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE
            }
        };
        rustix::fs::fallocate(self, flags, off, len)
            .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))
    }
    fn seek(&self, pos: u64, data: bool) -> std::io::Result<Option<u64>> {
        let whence = if data {
            rustix::fs::SeekFrom::Data(pos)
        } else {
            rustix::fs::SeekFrom::Hole(pos)
        };
        match rustix::fs::seek(self, whence) {
            Ok(p) => Ok(Some(p)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(std::io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }
}

/// Chunk writes are reserved in the header in blocks that start small at each open and
/// double up to this size (one header rewrite and fdatasync per block). A session that makes
/// n chunk writes reserves at most 2n + 16, so open/write/close cycles cannot exhaust the
/// key's 2^32 budget the way fixed 65,536-write blocks did. Nothing is given back at close:
/// a header write then would change the file's times after the user's last operation.
const RESERVE_BLOCK_MAX: u64 = 1 << 16;

/// In a sparse vault, the largest gap a write past the end fills with sealed zeros under the
/// writeback cache (`write_locked`): more than the kernel plausibly holds dirty ahead of a
/// write it sends early. A larger one is a sparse write and makes holes.
const GAP_FILL_MAX: u64 = 1 << 30;
/// How long a write that would leave a gap waits for it to fill when no other write to the
/// file is under way.
const GAP_GRACE: std::time::Duration = std::time::Duration::from_millis(2);
/// Sealed zeros are written this much at a time (one buffer, reused).
const ZERO_FILL_STEP: u64 = 1 << 20;
const RESERVE_BLOCK_MIN: u64 = 16;

struct State {
    header: FileHeader,
    key: Key256,
    cipher: ContentCipher,
    size: u64,
    /// Chunk writes still covered by the last reservation recorded in the header.
    budget: u64,
    /// Size of the next reservation.
    next_block: u64,
}

impl State {
    /// A file just written as header plus empty last chunk: one reserved write used.
    fn new_empty(header: FileHeader, key: Key256, cipher: ContentCipher) -> State {
        State {
            header,
            key,
            cipher,
            size: 0,
            budget: RESERVE_BLOCK_MIN - 1,
            next_block: RESERVE_BLOCK_MIN * 2,
        }
    }
}

pub struct OpenFile<S: FileStore = OwnedFd> {
    fd: S,
    layout: ChunkLayout,
    state: RwLock<State>,
    /// How long a write that would leave whole chunks unwritten before it waits for other
    /// writes to fill them (`with_gap_wait`).
    gap_wait: std::time::Duration,
    /// Notified whenever the size changes, for writes waiting out a gap.
    grown: (std::sync::Mutex<()>, std::sync::Condvar),
    /// The vault stores holes (`with_sparse`).
    sparse: bool,
    /// Writes to this file in progress (waiting or writing).
    writers: std::sync::atomic::AtomicUsize,
    /// Held as long as the file is open (`with_charge`).
    _charge: Option<super::fd_charges::Charge>,
}

/// Counts a write in `OpenFile::writers` for as long as it lives.
struct WriterCount<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WriterCount<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WriterCount(count)
    }
}

impl Drop for WriterCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn io(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(EIO)
}

impl<S: FileStore> OpenFile<S> {
    /// Opens an existing file from its backing fd: reads and unwraps the header.
    pub fn open(fd: S, keyring: &Keyring, layout: ChunkLayout) -> Result<OpenFile<S>, String> {
        let mut head = [0u8; HEADER_LEN];
        let n = fd
            .read_at(&mut head, 0)
            .map_err(|e| format!("cannot read header: {e}"))?;
        let header = FileHeader::decode(&head[..n]).map_err(|e| format!("{e}"))?;
        let key = header
            .unwrap_key(keyring)
            .map_err(|e| format!("file header: {e}"))?;
        let backing_size = fd.size().map_err(|e| format!("{e}"))?;
        let size = layout
            .plaintext_size(backing_size)
            .map_err(|e| format!("{e}"))?;
        let cipher = ContentCipher::for_header(&header, &key, layout);
        // The last chunk must authenticate as last: a file cut back to a length that happens
        // to be valid (down to an empty file's) is caught here, even by reads that never
        // reach its end (a read at end of file decrypts nothing).
        let last = layout.last_chunk_index(size);
        let last_len = layout.plaintext_len_of_chunk(last, size);
        let mut ct = buffers::zeroed(last_len + CHUNK_OVERHEAD);
        let got = fd
            .read_at(&mut ct, layout.chunk_offset(last))
            .map_err(|e| format!("{e}"))?;
        let mut plain = buffers::zeroed(last_len);
        if got != ct.len() || cipher.open_chunk(last, true, &ct, &mut plain).is_err() {
            return Err(format!(
                "its last chunk ({last}) does not authenticate as last: truncated or damaged"
            ));
        }
        Ok(OpenFile {
            fd,
            layout,
            state: RwLock::new(State {
                header,
                key,
                cipher,
                size,
                budget: 0,
                next_block: RESERVE_BLOCK_MIN,
            }),
            gap_wait: std::time::Duration::ZERO,
            grown: Default::default(),
            sparse: false,
            writers: Default::default(),
            _charge: None,
        })
    }

    /// Writes a new empty file (header and empty last chunk) to `fd` and opens it.
    pub fn create(fd: S, keyring: &Keyring, layout: ChunkLayout) -> FsResult<OpenFile<S>> {
        let (header, key, cipher) = fresh_identity(keyring, layout)?;
        write_empty_file(&fd, &header, &cipher)?;
        let state = State::new_empty(header, key, cipher);
        Ok(OpenFile {
            fd,
            layout,
            state: RwLock::new(state),
            gap_wait: std::time::Duration::ZERO,
            grown: Default::default(),
            sparse: false,
            writers: Default::default(),
            _charge: None,
        })
    }

    /// With the kernel's writeback cache, several FUSE workers write one file's pages at
    /// once, so a write past the end can arrive before the writes of the pages before it:
    /// a gap that is not a hole. In a sparse vault such a write waits up to `wait` for the
    /// gap to fill before it fills it with sealed zeros (or, over 1 GiB, makes holes of it).
    pub fn with_gap_wait(mut self, wait: std::time::Duration) -> Self {
        self.gap_wait = wait;
        self
    }

    /// Charges this open file's fd to a user until the file is closed (`FdCharges`).
    pub fn with_charge(mut self, charge: Option<super::fd_charges::Charge>) -> Self {
        self._charge = charge;
        self
    }

    /// The mount's gap wait and hole policy (`VaultFs::write_policy`).
    pub fn with_write_policy(self, fs: &super::VaultFs) -> Self {
        let (wait, sparse) = fs.write_policy();
        self.with_gap_wait(wait).with_sparse(sparse)
    }

    /// A sparse vault (`init --sparse`): truncate, fallocate, punch and writes past the end
    /// leave holes, and the file's first hole sets its header's HOLES flag for good (from
    /// then on an all-zero chunk of it reads as zeros, unauthenticated). Otherwise they
    /// write sealed zeros, and an all-zero chunk of a version-2 file is always damage.
    pub fn with_sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    /// Whether this file may get new holes: the vault is sparse, or the file already reads
    /// all-zero chunks as holes (a sparse vault's, or a format-1 file).
    fn may_make_holes(&self, st: &State) -> bool {
        self.sparse || st.cipher.holes_allowed()
    }

    /// Writes sealed zeros over plaintext [from, to), growing the file if `to` is past its
    /// end, a bounded piece at a time.
    fn fill_zeros(&self, keyring: &Keyring, st: &mut State, from: u64, to: u64) -> FsResult<()> {
        let zeros = vec![0u8; ZERO_FILL_STEP.min(to.saturating_sub(from)) as usize];
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZERO_FILL_STEP) as usize;
            self.write_locked(keyring, st, at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Whether a write at `offset` would leave whole chunks unwritten in a file that does
    /// not allow holes yet.
    fn leaves_gap(&self, st: &State, offset: u64) -> bool {
        let cs = self.layout.chunk_size() as u64;
        !st.cipher.holes_allowed() && offset / cs > self.layout.last_chunk_index(st.size) + 1
    }

    fn notify_grown(&self) {
        let _g = self.grown.0.lock().expect("grown lock");
        self.grown.1.notify_all();
    }

    /// The backing store (for tests that inspect what was written).
    pub fn store(&self) -> &S {
        &self.fd
    }

    pub fn size(&self) -> u64 {
        self.state.read().expect("file lock").size
    }

    /// Reads up to `len` bytes at `offset`: short only at end of file; EIO if any chunk in the
    /// range fails to authenticate.
    pub fn read(&self, offset: u64, len: usize) -> FsResult<Buffer> {
        let st = self.state.read().expect("file lock");
        if offset >= st.size || len == 0 {
            return Ok(buffers::zeroed(0));
        }
        let end = st.size.min(offset + len as u64);
        let l = self.layout;
        let cs = l.chunk_size() as u64;
        let first = offset / cs;
        let last = (end - 1) / cs;
        let plain_len = ((last - first) * cs) as usize + l.plaintext_len_of_chunk(last, st.size);
        let mut ct = buffers::zeroed(plain_len + (last - first + 1) as usize * CHUNK_OVERHEAD);
        let got = self
            .fd
            .read_at(&mut ct, l.chunk_offset(first))
            .map_err(io)?;
        if got != ct.len() {
            return Err(EIO);
        }
        let mut plain = buffers::zeroed(plain_len);
        st.cipher
            .open_run(first, l.last_chunk_index(st.size), &ct, &mut plain)
            .map_err(|_| EIO)?;
        let start = (offset - first * cs) as usize;
        plain.keep(start..start + (end - offset) as usize);
        Ok(plain)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, keyring: &Keyring, offset: u64, data: &[u8]) -> FsResult<()> {
        let started = std::time::Instant::now();
        let _writing = WriterCount::enter(&self.writers);
        let mut st = self.state.write().expect("file lock");
        while !self.gap_wait.is_zero() && self.leaves_gap(&st, offset) {
            // The full wait only while another write to this file is under way (the one
            // that fills the gap, most likely); otherwise a short grace, since the gap may
            // be a seek past the end that nothing fills: sealed zeros then.
            let others = self.writers.load(std::sync::atomic::Ordering::Relaxed) > 1;
            let wait = if others {
                self.gap_wait
            } else {
                self.gap_wait.min(GAP_GRACE)
            };
            let left = (started + wait).saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            // Wait for another write to grow the file, without holding the file lock.
            let g = self.grown.0.lock().expect("grown lock");
            drop(st);
            let _ = self.grown.1.wait_timeout(g, left).expect("grown lock");
            st = self.state.write().expect("file lock");
        }
        let before = st.size;
        let result = self.write_locked(keyring, &mut st, offset, data);
        if result.is_err() {
            self.resync_size(&mut st);
        }
        let grew = st.size != before;
        drop(st);
        if grew {
            self.notify_grown();
        }
        result
    }

    fn write_locked(
        &self,
        keyring: &Keyring,
        st: &mut State,
        offset: u64,
        data: &[u8],
    ) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).ok_or(EFBIG)?;
        let l = self.layout;
        let cs = l.chunk_size() as u64;
        let old_size = st.size;
        let old_last = l.last_chunk_index(old_size);
        let first = offset / cs;
        let last = (end - 1) / cs;
        // Reserve the space of every chunk this write touches before touching any, so a full
        // disk fails the write (ENOSPC) instead of tearing a chunk of data already written.
        // Chunks skipped over by a growing write stay holes: reserve around them.
        let chunk_end = |i: u64| {
            l.chunk_offset(i)
                + (l.plaintext_len_of_chunk(i, old_size.max(end)) + CHUNK_OVERHEAD) as u64
        };
        if end > old_size && first > old_last {
            self.reserve_space(l.chunk_offset(old_last), chunk_end(old_last))?;
            self.reserve_space(l.chunk_offset(first), chunk_end(last))?;
        } else {
            self.reserve_space(l.chunk_offset(first.min(old_last)), chunk_end(last))?;
        }
        if end <= old_size || last == old_last {
            // Rewrite in place (possibly lengthening the last chunk).
            let new_size = old_size.max(end);
            let plain = self.build(st, first, last, new_size, offset, data)?;
            self.seal_and_write(
                keyring,
                st,
                first,
                last == l.last_chunk_index(new_size),
                &plain,
            )?;
            st.size = new_size;
            return Ok(());
        }
        // Grow past the old last chunk, skipping whole chunks.
        if first > old_last + 1 && !st.cipher.holes_allowed() {
            // A vault that stores no holes fills the gap with sealed zeros. So does a sparse
            // one under the writeback cache, where the skipped pages may just be dirty in the
            // kernel still (a sync_file_range or msync of a later range, a reordered
            // writeback): those pages overwrite the zeros when they come, and the file stays
            // free of holes. There only a gap too large to be that is a sparse write.
            let gap_start = (old_last + 1) * cs;
            if !self.sparse || (!self.gap_wait.is_zero() && offset - gap_start <= GAP_FILL_MAX) {
                self.fill_zeros(keyring, st, gap_start, offset)?;
                return self.write_locked(keyring, st, offset, data);
            }
        }
        if first > old_last + 1 {
            self.allow_holes(keyring, st)?;
        }
        let full_old_last = if first <= old_last {
            // The data overlaps the old last chunk: step 1 writes [first, old_last] with the
            // old last chunk full and still flagged last.
            self.build(st, first, old_last, (old_last + 1) * cs, offset, data)?
        } else {
            let tail = self.build(st, old_last, old_last, (old_last + 1) * cs, 0, &[])?;
            if !old_size.is_multiple_of(cs) || old_size == 0 {
                self.seal_and_write(keyring, st, old_last, true, &tail)?;
            }
            tail
        };
        if first <= old_last {
            self.seal_and_write(keyring, st, first, true, &full_old_last)?;
        }
        let b_first = first.max(old_last + 1);
        let plain = self.build(st, b_first, last, end, offset, data)?;
        self.seal_and_write(keyring, st, b_first, true, &plain)?;
        st.size = end;
        // Step 3: the old last chunk becomes non-last, restoring truncation detection there.
        let at = ((old_last - first.min(old_last)) * cs) as usize;
        self.seal_and_write(
            keyring,
            st,
            old_last,
            false,
            &full_old_last[at..at + cs as usize],
        )?;
        Ok(())
    }

    /// Plaintext of chunks `first..=last` of a file that will be `new_size` long, with
    /// `data` placed at `offset` over the current contents (read and decrypted where a chunk
    /// is only partly overwritten).
    fn build(
        &self,
        st: &State,
        first: u64,
        last: u64,
        new_size: u64,
        offset: u64,
        data: &[u8],
    ) -> FsResult<Buffer> {
        let l = self.layout;
        let cs = l.chunk_size() as u64;
        let len = ((last - first) * cs) as usize + l.plaintext_len_of_chunk(last, new_size);
        let mut plain = buffers::zeroed(len);
        let end = offset + data.len() as u64;
        let old_last = l.last_chunk_index(st.size);
        for i in first..=last {
            let (c_start, c_end) = (i * cs, (i * cs + cs).min(first * cs + len as u64));
            let covered = !data.is_empty() && offset <= c_start && end >= c_end;
            let old_len = l.plaintext_len_of_chunk(i, st.size);
            if i <= old_last && old_len > 0 && !covered {
                let mut ct = buffers::zeroed(old_len + CHUNK_OVERHEAD);
                let got = self.fd.read_at(&mut ct, l.chunk_offset(i)).map_err(io)?;
                if got != ct.len() {
                    return Err(EIO);
                }
                let at = ((i - first) * cs) as usize;
                let n = old_len.min(len - at);
                let mut out = buffers::zeroed(old_len);
                st.cipher
                    .open_chunk(i, i == old_last, &ct, &mut out)
                    .map_err(|_| EIO)?;
                plain[at..at + n].copy_from_slice(&out[..n]);
            }
        }
        // The part of `data` that falls into this run.
        let run_start = first * cs;
        let lo = offset.max(run_start);
        let hi = end.min(run_start + len as u64);
        if lo < hi {
            let src = &data[(lo - offset) as usize..(hi - offset) as usize];
            plain[(lo - run_start) as usize..(hi - run_start) as usize].copy_from_slice(src);
        }
        Ok(plain)
    }

    /// Seals `plain` as chunks from `first` (the run's last chunk flagged last if `ends_file`)
    /// and writes them, reserving chunk-write budget in the header first.
    fn seal_and_write(
        &self,
        keyring: &Keyring,
        st: &mut State,
        first: u64,
        ends_file: bool,
        plain: &[u8],
    ) -> FsResult<()> {
        let n = plain.len().div_ceil(self.layout.chunk_size()).max(1) as u64;
        self.reserve(keyring, st, n)?;
        let mut ct = buffers::zeroed(st.cipher.sealed_run_len(plain.len()));
        st.cipher
            .seal_run(first, ends_file, plain, &mut ct)
            .map_err(|_| EIO)?;
        st.budget -= n;
        self.fd
            .write_at(&ct, self.layout.chunk_offset(first))
            .map_err(io)
    }

    fn reserve(&self, keyring: &Keyring, st: &mut State, n: u64) -> FsResult<()> {
        if st.budget >= n {
            return Ok(());
        }
        let left = MAX_CHUNK_WRITES - st.header.writes_used;
        let block = n.max(st.next_block).min(left);
        if block < n {
            // The key's nonce budget is spent: the file needs a new key and ID, which
            // rewriting it gives (copy it, or `rotate --reencrypt`).
            log::error!(
                "a file key has served 2^32 chunk writes; copy the file to give it a new key"
            );
            return Err(libc::EFBIG);
        }
        let State { header, key, .. } = st;
        header
            .reserve_writes(block, keyring, key)
            .map_err(|_| EIO)?;
        self.fd.write_at(&st.header.encode(), 0).map_err(io)?;
        // The reservation must be on disk before the writes it covers.
        self.fd.sync(true).map_err(io)?;
        st.budget += block;
        st.next_block = (st.next_block * 2).min(RESERVE_BLOCK_MAX);
        Ok(())
    }

    /// Before the file's first hole: sets the header's HOLES flag and syncs it, so that the
    /// all-zero chunks about to be left read as zeros. Without the flag they read as damage
    /// (a version-2 header), which is what keeps a zeroed chunk from passing as a hole.
    fn allow_holes(&self, keyring: &Keyring, st: &mut State) -> FsResult<()> {
        let State { header, key, .. } = st;
        if !header.allow_holes(keyring, key).map_err(|_| EIO)? {
            return Ok(());
        }
        self.fd.write_at(&st.header.encode(), 0).map_err(io)?;
        self.fd.sync(true).map_err(io)?;
        st.cipher.allow_holes();
        Ok(())
    }

    /// Whether this file reads all-zero chunks as holes (its header allows them).
    pub fn holes_allowed(&self) -> bool {
        self.state.read().expect("file lock").cipher.holes_allowed()
    }

    /// After a failed multi-step change, the in-memory size follows what is on disk (every
    /// intermediate state of the protocols is a valid file).
    fn resync_size(&self, st: &mut State) {
        if let Ok(len) = self.fd.size() {
            st.size = self.layout.plaintext_size_lenient(len);
        }
    }

    /// Changes the size (truncate/ftruncate). Zero gives the file a new ID and key.
    pub fn truncate(&self, keyring: &Keyring, new_size: u64) -> FsResult<()> {
        let mut st = self.state.write().expect("file lock");
        let result = self.truncate_locked(keyring, &mut st, new_size);
        if result.is_err() {
            self.resync_size(&mut st);
        }
        result
    }

    fn truncate_locked(&self, keyring: &Keyring, st: &mut State, new_size: u64) -> FsResult<()> {
        let l = self.layout;
        let cs = l.chunk_size() as u64;
        let old_size = st.size;
        if new_size == old_size {
            return Ok(());
        }
        if new_size == 0 {
            let (header, key, cipher) = fresh_identity(keyring, l)?;
            self.fd.set_len(0).map_err(io)?;
            write_empty_file(&self.fd, &header, &cipher)?;
            *st = State::new_empty(header, key, cipher);
            return Ok(());
        }
        let old_last = l.last_chunk_index(old_size);
        let new_last = l.last_chunk_index(new_size);
        if new_size > old_size {
            // Space for the chunks this rewrites (the old last, the new last), never the holes.
            let chunk_end = |i: u64| {
                l.chunk_offset(i) + (l.plaintext_len_of_chunk(i, new_size) + CHUNK_OVERHEAD) as u64
            };
            if new_last > old_last + 1 && !self.may_make_holes(st) {
                // No holes: the new bytes are sealed zeros. A full disk part way leaves the
                // file as it was.
                let filled = self.fill_zeros(keyring, st, old_size, new_size);
                if filled.is_err() {
                    self.resync_size(st);
                    let _ = self.truncate_locked(keyring, st, old_size);
                }
                return filled;
            }
            self.reserve_space(l.chunk_offset(old_last), chunk_end(old_last))?;
            self.reserve_space(l.chunk_offset(new_last), chunk_end(new_last))?;
            if new_last > old_last + 1 {
                self.allow_holes(keyring, st)?;
            }
            if new_last == old_last {
                let plain = self.build(st, old_last, old_last, new_size, 0, &[])?;
                self.seal_and_write(keyring, st, old_last, true, &plain)?;
            } else {
                let tail = self.build(st, old_last, old_last, (old_last + 1) * cs, 0, &[])?;
                if !old_size.is_multiple_of(cs) || old_size == 0 {
                    self.seal_and_write(keyring, st, old_last, true, &tail)?;
                }
                let zeros = vec![0u8; l.plaintext_len_of_chunk(new_last, new_size)];
                self.seal_and_write(keyring, st, new_last, true, &zeros)?;
                st.size = new_size;
                self.seal_and_write(keyring, st, old_last, false, &tail)?;
            }
            st.size = new_size;
            return Ok(());
        }
        // Shrink to new_size > 0: the new last chunk K is resealed flagged last, then cut.
        let k = new_last;
        let k_len = l.plaintext_len_of_chunk(k, new_size);
        let old_k_len = l.plaintext_len_of_chunk(k, old_size);
        let full = self.build(st, k, k, old_size.min((k + 1) * cs), 0, &[])?;
        if k_len < old_k_len && k != old_last {
            // Keep every intermediate state valid: K flagged last at its old length, cut after it.
            self.seal_and_write(keyring, st, k, true, &full)?;
            self.fd
                .set_len(l.chunk_offset(k) + (old_k_len + CHUNK_OVERHEAD) as u64)
                .map_err(io)?;
        }
        self.seal_and_write(keyring, st, k, true, &full[..k_len])?;
        self.fd.set_len(l.ciphertext_size(new_size)).map_err(io)?;
        st.size = new_size;
        Ok(())
    }

    /// Preallocates backing bytes [from, to) without changing the backing size. A backing
    /// filesystem without fallocate gets no reservation (its errno is not ours to report).
    fn reserve_space(&self, from: u64, to: u64) -> FsResult<()> {
        if to <= from {
            return Ok(());
        }
        match self.fd.allocate(Allocation::KeepSize, from, to - from) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io(e)),
        }
    }

    /// fallocate: mode 0 (allocate, growing the file), KEEP_SIZE (allocate only), and
    /// PUNCH_HOLE|KEEP_SIZE (zero a range: whole non-final chunks become holes in the backing
    /// file, partial ones are rewritten as zeros). Other modes: EOPNOTSUPP.
    pub fn fallocate(&self, keyring: &Keyring, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let result = self.fallocate_inner(keyring, offset, len, mode);
        if result.is_err() {
            let mut st = self.state.write().expect("file lock");
            self.resync_size(&mut st);
        }
        result
    }

    fn fallocate_inner(&self, keyring: &Keyring, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        if mode & !(KEEP_SIZE | PUNCH_HOLE) != 0
            || (mode & PUNCH_HOLE != 0 && mode & KEEP_SIZE == 0)
        {
            return Err(libc::EOPNOTSUPP);
        }
        let end = offset.checked_add(len).ok_or(EFBIG)?;
        let mut st = self.state.write().expect("file lock");
        let l = self.layout;
        let cs = l.chunk_size() as u64;
        if mode & PUNCH_HOLE != 0 {
            let end = end.min(st.size);
            if offset >= end {
                return Ok(());
            }
            let final_chunk = l.last_chunk_index(st.size);
            let first_full = offset.div_ceil(cs);
            let end_full = (end / cs).min(final_chunk);
            if first_full >= end_full {
                return self.write_locked(
                    keyring,
                    &mut st,
                    offset,
                    &vec![0u8; (end - offset) as usize],
                );
            }
            // Head and tail partial chunks (and the final chunk, which must stay sealed).
            if offset < first_full * cs {
                self.write_locked(
                    keyring,
                    &mut st,
                    offset,
                    &vec![0u8; (first_full * cs - offset) as usize],
                )?;
            }
            if end > end_full * cs {
                self.write_locked(
                    keyring,
                    &mut st,
                    end_full * cs,
                    &vec![0u8; (end - end_full * cs) as usize],
                )?;
            }
            let (zero_from, zero_to) = (first_full * cs, end_full * cs);
            if !self.may_make_holes(&st) {
                // A vault that stores no holes: the range becomes sealed zeros.
                return self.fill_zeros(keyring, &mut st, zero_from, zero_to);
            }
            let from = l.chunk_offset(first_full);
            let to = l.chunk_offset(end_full);
            self.allow_holes(keyring, &mut st)?;
            return match self.fd.allocate(Allocation::PunchHole, from, to - from) {
                Ok(()) => Ok(()),
                // No hole punching in the backing: write the zeros as sealed chunks.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.fill_zeros(keyring, &mut st, zero_from, zero_to)
                }
                Err(e) => Err(io(e)),
            };
        }
        let first = offset / cs;
        let from = l.chunk_offset(first.min(l.last_chunk_index(st.size)));
        let to = l.ciphertext_size(end.max(st.size));
        self.fd
            .allocate(Allocation::KeepSize, from, to - from)
            .map_err(io)?;
        if mode & KEEP_SIZE == 0 && end > st.size {
            self.truncate_locked(keyring, &mut st, end)?;
        }
        Ok(())
    }

    /// lseek SEEK_DATA / SEEK_HOLE over the plaintext, following the backing file's holes
    /// chunk by chunk. The final chunk is always data; end of file is a hole.
    pub fn seek_data_hole(&self, offset: u64, whence: i32) -> FsResult<u64> {
        let st = self.state.read().expect("file lock");
        let l = self.layout;
        let cs = l.chunk_size() as u64;
        if offset >= st.size {
            return Err(libc::ENXIO);
        }
        let final_chunk = l.last_chunk_index(st.size);
        let ct_len = l.ciphertext_chunk_len();
        let backing_seek = |pos: u64, data: bool| self.fd.seek(pos, data).map_err(io);
        // A chunk is a hole when its ciphertext is all zeros (docs/FORMAT.md section 6).
        // Backing holes answer quickly; chunks sharing a block with a neighbour are read.
        if !st.cipher.holes_allowed() {
            // No holes in this file: all data up to its end.
            return Ok(if whence == libc::SEEK_HOLE {
                st.size
            } else {
                offset
            });
        }
        let is_hole = |i: u64| -> FsResult<bool> {
            if i >= final_chunk {
                return Ok(false);
            }
            let (start, end) = (l.chunk_offset(i), l.chunk_offset(i + 1));
            if backing_seek(start, true)?.is_none_or(|d| d >= end) {
                return Ok(true);
            }
            let mut ct = vec![0u8; ct_len as usize];
            let n = self.fd.read_at(&mut ct, start).map_err(io)?;
            Ok(n == ct.len() && crate::crypto::chunk::is_hole(&ct))
        };
        let chunk_at = |pos: u64| pos.saturating_sub(l.chunk_offset(0)) / ct_len;
        let want_hole = whence == libc::SEEK_HOLE;
        let mut i = offset / cs;
        while i < final_chunk {
            if is_hole(i)? == want_hole {
                return Ok(offset.max(i * cs));
            }
            // Skip ahead with the backing file's own data/hole map.
            let next =
                backing_seek(l.chunk_offset(i + 1), !want_hole)?.map_or(final_chunk, chunk_at);
            i = next.max(i + 1);
        }
        if want_hole {
            Ok(st.size)
        } else {
            Ok(offset.max(final_chunk * cs))
        }
    }

    pub fn fsync(&self, datasync: bool) -> FsResult<()> {
        let r = if datasync {
            self.fd.sync(true)
        } else {
            self.fd.sync(false)
        };
        r.map_err(io)
    }
}

fn fresh_identity(
    keyring: &Keyring,
    layout: ChunkLayout,
) -> FsResult<(FileHeader, Key256, ContentCipher)> {
    let (header, key) =
        FileHeader::create(keyring, RESERVE_BLOCK_MIN).map_err(|e: CryptoError| {
            log::error!("cannot create a file key: {e}");
            EIO
        })?;
    let cipher = ContentCipher::for_header(&header, &key, layout);
    Ok((header, key, cipher))
}

fn write_empty_file(
    fd: &impl FileStore,
    header: &FileHeader,
    cipher: &ContentCipher,
) -> FsResult<()> {
    let mut buf = vec![0u8; HEADER_LEN + CHUNK_OVERHEAD];
    buf[..HEADER_LEN].copy_from_slice(&header.encode());
    cipher
        .seal_run(0, true, &[], &mut buf[HEADER_LEN..])
        .map_err(|_| EIO)?;
    fd.write_at(&buf, 0).map_err(io)
}
