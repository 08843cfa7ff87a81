//! The fetch paths: a cache hit against a bare `DashMap` lookup, a miss
//! (default config, so O_DIRECT from the device but for mmap) per backend,
//! and a descriptor read.
//!
//! Run with `cargo bench --bench fetch`.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use dashmap::DashMap;
use futures::FutureExt;
use hyperion::synth::SynthSpec;
use hyperion::{Backend, MappedModel, MmapConfig};

fn fetch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.tmai");
    let spec = SynthSpec {
        layers: 8,
        layer_size: 64 << 10,
        ..SynthSpec::default()
    };
    hyperion::synth::write(&path, &spec).unwrap();
    let open = |backend| {
        rt.block_on(MappedModel::open(
            &path,
            MmapConfig {
                max_cache_size: 64 << 20,
                backend,
                ..MmapConfig::default()
            },
        ))
        .unwrap()
    };

    let mut group = c.benchmark_group("hit");
    let model = open(Backend::IoUring);
    rt.block_on(model.layer(3)).unwrap();
    group.bench_function("hyperion layer(i) on a cached layer", |b| {
        b.iter(|| model.layer(3).now_or_never().unwrap().unwrap())
    });
    let bare: DashMap<usize, Arc<Vec<u8>>> = DashMap::new();
    bare.insert(3, Arc::new(vec![0u8; 64 << 10]));
    group.bench_function("bare DashMap::get + Arc::clone", |b| {
        b.iter(|| Arc::clone(&*bare.get(&3).unwrap()))
    });
    // The same map with the multiplicative hash the cache uses for layer
    // indices instead of SipHash, to show what the hasher alone is worth.
    let fast: DashMap<usize, Arc<Vec<u8>>, BuildHasherDefault<Fibonacci>> = DashMap::default();
    fast.insert(3, Arc::new(vec![0u8; 64 << 10]));
    group.bench_function("bare DashMap (Fibonacci hash) ::get + Arc::clone", |b| {
        b.iter(|| Arc::clone(&*fast.get(&3).unwrap()))
    });
    group.bench_function("descriptor(i)", |b| b.iter(|| model.descriptor(3).unwrap()));
    group.finish();

    let mut group = c.benchmark_group("miss (64 KiB layer, default config: O_DIRECT but for mmap)");
    for backend in [Backend::IoUring, Backend::Pread, Backend::Mmap] {
        let model = open(backend);
        group.bench_function(backend.name(), |b| {
            b.iter(|| {
                model.release(5).unwrap();
                rt.block_on(model.layer(5)).unwrap()
            })
        });
    }
    group.finish();
}

/// A Fibonacci-multiply hasher for `usize` keys, as in `src/cache.rs`.
#[derive(Default)]
struct Fibonacci(u64);

impl Hasher for Fibonacci {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only usize keys")
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

criterion_group!(benches, fetch);
criterion_main!(benches);
