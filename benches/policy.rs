//! The eviction policy core: the cost of recording a hit (`on_access` of a
//! resident layer, as replayed before each eviction) and of choosing a
//! victim among every resident layer, for both kinds and several model
//! sizes.
//!
//! Run with `cargo bench --bench policy`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hyperion::policy::{traces, Policy, PolicyKind};

/// A policy of `n` layers, all resident, that knows a capacity of `n / 4`
/// (so the adaptive policy's shadow caches run).
fn warm(kind: PolicyKind, n: usize) -> Policy {
    let mut policy = Policy::new(kind, n);
    policy.set_capacity_hint(Some(n / 4));
    for l in 0..n {
        policy.on_access(l);
        policy.on_insert(l);
    }
    policy
}

fn policy(c: &mut Criterion) {
    let mut group = c.benchmark_group("on_access");
    for n in [64, 1000, 4000] {
        let trace = traces::zipf(n, 10_000, 1.0, 1);
        group.throughput(Throughput::Elements(trace.len() as u64));
        for kind in [PolicyKind::Lru, PolicyKind::Adaptive] {
            let mut policy = warm(kind, n);
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &trace, |b, trace| {
                b.iter(|| {
                    for &l in trace {
                        policy.on_access(black_box(l));
                    }
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("victim");
    for n in [64, 1000, 4000] {
        for kind in [PolicyKind::Lru, PolicyKind::Adaptive] {
            let mut policy = warm(kind, n);
            group.bench_function(BenchmarkId::new(kind.name(), n), |b| {
                b.iter(|| policy.victim(|l| black_box(l) % 7 != 0, |l| (l % 3) as f32))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
