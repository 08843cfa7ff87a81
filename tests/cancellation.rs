//! Cancellation: fetch futures dropped at random await points, under a
//! randomised schedule of read completions, leak no budget, leave no slot
//! stuck loading, and never stop other waiters from being woken.
//!
//! Each seed is replayable: `HYPERION_SEED=N cargo test --test cancellation`.
//! `HYPERION_LONG=1` runs ten times more seeds.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use common::{config, eventually, Gate, TestModel, KIB};
use hyperion::{Backend, LayerWeights, MmapConfig};
use rand::{Rng, SeedableRng};

type Fetch = Pin<Box<dyn Future<Output = hyperion::Result<LayerWeights>> + Send>>;

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("HYPERION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = if std::env::var_os("HYPERION_LONG").is_some() {
        400
    } else {
        40
    };
    (0..n).collect()
}

on_all_backends!(dropping_fetches_anywhere_leaks_nothing);

async fn dropping_fetches_anywhere_leaks_nothing(backend: Backend) {
    let layers = 6;
    let m = TestModel::new(layers, 32 * KIB);
    for seed in seeds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let budget = rng.random_range(2..=4) * 32 * KIB;
        let model = m
            .open(MmapConfig {
                memory_wait_timeout: Duration::from_millis(rng.random_range(0..50)),
                ..config(backend, budget)
            })
            .await;
        let gate = Gate::closed();
        gate.install(&model);
        let mut live: Vec<(usize, Fetch)> = Vec::new();
        for _step in 0..30 {
            match rng.random_range(0..10) {
                // Start a fetch and poll it once (it may register as a waiter).
                0..=3 => {
                    let i = rng.random_range(0..layers);
                    let mut f: Fetch = Box::pin(model.layer(i));
                    if let Poll::Ready(r) = futures::poll!(f.as_mut()) {
                        if let Ok(w) = r {
                            m.check(i, &w);
                        }
                        continue;
                    }
                    live.push((i, f));
                }
                // Drop a pending fetch at whatever point it has reached.
                4 | 5 if !live.is_empty() => {
                    let k = rng.random_range(0..live.len());
                    drop(live.swap_remove(k));
                }
                // Poll a pending fetch again.
                6 | 7 if !live.is_empty() => {
                    let k = rng.random_range(0..live.len());
                    if let Poll::Ready(r) = futures::poll!(live[k].1.as_mut()) {
                        let (i, _) = live.swap_remove(k);
                        if let Ok(w) = r {
                            m.check(i, &w);
                        }
                    }
                }
                // Let some reads complete, in whatever order they reach the gate.
                8 => gate.open(rng.random_range(1..3)),
                _ => {
                    model.prefetch(rng.random_range(0..layers));
                }
            }
            if rng.random_bool(0.3) {
                tokio::time::sleep(Duration::from_micros(rng.random_range(0..300))).await;
            }
            assert!(model.memory_usage() <= budget, "seed {seed}");
        }
        // Drop whatever is still pending, let every read through, and check
        // that nothing is stuck: every layer loads, exact.
        drop(live);
        gate.open(10_000);
        for i in 0..layers {
            // Detached reads may still be landing; with a short
            // memory_wait_timeout a fetch can meet them and fail for lack of
            // memory, so retry that (a leak would make it fail for good).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let w = loop {
                match tokio::time::timeout(Duration::from_secs(10), model.layer(i)).await {
                    Err(_) => panic!("seed {seed}: layer {i} is stuck"),
                    Ok(Ok(w)) => break w,
                    Ok(Err(hyperion::Error::BudgetExhausted { .. }))
                        if std::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    Ok(Err(e)) => panic!("seed {seed}: layer {i}: {e}"),
                }
            };
            m.check(i, &w);
        }
        assert!(model.stats().peak_memory <= budget, "seed {seed}");
        let watcher = model.clone();
        model.close();
        eventually("memory returns to zero after close", || {
            watcher.memory_usage() == 0
        })
        .await;
    }
}
