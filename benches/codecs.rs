//! Micro-benchmarks of the codecs on the hot path: chunk sealing/opening (the content AEAD)
//! and name encryption. Compare with SPEC section 6 (aes-gcm ~2 GB/s per core here).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vaultfs::crypto::chunk::{ChunkLayout, ContentCipher};
use vaultfs::crypto::keys::Key256;
use vaultfs::crypto::names::{decrypt_name, encrypt_name};
use vaultfs::crypto::{GenerationKeys, Keyring};

fn keyring() -> Keyring {
    let vault_id = [1u8; 16];
    let mk = Key256::random().unwrap();
    Keyring::new(vault_id, GenerationKeys::derive(&vault_id, 1, mk), None)
}

fn chunks(c: &mut Criterion) {
    const RUN: usize = 1 << 20;
    let mut group = c.benchmark_group("content_1MiB_request");
    group.throughput(Throughput::Bytes(RUN as u64));
    for chunk_size in [4096u32, 65536] {
        let cipher = ContentCipher::new(
            [2u8; 16],
            &Key256::random().unwrap(),
            ChunkLayout::new(chunk_size).unwrap(),
            false,
        );
        let plain = vec![0x5au8; RUN];
        let mut sealed = vec![0u8; cipher.sealed_run_len(RUN)];
        group.bench_with_input(BenchmarkId::new("seal", chunk_size), &chunk_size, |b, _| {
            b.iter(|| {
                cipher
                    .seal_run(0, true, black_box(&plain), &mut sealed)
                    .unwrap()
            })
        });
        cipher.seal_run(0, true, &plain, &mut sealed).unwrap();
        let mut out = vec![0u8; RUN];
        let last = (RUN / chunk_size as usize) as u64 - 1;
        group.bench_with_input(BenchmarkId::new("open", chunk_size), &chunk_size, |b, _| {
            b.iter(|| {
                cipher
                    .open_run(0, last, black_box(&sealed), &mut out)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn names(c: &mut Criterion) {
    let kr = keyring();
    let dir = [3u8; 16];
    let name = b"a-typical-file-name_2026-11-27.tar.gz";
    let enc = encrypt_name(kr.active(), &dir, name).unwrap();
    let mut group = c.benchmark_group("names");
    group.bench_function("encrypt", |b| {
        b.iter(|| encrypt_name(kr.active(), &dir, black_box(name)).unwrap())
    });
    group.bench_function("decrypt", |b| {
        b.iter(|| decrypt_name(&kr, &dir, black_box(&enc)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, chunks, names);
criterion_main!(benches);
