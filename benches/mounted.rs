//! Sequential read and write through a real mount of the vaultfs binary: the whole path a
//! 1 MiB request takes (FUSE, buffers, chunk crypto, backing I/O), without fsbench's disk and
//! peers. Reads drop the mount's page cache for the file first (fadvise DONTNEED), so each
//! read goes through the daemon; the backing file may still be in the host's cache, which
//! keeps the disk out of the number.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const FILE_MIB: usize = 64;

struct Mount {
    _tmp: tempfile::TempDir,
    mnt: PathBuf,
    state: PathBuf,
}

fn vaultfs(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaultfs"));
    c.env("XDG_STATE_HOME", state);
    c
}

fn mount() -> Option<Mount> {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("*** mounted benchmarks skipped: no /dev/fuse ***");
        return None;
    }
    let tmp = tempfile::Builder::new()
        .prefix("vaultfs-bench-")
        .tempdir()
        .ok()?;
    let (vault, mnt, state, pw) = (
        tmp.path().join("vault"),
        tmp.path().join("mnt"),
        tmp.path().join("state"),
        tmp.path().join("pw"),
    );
    fs::create_dir(&mnt).ok()?;
    fs::write(&pw, "bench\n").ok()?;
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if !ok(vaultfs(&state)
        .args([
            "init",
            "--scrypt-logn",
            "10",
            "--no-recovery-key",
            "--passfile",
        ])
        .arg(&pw)
        .arg(&vault))
        || !ok(vaultfs(&state)
            .args(["mount", "--passfile"])
            .arg(&pw)
            .arg(&vault)
            .arg(&mnt))
    {
        eprintln!("*** mounted benchmarks skipped: cannot mount a test vault ***");
        return None;
    }
    Some(Mount {
        _tmp: tmp,
        mnt,
        state,
    })
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = vaultfs(&self.state).arg("unmount").arg(&self.mnt).status();
    }
}

fn sequential(c: &mut Criterion) {
    let Some(m) = mount() else {
        return;
    };
    let path = m.mnt.join("seq");
    let block = vec![0x5au8; 1 << 20];
    let mut group = c.benchmark_group("mounted_sequential_64MiB");
    group.throughput(Throughput::Bytes((FILE_MIB << 20) as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("write_1MiB_blocks_fsync", |b| {
        b.iter(|| {
            let mut f = File::create(&path).unwrap();
            for _ in 0..FILE_MIB {
                f.write_all(&block).unwrap();
            }
            f.sync_all().unwrap();
        })
    });
    let mut buf = vec![0u8; 1 << 20];
    group.bench_function("read_1MiB_blocks", |b| {
        b.iter(|| {
            let mut f = OpenOptions::new().read(true).open(&path).unwrap();
            rustix::fs::fadvise(f.as_fd(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let mut total = 0;
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            assert_eq!(total, FILE_MIB << 20);
        })
    });
    group.finish();
}

criterion_group!(benches, sequential);
criterion_main!(benches);
