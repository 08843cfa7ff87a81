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

on_all_backends!(
    dropping_fetches_anywhere_leaks_nothing,
    every_drop_point_leaks_nothing
);

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
                    let _ = model.prefetch(rng.random_range(0..layers));
                }
            }
            // Sometimes let every read the gate has let through land before
            // the next step (at other steps they are still running): an
            // event, not a length of time, so a seed replays the same steps.
            if rng.random_bool(0.3) {
                gate.wait_passed_reads_landed(&model).await;
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
            // memory, so retry that once the reads let through have landed
            // (a leak would make it fail for good).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let w = loop {
                match tokio::time::timeout(Duration::from_secs(10), model.layer(i)).await {
                    Err(_) => panic!("seed {seed}: layer {i} is stuck"),
                    Ok(Ok(w)) => break w,
                    Ok(Err(hyperion::Error::BudgetExhausted { .. }))
                        if std::time::Instant::now() < deadline =>
                    {
                        gate.wait_passed_reads_landed(&model).await;
                        tokio::task::yield_now().await;
                    }
                    Ok(Err(e)) => panic!("seed {seed}: layer {i}: {e}"),
                }
            };
            m.check(i, &w);
        }
        assert!(model.stats().peak_memory <= budget, "seed {seed}");
        common::close_and_expect_freed(model).await;
    }
}

/// Where the read of the layer whose fetch is dropped has got to.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for memory: every byte of the budget is held by a caller.
    WaitingForMemory,
    /// Memory reserved, the read at the backend (held at the gate).
    Reading,
    /// The read has landed; the fetch has not been polled since.
    Landed,
}

/// What happens to the layer after the fetch is dropped.
#[derive(Clone, Copy, Debug)]
enum After {
    Nothing,
    Release,
    Close,
}

/// The exhaustive counterpart of the randomised test: a fetch has two await
/// points (not yet polled, and waiting for the read it started or joined),
/// and the read it waits for has three phases. Every combination, for the
/// fetch that started the read and for one that joined it, followed by
/// nothing, a release or a close: the other fetch still resolves (exact
/// bytes, or a typed error if the layer was released or the model closed),
/// the layer loads again, and memory returns to zero after close.
async fn every_drop_point_leaks_nothing(backend: Backend) {
    let m = TestModel::new(2, 32 * KIB);
    let budget = 32 * KIB; // room for one layer
    for phase in [Phase::WaitingForMemory, Phase::Reading, Phase::Landed] {
        for drop_starter in [true, false] {
            for after in [After::Nothing, After::Release, After::Close] {
                let case = format!(
                    "{phase:?}, dropping the {}, then {after:?}",
                    if drop_starter { "starter" } else { "joiner" }
                );
                drop_one_fetch(&m, backend, budget, phase, drop_starter, after, &case).await;
            }
        }
    }

    // The first await point: a fetch made and dropped without a poll starts
    // nothing and leaves nothing behind.
    let model = m.open(config(backend, budget)).await;
    drop(model.layer(1));
    assert_eq!(model.stats().reads, 0);
    m.check(1, &model.layer(1).await.unwrap());
}

async fn drop_one_fetch(
    m: &TestModel,
    backend: Backend,
    budget: u64,
    phase: Phase,
    drop_starter: bool,
    after: After,
    case: &str,
) {
    let model = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::from_secs(30),
            ..config(backend, budget)
        })
        .await;
    let gate = Gate::closed();
    gate.install(&model);
    gate.open(1);
    let mut held = Some(model.layer(0).await.unwrap());

    let mut starter: Fetch = Box::pin(model.layer(1));
    assert!(futures::poll!(starter.as_mut()).is_pending(), "{case}");
    let mut joiner: Fetch = Box::pin(model.layer(1));
    assert!(futures::poll!(joiner.as_mut()).is_pending(), "{case}");
    assert_eq!(model.stats().coalesced, 1, "{case}");

    match phase {
        // The read of layer 1 waits for the memory `held` pins. Nothing the
        // model reports says when that wait has begun (no counter of fetches
        // waiting for memory, and the gate comes after the reservation), so
        // the read task is given 20 ms to get there. If it has not, the
        // fetch is dropped with the read not yet waiting, a drop point that
        // must leak nothing either.
        Phase::WaitingForMemory => tokio::time::sleep(Duration::from_millis(20)).await,
        Phase::Reading => {
            held = None;
            gate.wait_entered(2).await;
        }
        Phase::Landed => {
            held = None;
            gate.open(1);
            eventually("the read lands", || model.stats().reads == 2).await;
        }
    }
    let survivor = if drop_starter {
        drop(starter);
        joiner
    } else {
        drop(joiner);
        starter
    };
    match after {
        After::Nothing => {}
        After::Release => {
            model.release(1).unwrap();
        }
        After::Close => model.clone().close(),
    }
    drop(held);
    gate.open(100);

    match tokio::time::timeout(Duration::from_secs(10), survivor).await {
        Err(_) => panic!("{case}: the other fetch was never woken"),
        Ok(Ok(w)) => m.check(1, &w),
        Ok(Err(e)) => assert!(
            !matches!(after, After::Nothing),
            "{case}: the other fetch failed: {e}"
        ),
    }
    assert!(model.stats().peak_memory <= budget, "{case}");
    if !matches!(after, After::Close) {
        let w = tokio::time::timeout(Duration::from_secs(10), model.layer(1))
            .await
            .unwrap_or_else(|_| panic!("{case}: layer 1 is stuck"))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        m.check(1, &w);
    }
    common::close_and_expect_freed(model).await;
}
