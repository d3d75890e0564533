//! Crash states beyond kill -9, as CrashMonkey and ALICE explore them: the content protocols
//! run on a recording store that logs every write, truncation, hole punch and sync. For every
//! crash point, every subset of the operations since the last sync may have reached the disk
//! (writes possibly torn at 512-byte sectors). Each such state must satisfy SPEC section 5:
//! chunks no unsynced operation touched read back exactly as synced; other bytes read as old
//! data, new data or zeros; EIO only in chunks an unsynced operation was rewriting; the file
//! fails to open only if its header or last chunk was being rewritten.

use std::sync::Mutex;

use vaultfs::crypto::chunk::ChunkLayout;
use vaultfs::crypto::header::HEADER_LEN;
use vaultfs::crypto::keys::Key256;
use vaultfs::crypto::{GenerationKeys, Keyring};
use vaultfs::fs::file::{Allocation, FileStore, OpenFile};

#[derive(Debug, Clone)]
enum Ev {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Punch(u64, u64),
    Sync,
    /// An application operation completed (its index in the model list).
    Done(usize),
}

#[derive(Default)]
struct Recording {
    cur: Vec<u8>,
    log: Vec<Ev>,
}

struct Store(Mutex<Recording>);

impl Store {
    fn new(bytes: Vec<u8>) -> Store {
        Store(Mutex::new(Recording {
            cur: bytes,
            log: Vec::new(),
        }))
    }
}

impl FileStore for Store {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        let r = self.0.lock().unwrap();
        let off = off as usize;
        if off >= r.cur.len() {
            return Ok(0);
        }
        let n = buf.len().min(r.cur.len() - off);
        buf[..n].copy_from_slice(&r.cur[off..off + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        let end = off as usize + buf.len();
        if r.cur.len() < end {
            r.cur.resize(end, 0);
        }
        r.cur[off as usize..end].copy_from_slice(buf);
        r.log.push(Ev::Write(off, buf.to_vec()));
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        r.cur.resize(len as usize, 0);
        r.log.push(Ev::SetLen(len));
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().cur.len() as u64)
    }
    fn sync(&self, _data_only: bool) -> std::io::Result<()> {
        self.0.lock().unwrap().log.push(Ev::Sync);
        Ok(())
    }
    fn allocate(&self, how: Allocation, off: u64, len: u64) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        if how == Allocation::PunchHole {
            let end = ((off + len) as usize).min(r.cur.len());
            let start = (off as usize).min(end);
            r.cur[start..end].fill(0);
            r.log.push(Ev::Punch(off, len));
        }
        Ok(())
    }
    fn seek(&self, pos: u64, data: bool) -> std::io::Result<Option<u64>> {
        let len = self.0.lock().unwrap().cur.len() as u64;
        Ok(if pos >= len {
            None
        } else if data {
            Some(pos)
        } else {
            Some(len)
        })
    }
}

fn apply(bytes: &mut Vec<u8>, ev: &Ev, torn_sectors: Option<usize>) {
    match ev {
        Ev::Write(off, data) => {
            let n = torn_sectors.map_or(data.len(), |s| (s * 512).min(data.len()));
            let end = *off as usize + n;
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*off as usize..end].copy_from_slice(&data[..n]);
        }
        Ev::SetLen(len) => bytes.resize(*len as usize, 0),
        Ev::Punch(off, len) => {
            let end = ((off + len) as usize).min(bytes.len());
            let start = (*off as usize).min(end);
            bytes[start..end].fill(0);
        }
        Ev::Sync | Ev::Done(_) => {}
    }
}

/// The backing byte ranges an event may change.
fn range_of(ev: &Ev, len_before: u64) -> Option<(u64, u64)> {
    match ev {
        Ev::Write(off, d) => Some((*off, off + d.len() as u64)),
        Ev::SetLen(len) => Some((*len.min(&len_before), u64::MAX)),
        Ev::Punch(off, len) => Some((*off, off + len)),
        Ev::Sync | Ev::Done(_) => None,
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn keyring() -> Keyring {
    let id = [1; 16];
    Keyring::new(
        id,
        GenerationKeys::derive(&id, 1, Key256::from_slice(&mut [7; 32]).unwrap()),
        None,
    )
}

#[test]
fn every_crash_state_the_sync_order_allows_is_consistent() {
    let kr = keyring();
    let mut states_checked = 0u64;
    let mut eio_chunks = 0u64;
    // Half the runs as in a sparse vault (holes left and punched), half storing sealed zeros.
    for (seed, chunk_size, sparse) in [
        (1u64, 4096u32, false),
        (2, 4096, true),
        (3, 4096, false),
        (4, 65536, true),
        (5, 4096, true),
        (6, 65536, false),
    ] {
        let layout = ChunkLayout::new(chunk_size).unwrap();
        let cs = chunk_size as u64;
        let store = Store::new(Vec::new());
        let f = OpenFile::create(store, &kr, layout)
            .unwrap()
            .with_sparse(sparse);
        let mut rng = Rng(seed * 0x9E37_79B9 + 1);
        let mut models: Vec<Vec<u8>> = vec![Vec::new()];
        let mut model: Vec<u8> = Vec::new();
        for op in 0..40usize {
            match rng.next(8) {
                0..=3 => {
                    let off = match rng.next(3) {
                        0 => model.len() as u64,
                        1 => rng.next(model.len() as u64 + 1),
                        _ => rng.next(5 * cs),
                    };
                    let len = 1 + rng.next(2 * cs) as usize;
                    let data: Vec<u8> = (0..len)
                        .map(|i| (i as u64 * 31 + op as u64 * 7 + 1) as u8 | 1)
                        .collect();
                    f.write(&kr, off, &data).unwrap();
                    let end = off as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&data);
                }
                4 => {
                    let len = rng.next(6 * cs);
                    f.truncate(&kr, len).unwrap();
                    model.resize(len as usize, 0);
                }
                5 if !model.is_empty() => {
                    let off = rng.next(model.len() as u64);
                    let len = 1 + rng.next(3 * cs);
                    f.fallocate(
                        &kr,
                        off,
                        len,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    )
                    .unwrap();
                    let end = ((off + len) as usize).min(model.len());
                    model[off as usize..end].fill(0);
                }
                _ => f.fsync(false).unwrap(),
            }
            models.push(model.clone());
            f.store()
                .0
                .lock()
                .unwrap()
                .log
                .push(Ev::Done(models.len() - 1));
        }
        let log = f.store().0.lock().unwrap().log.clone();

        // For every crash point: the durable prefix up to the last sync, plus subsets of the
        // events after it.
        // (From 1: before its first write a new file is empty, a state FORMAT.md documents.)
        for crash in 1..=log.len() {
            let last_sync = log[..crash].iter().rposition(|e| matches!(e, Ev::Sync));
            let durable_end = last_sync.map_or(0, |s| s + 1);
            let mut durable = Vec::new();
            for e in &log[..durable_end] {
                apply(&mut durable, e, None);
            }
            // The models the file may show: from the last one completed before the sync to the
            // one in flight at the crash.
            let done_before = |end: usize| {
                log[..end]
                    .iter()
                    .rev()
                    .find_map(|e| if let Ev::Done(i) = e { Some(*i) } else { None })
                    .unwrap_or(0)
            };
            let first_model = done_before(durable_end);
            let last_model = (done_before(crash) + 1).min(models.len() - 1);
            let candidates = &models[first_model..=last_model];
            let synced = &models[first_model];
            let pending: Vec<&Ev> = log[durable_end..crash]
                .iter()
                .filter(|e| !matches!(e, Ev::Sync | Ev::Done(_)))
                .collect();
            let subsets: Vec<u64> = if pending.len() <= 8 {
                (0..1u64 << pending.len()).collect()
            } else {
                (0..256).map(|_| rng.next(u64::MAX)).collect()
            };
            for mask in subsets {
                let mut bytes = durable.clone();
                // A sync inside an operation (its write reservation) makes part of that
                // operation durable: its chunks count as being rewritten too.
                let op_start = log[..durable_end]
                    .iter()
                    .rposition(|e| matches!(e, Ev::Done(_)))
                    .map_or(0, |i| i + 1);
                let mut len_then = 0u64;
                let mut touched: Vec<(u64, u64)> = Vec::new();
                for e in &log[..op_start] {
                    if let Ev::SetLen(n) = e {
                        len_then = *n;
                    } else if let Ev::Write(o, d) = e {
                        len_then = len_then.max(o + d.len() as u64);
                    }
                }
                for e in &log[op_start..durable_end] {
                    if let Some(r) = range_of(e, len_then) {
                        touched.push(r);
                    }
                    if let Ev::SetLen(n) = e {
                        len_then = *n;
                    } else if let Ev::Write(o, d) = e {
                        len_then = len_then.max(o + d.len() as u64);
                    }
                }
                for (k, e) in pending.iter().enumerate() {
                    let len_before = bytes.len() as u64;
                    if let Some(r) = range_of(e, len_before) {
                        touched.push(r);
                    }
                    if mask >> (k % 64) & 1 == 1 {
                        let torn = if rng.next(4) == 0 {
                            Some(rng.next(8) as usize)
                        } else {
                            None
                        };
                        apply(&mut bytes, e, torn);
                    }
                }
                let ctx = || {
                    let evs: Vec<String> = log[durable_end.saturating_sub(6)..crash]
                        .iter()
                        .map(|e| match e {
                            Ev::Write(o, d) => format!("W({o},{})", d.len()),
                            other => format!("{other:?}"),
                        })
                        .collect();
                    format!(
                        "seed {seed} crash {crash} durable_end {durable_end} mask {mask:b} models {first_model}..={last_model} events {evs:?}"
                    )
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    check_state(
                        &kr,
                        layout,
                        bytes,
                        candidates,
                        synced,
                        &touched,
                        &mut eio_chunks,
                    )
                }));
                if result.is_err() {
                    panic!("{}", ctx());
                }
                states_checked += 1;
            }
        }
    }
    eprintln!(
        "crash states checked: {states_checked}; chunks reading EIO (all inside rewrites): {eio_chunks}"
    );
    assert!(states_checked > 10_000);
}

fn check_state(
    kr: &Keyring,
    layout: ChunkLayout,
    bytes: Vec<u8>,
    candidates: &[Vec<u8>],
    synced: &[u8],
    touched: &[(u64, u64)],
    eio_chunks: &mut u64,
) {
    let overlaps = |a: u64, b: u64| touched.iter().any(|&(s, e)| s < b && a < e);
    let len = bytes.len() as u64;
    let opened = OpenFile::open(Store::new(bytes), kr, layout);
    let f = match opened {
        Ok(f) => f,
        Err(why) => {
            // Only a header or last chunk being rewritten may make the file unopenable.
            let last_start = layout.chunk_offset(
                layout
                    .chunk_count(layout.plaintext_size_lenient(len))
                    .saturating_sub(1),
            );
            assert!(
                overlaps(0, HEADER_LEN as u64)
                    || overlaps(last_start.min(len.saturating_sub(1)), u64::MAX)
                    || overlaps(len, u64::MAX),
                "unopenable though header and last chunk were untouched: {why}"
            );
            return;
        }
    };
    let size = f.size();
    let min = candidates.iter().map(Vec::len).min().unwrap() as u64;
    let max = candidates.iter().map(Vec::len).max().unwrap() as u64;
    let cs = layout.chunk_size() as u64;
    let grow_pad = cs; // grows pass through "old last chunk made full"
    assert!(
        size + grow_pad >= min && size <= max + grow_pad,
        "size {size} outside [{min}, {max}]"
    );
    for i in 0..layout.chunk_count(size) {
        let (cstart, cend) = (layout.chunk_offset(i), layout.chunk_offset(i + 1));
        match f.read(i * cs, cs as usize) {
            Err(code) => {
                assert_eq!(code, libc::EIO);
                assert!(
                    overlaps(cstart, cend),
                    "chunk {i} reads EIO but no unsynced operation touched it"
                );
                *eio_chunks += 1;
            }
            Ok(data) => {
                let untouched = !overlaps(cstart, cend);
                for (j, &b) in data.iter().enumerate() {
                    let p = (i * cs) as usize + j;
                    if untouched && p < synced.len() {
                        assert_eq!(
                            b, synced[p],
                            "synced byte {p} of an untouched chunk changed"
                        );
                    } else {
                        let ok = b == 0 || candidates.iter().any(|m| m.get(p) == Some(&b));
                        assert!(ok, "byte {p} is neither old nor new data");
                    }
                }
            }
        }
    }
}

mod common;

/// The directory-move protocol (FORMAT.md section 11) in each state a crash can leave:
/// the new ID staged but the move not done, the move done but the ID not committed, and a
/// temp directory from an interrupted mkdir. Every state reads correctly.
#[test]
fn directory_move_crash_states_read_correctly() {
    use std::fs;
    use vaultfs::crypto::names::{DIRID_FILE, DIRID_NEXT_FILE};
    if !common::fuse_available() {
        return;
    }
    let v = common::TestVault::new(4096);
    v.mount();
    fs::create_dir_all(v.p("A/d")).unwrap();
    fs::create_dir(v.p("B")).unwrap();
    fs::write(v.p("A/d/f"), b"inside d").unwrap();
    v.unmount();
    let old_place = common::backing_of(&v, "A/d");
    let old_id = fs::read(old_place.join(DIRID_FILE)).unwrap();
    v.mount();
    fs::rename(v.p("A/d"), v.p("B/e")).unwrap();
    v.unmount();
    let new_place = common::backing_of(&v, "B/e");
    let new_id = fs::read(new_place.join(DIRID_FILE)).unwrap();
    assert_ne!(
        old_id, new_id,
        "a move reseals the directory ID for its new place"
    );

    // Moved, ID not yet committed: the staged ID matches the new place.
    fs::write(new_place.join(DIRID_FILE), &old_id).unwrap();
    fs::write(new_place.join(DIRID_NEXT_FILE), &new_id).unwrap();
    v.mount();
    assert_eq!(fs::read(v.p("B/e/f")).unwrap(), b"inside d");
    assert!(!v.p("A/d").exists());
    v.unmount();

    // Staged but not moved: the current ID still matches the old place.
    fs::rename(&new_place, &old_place).unwrap();
    v.mount();
    assert_eq!(fs::read(v.p("A/d/f")).unwrap(), b"inside d");
    assert!(!v.p("B/e").exists());
    // The next move overwrites the stale staged ID and works.
    fs::rename(v.p("A/d"), v.p("B/e2")).unwrap();
    assert_eq!(fs::read(v.p("B/e2/f")).unwrap(), b"inside d");
    v.unmount();

    // An interrupted mkdir leaves a temp directory: hidden, reported by fsck, harmless.
    let b = common::backing_of(&v, "B");
    fs::create_dir(b.join("vaultfs.tmp.0123456789abcdef01234567")).unwrap();
    v.mount();
    let names: Vec<_> = fs::read_dir(v.p("B"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["e2"]);
    v.unmount();
    let o = v.with_password(&["fsck", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["leftover"],
        "fsck reports only the leftover temp directory"
    );
}
