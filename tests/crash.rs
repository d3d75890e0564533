//! Crash consistency under kill -9: a write-heavy workload runs on a mount, the daemon is
//! killed at a random moment, the vault is remounted, and every completed operation must be
//! there. Only the operation in flight at the kill may be half done (old data, new data, or
//! EIO in the chunks it was rewriting), fsck may name only its file, and the key database
//! still unlocks. 24 rounds, both chunk sizes.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestVault, fuse_available, vaultfs};

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Write {
        file: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    Truncate {
        file: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink(String),
    Fsync(String),
}

impl Op {
    fn files(&self) -> Vec<&str> {
        match self {
            Op::Create(f) | Op::Unlink(f) | Op::Fsync(f) => vec![f],
            Op::Write { file, .. } | Op::Truncate { file, .. } => vec![file],
            Op::Rename { from, to } => vec![from, to],
        }
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

type Model = BTreeMap<String, Vec<u8>>;

fn apply(model: &mut Model, op: &Op) {
    match op {
        Op::Create(f) => {
            model.insert(f.clone(), Vec::new());
        }
        Op::Write {
            file,
            off,
            len,
            seed,
        } => {
            let content = model.get_mut(file).expect("write to a known file");
            let end = *off as usize + len;
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*off as usize..end].copy_from_slice(&data(*seed, *len));
        }
        Op::Truncate { file, len } => model
            .get_mut(file)
            .expect("known file")
            .resize(*len as usize, 0),
        Op::Rename { from, to } => {
            let c = model.remove(from).expect("known file");
            model.insert(to.clone(), c);
        }
        Op::Unlink(f) => {
            model.remove(f);
        }
        Op::Fsync(_) => {}
    }
}

#[derive(Default)]
struct Log {
    done: Vec<Op>,
    in_flight: Option<Op>,
}

/// xorshift for choosing operations (deterministic per round).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn workload(v: &TestVault, log: &Mutex<Log>, round: u64, cs: u64) {
    let mut rng = Rng(round * 7919 + 17);
    let mut model = Model::new();
    for step in 0..100_000u64 {
        let names: Vec<String> = model.keys().cloned().collect();
        let pick = |rng: &mut Rng| names[rng.next(names.len() as u64) as usize].clone();
        let op = match if names.is_empty() { 0 } else { rng.next(10) } {
            0 => Op::Create(format!("f{step}")),
            1..=4 => {
                let file = pick(&mut rng);
                let size = model[&file].len() as u64;
                let off = match rng.next(3) {
                    0 => size, // append
                    1 => rng.next(size + 1),
                    _ => rng.next(4 * cs),
                };
                Op::Write {
                    file,
                    off,
                    len: 1 + rng.next(3 * cs) as usize,
                    seed: step,
                }
            }
            5 => Op::Truncate {
                file: pick(&mut rng),
                len: rng.next(4 * cs),
            },
            6 => Op::Rename {
                from: pick(&mut rng),
                to: format!("r{step}"),
            },
            7 if names.len() > 3 => Op::Unlink(pick(&mut rng)),
            _ => Op::Fsync(pick(&mut rng)),
        };
        log.lock().unwrap().in_flight = Some(op.clone());
        let p = |f: &str| v.p(f);
        let result = match &op {
            Op::Create(f) => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p(f))
                .and_then(close),
            Op::Write {
                file,
                off,
                len,
                seed,
            } => OpenOptions::new().write(true).open(p(file)).and_then(|f| {
                f.write_all_at(&data(*seed, *len), *off)?;
                close(f)
            }),
            Op::Truncate { file, len } => {
                OpenOptions::new().write(true).open(p(file)).and_then(|f| {
                    f.set_len(*len)?;
                    close(f)
                })
            }
            Op::Rename { from, to } => fs::rename(p(from), p(to)),
            Op::Unlink(f) => fs::remove_file(p(f)),
            Op::Fsync(f) => OpenOptions::new()
                .write(true)
                .open(p(f))
                .and_then(|f| f.sync_all()),
        };
        if result.is_err() {
            return; // the daemon is gone; `in_flight` is the op it may have half done
        }
        apply(&mut model, &op);
        let mut l = log.lock().unwrap();
        l.in_flight = None;
        l.done.push(op);
    }
}

/// Closes `f`, reporting the error a drop would ignore. With the kernel's writeback cache, a
/// write is complete when the close (or an fsync) that sends it to the daemon succeeds: a
/// daemon killed before then loses it, and the close says so (EIO).
fn close(f: fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: closing the fd we own, once.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_completed() {
    if !fuse_available() {
        return;
    }
    let mut in_flight_damage = 0;
    for round in 0..24u64 {
        let cs = if round % 2 == 0 { 4096 } else { 65536 };
        let v = TestVault::new(cs as u32);
        v.mount();
        let pid = v.daemon_pid();
        let log = Arc::new(Mutex::new(Log::default()));
        let kill_after = Duration::from_millis(30 + (round * 37) % 300);
        std::thread::scope(|s| {
            s.spawn(|| workload(&v, &log, round, cs));
            std::thread::sleep(kill_after);
            // SAFETY: killing our own test daemon.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let _ = vaultfs(&v.state)
            .args(["unmount", "--lazy"])
            .arg(&v.mnt)
            .output();
        let log = log.lock().unwrap();
        let mut before = Model::new();
        for op in &log.done {
            apply(&mut before, op);
        }
        let mut after = before.clone();
        let touched: Vec<String> = log
            .in_flight
            .iter()
            .flat_map(|op| op.files())
            .map(String::from)
            .collect();
        if let Some(op) = &log.in_flight {
            apply(&mut after, op);
        }

        v.mount();
        let mut listed: Vec<String> = fs::read_dir(&v.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        let names = |m: &Model| m.keys().cloned().collect::<Vec<_>>();
        assert!(
            listed == names(&before) || listed == names(&after),
            "round {round}: names {listed:?}"
        );
        for name in &listed {
            let got = fs::read(v.p(name));
            if !touched.contains(name) {
                let got = got.unwrap_or_else(|e| {
                    panic!("round {round}: {name} (not in flight) unreadable: {e}")
                });
                let want = before.get(name).or(after.get(name)).unwrap();
                assert!(
                    got == *want,
                    "round {round}: {name} differs ({} vs {} bytes)",
                    got.len(),
                    want.len()
                );
                continue;
            }
            // The file of the operation in flight: old bytes, new bytes, or EIO.
            match got {
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "round {round}: {name}");
                    in_flight_damage += 1;
                }
                Ok(got) => {
                    let old = before.get(name).cloned().unwrap_or_default();
                    let new = after.get(name).cloned().unwrap_or_default();
                    for (i, b) in got.iter().enumerate() {
                        let ok = old.get(i) == Some(b) || new.get(i) == Some(b) || *b == 0;
                        assert!(
                            ok,
                            "round {round}: {name} byte {i} is neither old nor new data"
                        );
                    }
                }
            }
        }
        v.unmount();
        // fsck names at most the file that was in flight.
        let o = v.with_password(&["fsck", "--json"]).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for p in report["problems"].as_array().unwrap() {
            let plain = p["plain_path"].as_str().unwrap_or("");
            assert!(
                touched.iter().any(|t| t == plain),
                "round {round}: fsck reports {p} (in flight: {touched:?})"
            );
        }
        assert!(!log.done.is_empty(), "round {round}: the workload ran");
    }
    eprintln!("24 kill -9 rounds; in-flight files that read as EIO: {in_flight_damage}");
}
