//! A directory of 100,000 files: `ls -l` and `find` take time linear in the number of
//! entries, and the daemon's memory stays under a stated bound (docs/PERFORMANCE.md).

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestVault, fuse_available};

/// Peak RSS (VmHWM) the daemon may reach serving `ls -l` of 100,000 files: a fixed part
/// (code, pools, locked keys) plus, per inode the kernel holds, one node (about 200 bytes
/// and a pinned fd) and one listing entry (about 150 bytes).
const RSS_BOUND_KIB: u64 = 96 * 1024;

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Creates files `from..to` in `dir`, on two threads.
fn create(dir: &std::path::Path, from: usize, to: usize) {
    std::thread::scope(|s| {
        for part in 0..2 {
            s.spawn(move || {
                for i in (from + part..to).step_by(2) {
                    fs::File::create(dir.join(format!("file-{i:06}"))).unwrap();
                }
            });
        }
    });
}

/// Seconds `cmd` takes on a freshly mounted vault (nothing cached in the kernel), checking
/// that it saw `entries` lines.
fn timed(v: &TestVault, cmd: &str, entries: usize) -> f64 {
    v.unmount();
    v.mount();
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{cmd} | wc -l"))
        .current_dir(&v.mnt)
        .output()
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let lines: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        lines >= entries,
        "{cmd}: {lines} lines for {entries} entries"
    );
    took
}

#[test]
fn listing_100k_files_is_linear_and_memory_stays_bounded() {
    if !fuse_available() {
        return;
    }
    let v = TestVault::new(4096);
    v.mount();
    let dir = v.p("big");
    fs::create_dir(&dir).unwrap();
    let (small, large) = (25_000, 100_000);
    create(&dir, 0, small);
    let ls_small = timed(&v, "ls -l big", small);
    let find_small = timed(&v, "find big", small);
    create(&dir, small, large);
    let ls_large = timed(&v, "ls -l big", large);
    let find_large = timed(&v, "find big", large);
    let hwm = vm_hwm_kib(v.daemon_pid());
    // Four times the entries: linear is 4x the time. Allow up to 10x for a noisy machine;
    // a quadratic step would show as 16x.
    let per_entry = |t: f64, n: usize| Duration::from_secs_f64(t / n as f64);
    eprintln!(
        "ls -l: {ls_small:.2} s for {small}, {ls_large:.2} s for {large} ({:?} / {:?} per entry); \
         find: {find_small:.2} s, {find_large:.2} s; daemon peak RSS {} MiB",
        per_entry(ls_small, small),
        per_entry(ls_large, large),
        hwm / 1024
    );
    for (what, a, b) in [
        ("ls -l", ls_small, ls_large),
        ("find", find_small, find_large),
    ] {
        assert!(
            b < 10.0 * a.max(0.05),
            "{what}: {a:.2} s for {small} entries but {b:.2} s for {large}"
        );
    }
    assert!(
        hwm < RSS_BOUND_KIB,
        "daemon peak RSS {hwm} KiB over the {RSS_BOUND_KIB} KiB bound"
    );
    v.unmount();
}
