//! The loader's behaviour, run against every backend.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use common::{config, eventually, Gate, TestModel, KIB};
use hyperion::{Backend, Error, LayerWeights, MappedModel, MmapConfig};
use rand::{Rng, SeedableRng};

on_all_backends!(
    every_layer_arrives_bit_exact,
    tensor_views_name_the_exact_bytes,
    a_hit_returns_the_cached_buffer_without_a_read,
    concurrent_fetches_of_one_layer_share_one_read,
    budget_holds_under_concurrent_random_operations,
    eviction_takes_lowest_priority_then_least_recently_used,
    held_layers_are_never_evicted,
    a_task_holding_everything_gets_budget_exhausted,
    many_tasks_fail_fast_with_a_zero_wait,
    many_tasks_wait_for_memory_with_a_timeout,
    release_frees_memory_when_the_last_handle_drops,
    release_during_a_read_detaches_it_without_leaking,
    prefetch_disabled_reads_nothing,
    prefetches_in_flight_never_exceed_prefetch_threads,
    prefetch_makes_the_next_fetch_a_hit,
    prefetch_never_evicts_an_unused_prefetch,
    a_queued_prefetch_is_one_task_and_a_fetch_satisfies_it,
    a_layer_larger_than_the_budget_is_an_error,
    bad_indices_and_closed_models_are_errors,
    handles_outlive_close,
    descriptors_report_current_state,
    dropped_fetch_futures_leak_nothing,
    a_corrupted_layer_is_a_checksum_error,
    a_truncated_file_is_an_error_not_a_crash,
    a_file_ending_mid_block_reads_exactly,
    transient_holds_do_not_cause_spurious_errors,
    a_fetch_joining_a_prefetch_counts_it_used,
    waiting_forever_is_allowed,
    a_released_and_refetched_mapped_layer_keeps_its_pages,
    the_granule_rounds_every_charge,
);

async fn every_layer_arrives_bit_exact(backend: Backend) {
    // Odd sizes: the last layer does not end on a block boundary before padding.
    let m = TestModel::new(6, 300 * KIB + 12);
    let model = m.open(config(backend, 4 << 20)).await;
    common::assert_engine(&model, backend);
    assert_eq!(model.layer_count(), 6);
    for i in (0..6).rev() {
        let w = model.layer(i).await.unwrap();
        assert_eq!(w.layer_index(), i);
        m.check(i, &w);
    }
    // Small requests, several in flight: each layer is 76 chunk reads.
    let chunked = m
        .open(MmapConfig {
            read_chunk_size: 4 * KIB,
            reads_in_flight: 3,
            ..config(backend, 4 << 20)
        })
        .await;
    for i in 0..6 {
        m.check(i, &chunked.layer(i).await.unwrap());
    }
}

async fn tensor_views_name_the_exact_bytes(backend: Backend) {
    let m = TestModel::new(2, 256 * 4 * 3 + 8);
    let model = m.open(config(backend, 1 << 20)).await;
    let w = model.layer(1).await.unwrap();
    let names: Vec<_> = w.tensors().map(|t| t.name().to_string()).collect();
    assert_eq!(names, ["layers.1.weight", "layers.1.tail"]);
    let weight = w.tensor("layers.1.weight").unwrap();
    assert_eq!(weight.dtype(), hyperion::DType::F32);
    assert_eq!(weight.shape(), &[3, 256]);
    assert_eq!(weight.bytes(), &m.spec.layer_bytes(1)[..3072]);
    assert_eq!(weight.as_f32().unwrap().len(), 768);
    let tail = w.tensor("layers.1.tail").unwrap();
    assert_eq!(tail.shape(), &[2]);
    assert_eq!(tail.bytes(), &m.spec.layer_bytes(1)[3072..]);
    assert!(w.tensor("layers.0.weight").is_none());
}

async fn a_hit_returns_the_cached_buffer_without_a_read(backend: Backend) {
    let m = TestModel::new(3, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let a = model.layer(1).await.unwrap();
    let b = model.layer(1).await.unwrap();
    assert!(LayerWeights::ptr_eq(&a, &b));
    let s = model.stats();
    assert_eq!((s.reads, s.hits, s.misses), (1, 1, 1));
}

async fn concurrent_fetches_of_one_layer_share_one_read(backend: Backend) {
    let m = TestModel::new(2, 256 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let gate = Gate::closed();
    gate.install(&model);
    let tasks: Vec<_> = (0..64).map(|_| tokio::spawn(model.layer(0))).collect();
    gate.wait_entered(1).await;
    // The read is held at the gate until the 63 other fetches have joined it.
    eventually("the 63 other fetches join the read", || {
        model.stats().coalesced == 63
    })
    .await;
    gate.open(100);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    assert!(results.iter().all(|w| LayerWeights::ptr_eq(w, &results[0])));
    m.check(0, &results[0]);
    let s = model.stats();
    assert_eq!(s.reads, 1, "64 concurrent fetches must cause one read");
    assert_eq!(s.misses, 64);
    assert_eq!(s.coalesced, 63);
}

async fn budget_holds_under_concurrent_random_operations(backend: Backend) {
    let layers = 24;
    let m = Arc::new(TestModel::new(layers, 96 * KIB));
    let budget = 6 * 96 * KIB;
    let model = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::from_secs(10),
            ..config(backend, budget)
        })
        .await;
    let mut tasks = Vec::new();
    for seed in 0..16u64 {
        let model = model.clone();
        let m = Arc::clone(&m);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..150 {
                let i = rng.random_range(0..layers);
                match rng.random_range(0..10) {
                    0..=5 => {
                        let w = model.layer(i).await.unwrap();
                        assert!(model.memory_usage() <= budget);
                        m.check(i, &w);
                        if rng.random_bool(0.3) {
                            tokio::task::yield_now().await;
                        }
                    }
                    6 | 7 => {
                        let _ = model.prefetch(i);
                    }
                    8 => model.release(i).unwrap(),
                    _ => model.set_priority(i, rng.random_range(-1.0..1.0)).unwrap(),
                }
                assert!(model.memory_usage() <= budget);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = model.stats();
    assert!(
        s.peak_memory <= budget,
        "peak {} > budget {budget}",
        s.peak_memory
    );
    assert!(s.evictions > 0, "the test must actually exercise eviction");
    common::close_and_expect_freed(model).await;
}

async fn eviction_takes_lowest_priority_then_least_recently_used(backend: Backend) {
    let m = TestModel::new(5, 64 * KIB);
    let model = m
        .open(MmapConfig {
            adaptive_caching: false,
            ..config(backend, 3 * 64 * KIB)
        })
        .await;
    for i in 0..3 {
        drop(model.layer(i).await.unwrap());
    }
    // Layer 0 is least recently used, but has the highest priority.
    model.set_priority(0, 5.0).unwrap();
    drop(model.layer(3).await.unwrap());
    let cached: Vec<bool> = (0..5)
        .map(|i| model.descriptor(i).unwrap().cached)
        .collect();
    assert_eq!(
        cached,
        [true, false, true, true, false],
        "layer 1 is the LRU among equals"
    );
    // Touch 2, so 3 becomes the least recently used of the priority-0 layers.
    drop(model.layer(2).await.unwrap());
    drop(model.layer(4).await.unwrap());
    let cached: Vec<bool> = (0..5)
        .map(|i| model.descriptor(i).unwrap().cached)
        .collect();
    assert_eq!(cached, [true, false, true, false, true]);
    // Negative priority goes first even when recently used.
    model.set_priority(4, -1.0).unwrap();
    drop(model.layer(1).await.unwrap());
    let cached: Vec<bool> = (0..5)
        .map(|i| model.descriptor(i).unwrap().cached)
        .collect();
    assert_eq!(cached, [true, true, true, false, false]);
    assert_eq!(model.stats().evictions, 3);
}

async fn held_layers_are_never_evicted(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    let model = m.open(config(backend, 2 * 64 * KIB)).await;
    let held = model.layer(0).await.unwrap();
    drop(model.layer(1).await.unwrap());
    drop(model.layer(2).await.unwrap()); // must evict 1, not the held 0
    assert!(model.descriptor(0).unwrap().cached);
    assert!(!model.descriptor(1).unwrap().cached);
    m.check(0, &held);
}

async fn a_task_holding_everything_gets_budget_exhausted(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    // The default config: the error comes after memory_wait_timeout (1 s).
    let model = m.open(config(backend, 2 * 64 * KIB)).await;
    let _a = model.layer(0).await.unwrap();
    let _b = model.layer(1).await.unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), model.layer(2))
        .await
        .expect("must fail, not hang")
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        matches!(err, Error::BudgetExhausted { layer: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("layer 2"), "{err}");
    // Nothing is stuck: once a handle drops, the layer loads.
    drop(_a);
    m.check(2, &model.layer(2).await.unwrap());
}

async fn many_tasks_fail_fast_with_a_zero_wait(backend: Backend) {
    let m = Arc::new(TestModel::new(8, 64 * KIB));
    let model = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::ZERO,
            ..config(backend, 4 * 64 * KIB)
        })
        .await;
    // Four tasks each hold one layer and ask for a second; the budget holds
    // four, so at least one of them cannot get its second and must fail
    // rather than deadlock.
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (model, barrier) = (model.clone(), barrier.clone());
            tokio::spawn(async move {
                let first = model.layer(t).await.unwrap();
                barrier.wait().await;
                let second = model.layer(t + 4).await;
                (first, second.map(|_| ()))
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks))
        .await
        .expect("tasks must not deadlock");
    let failures = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap().1, Err(Error::BudgetExhausted { .. })))
        .count();
    assert!(failures >= 1);
    assert!(model.stats().peak_memory <= 4 * 64 * KIB);
}

async fn many_tasks_wait_for_memory_with_a_timeout(backend: Backend) {
    let m = Arc::new(TestModel::new(8, 64 * KIB));
    let model = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::from_secs(20),
            ..config(backend, 2 * 64 * KIB)
        })
        .await;
    // Eight tasks through room for two, the first to get a layer holding it
    // until all eight have asked for theirs (a fetch is counted as a miss
    // when it is made), so the others must wait for memory: with a wait they
    // queue and all succeed.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (model, m) = (model.clone(), m.clone());
            tokio::spawn(async move {
                let w = model.layer(t).await.unwrap();
                m.check(t, &w);
                eventually("all eight fetches are made", || model.stats().misses == 8).await;
                drop(w);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(model.stats().peak_memory <= 2 * 64 * KIB);

    // And a lone task that holds everything still gets an error, after the wait.
    let short = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::from_millis(50),
            ..config(backend, 64 * KIB)
        })
        .await;
    let _held = short.layer(0).await.unwrap();
    assert!(matches!(
        short.layer(1).await,
        Err(Error::BudgetExhausted { .. })
    ));
}

async fn release_frees_memory_when_the_last_handle_drops(backend: Backend) {
    let m = TestModel::new(2, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let w = model.layer(0).await.unwrap();
    let w2 = w.clone();
    assert_eq!(model.memory_usage(), 64 * KIB);
    model.release(0).unwrap();
    let d = model.descriptor(0).unwrap();
    assert!(!d.cached && d.is_active, "released but still held");
    drop(w);
    assert_eq!(model.memory_usage(), 64 * KIB);
    m.check(0, &w2);
    drop(w2);
    assert_eq!(model.memory_usage(), 0);
    assert!(!model.descriptor(0).unwrap().is_active);
    // Releasing what is not cached is fine.
    model.release(0).unwrap();
}

async fn release_during_a_read_detaches_it_without_leaking(backend: Backend) {
    let m = TestModel::new(2, 128 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let gate = Gate::closed();
    gate.install(&model);
    let waiter = tokio::spawn(model.layer(0));
    gate.wait_entered(1).await;
    model.release(0).unwrap();
    gate.open(10);
    // The waiter still gets its bytes; the cache does not keep them.
    let w = waiter.await.unwrap().unwrap();
    m.check(0, &w);
    assert!(!model.descriptor(0).unwrap().cached);
    drop(w);
    assert_eq!(model.memory_usage(), 0);
    // A new fetch reads again.
    m.check(0, &model.layer(0).await.unwrap());
    assert_eq!(model.stats().reads, 2);
}

async fn prefetch_disabled_reads_nothing(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    let model = m
        .open(MmapConfig {
            prefetch_enabled: false,
            ..config(backend, 1 << 20)
        })
        .await;
    for i in 0..4 {
        assert!(matches!(
            model.prefetch(i),
            Err(Error::PrefetchDisabled { .. })
        ));
    }
    let s = model.stats();
    assert_eq!((s.reads, s.prefetch_issued), (0, 0));
    assert_eq!(model.memory_usage(), 0);
    // Nothing was started behind the refusals either: a read of a layer
    // started by one would make its fetch below join that read or hit its
    // result. Each fetch starts a read of its own.
    for i in 0..4 {
        m.check(i, &model.layer(i).await.unwrap());
    }
    let s = model.stats();
    assert_eq!(
        (s.reads, s.misses, s.coalesced, s.hits),
        (4, 4, 0, 0),
        "{s:?}"
    );
    assert_eq!((s.prefetch_issued, s.prefetch_used), (0, 0), "{s:?}");
}

async fn prefetches_in_flight_never_exceed_prefetch_threads(backend: Backend) {
    let m = TestModel::new(12, 64 * KIB);
    let model = m
        .open(MmapConfig {
            prefetch_threads: 3,
            ..config(backend, 1 << 20)
        })
        .await;
    let gate = Gate::closed();
    gate.install(&model);
    for i in 0..12 {
        assert!(model.prefetch(i).is_ok());
    }
    // Three reads reach the gate; the other nine wait for the semaphore.
    // (Had a fourth ever got in, even for an instant, `gate.peak` would say
    // so below.)
    gate.wait_entered(3).await;
    assert_eq!(gate.inside.load(SeqCst), 3);
    // Let them through one at a time: each read let through makes room for
    // exactly one more, and never more than three are inside.
    for k in 1..=12 {
        gate.open(1);
        if k <= 9 {
            gate.wait_entered(3 + k).await;
        }
        assert_eq!(gate.entered.load(SeqCst), (3 + k).min(12));
        assert!(gate.inside.load(SeqCst) <= 3);
    }
    eventually("all prefetches are cached", || {
        (0..12).all(|i| model.descriptor(i).unwrap().cached)
    })
    .await;
    assert_eq!(gate.peak.load(SeqCst), 3);
    let s = model.stats();
    assert_eq!(s.prefetch_issued, 12);
    assert_eq!(s.prefetch_peak_in_flight, 3);
}

async fn prefetch_makes_the_next_fetch_a_hit(backend: Backend) {
    let m = TestModel::new(3, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    assert!(model.prefetch(2).is_ok());
    eventually("the prefetch lands", || model.descriptor(2).unwrap().cached).await;
    let w = model.layer(2).await.unwrap();
    m.check(2, &w);
    let s = model.stats();
    assert_eq!((s.hits, s.misses, s.prefetch_used, s.reads), (1, 0, 1, 1));
}

async fn prefetch_never_evicts_an_unused_prefetch(backend: Backend) {
    let m = TestModel::new(6, 64 * KIB);
    let model = m.open(config(backend, 2 * 64 * KIB)).await;
    assert!(model.prefetch(0).is_ok());
    assert!(model.prefetch(1).is_ok());
    eventually("two prefetches land", || {
        model.stats().prefetch_issued == 2
            && model.descriptor(1).unwrap().cached
            && model.descriptor(0).unwrap().cached
    })
    .await;
    // No room, and both cached layers are unused prefetches: skipped.
    assert!(model.prefetch(2).is_ok());
    eventually("the third prefetch is skipped", || {
        model.stats().prefetch_skipped == 1
    })
    .await;
    assert!(model.descriptor(0).unwrap().cached && model.descriptor(1).unwrap().cached);
    // A demand fetch may evict them; that counts as a wasted prefetch.
    drop(model.layer(3).await.unwrap());
    assert_eq!(model.stats().prefetch_wasted, 1);
}

async fn a_queued_prefetch_is_one_task_and_a_fetch_satisfies_it(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    let model = m
        .open(MmapConfig {
            prefetch_threads: 1,
            ..config(backend, 1 << 20)
        })
        .await;
    let tasks = tokio::runtime::Handle::current().metrics();
    let idle = tasks.num_alive_tasks();
    // Layer 0's read waits until the test lets it go; the others go on.
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (h, flag) = (Arc::clone(&hold), Arc::clone(&held));
    model.set_read_gate(Arc::new(move |layer| {
        let (hold, held) = (Arc::clone(&h), Arc::clone(&flag));
        Box::pin(async move {
            if layer == 0 {
                held.store(true, SeqCst);
                hold.acquire().await.unwrap().forget();
            }
        })
    }));
    // Layer 0's prefetch takes the only permit and keeps it while held;
    // layer 1's is asked for at every step of a window, as a caller's loop
    // does, and queues once.
    assert!(model.prefetch(0).is_ok());
    eventually("layer 0's read is held", || held.load(SeqCst)).await;
    for _ in 0..5 {
        assert!(matches!(model.prefetch(1), Ok(hyperion::Prefetch::Queued)));
    }
    assert!(model.prefetch(2).is_ok());
    // The caller gets to layer 1 before its prefetch's turn: the fetch reads
    // it, and the caller is done with it.
    m.check(1, &model.layer(1).await.unwrap());
    model.release(1).unwrap();
    // Layer 1's queued prefetch then reads nothing (it would read the layer
    // again for no one); layer 2's goes ahead.
    hold.add_permits(1);
    eventually("every prefetch task has ended", || {
        tasks.num_alive_tasks() == idle
    })
    .await;
    let s = model.stats();
    assert_eq!((s.reads, s.prefetch_issued), (3, 2), "{s:?}");
    assert!(!model.descriptor(1).unwrap().cached);
    assert!(model.descriptor(2).unwrap().cached);
}

async fn a_layer_larger_than_the_budget_is_an_error(backend: Backend) {
    let m = TestModel::new(2, 64 * KIB);
    let model = m.open(config(backend, 60 * KIB)).await;
    let err = model.layer(1).await.unwrap_err();
    assert!(
        matches!(err, Error::LayerTooLarge { layer: 1, needed, budget, .. } if needed == 64 * KIB && budget == 60 * KIB),
        "{err}"
    );
    assert!(matches!(
        model.prefetch(1),
        Err(Error::LayerTooLarge { layer: 1, .. })
    ));
    assert_eq!(model.memory_usage(), 0);
}

async fn bad_indices_and_closed_models_are_errors(backend: Backend) {
    let m = TestModel::new(2, 4 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    assert!(matches!(
        model.layer(2).await,
        Err(Error::LayerOutOfRange {
            layer: 2,
            count: 2,
            ..
        })
    ));
    assert!(matches!(
        model.descriptor(usize::MAX),
        Err(Error::LayerOutOfRange { .. })
    ));
    assert!(model.release(7).is_err());
    // Charged in whole granules (4 KiB by default): the 4 KiB layer exactly.
    assert_eq!(model.footprint(1).unwrap(), 4 * KIB);
    assert!(matches!(
        model.footprint(2),
        Err(Error::LayerOutOfRange { layer: 2, .. })
    ));
    assert!(model.set_priority(9, 1.0).is_err());
    assert!(matches!(
        model.set_priority(0, f32::NAN),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        model.prefetch(2),
        Err(Error::LayerOutOfRange { layer: 2, .. })
    ));
    let other = model.clone();
    model.close();
    assert!(matches!(other.layer(0).await, Err(Error::Closed { .. })));
    assert!(matches!(other.descriptor(0), Err(Error::Closed { .. })));
    assert!(matches!(other.prefetch(0), Err(Error::Closed { .. })));
    let msg = other.layer(0).await.unwrap_err().to_string();
    assert!(
        msg.contains("model.tmai") && msg.contains("closed"),
        "{msg}"
    );
}

async fn handles_outlive_close(backend: Backend) {
    let m = TestModel::new(2, 128 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let w = model.layer(1).await.unwrap();
    let watcher = model.clone();
    model.close();
    m.check(1, &w);
    assert_eq!(watcher.memory_usage(), 128 * KIB);
    drop(w);
    assert_eq!(watcher.memory_usage(), 0);
}

async fn descriptors_report_current_state(backend: Backend) {
    let m = TestModel::new(3, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let d = model.descriptor(1).unwrap();
    let index = model.index();
    assert_eq!(d.offset, index.layers[1].offset());
    assert_eq!(d.offset % 4096, 0);
    assert_eq!((d.size, d.layer_index, d.precision), (64 * KIB, 1, 32));
    assert!(!d.cached && !d.is_active);
    assert_eq!((d.priority, d.last_accessed, d.access_count), (0.0, 0, 0));
    let w = model.layer(1).await.unwrap();
    let _ = model.layer(1).await.unwrap();
    model.set_priority(1, 2.5).unwrap();
    let d = model.descriptor(1).unwrap();
    assert!(d.cached && d.is_active);
    assert_eq!((d.priority, d.access_count), (2.5, 2));
    assert!(d.last_accessed > 0);
    let _ = model.layer(0).await.unwrap();
    assert!(model.descriptor(0).unwrap().last_accessed >= d.last_accessed);
    model.reset_priorities();
    assert_eq!(model.descriptor(1).unwrap().priority, 0.0);
    drop(w);
}

async fn dropped_fetch_futures_leak_nothing(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    let model = m.open(config(backend, 2 * 64 * KIB)).await;
    // Dropped before the first poll.
    drop(model.layer(0));
    // Dropped while its read is in flight (held at the gate).
    let gate = Gate::closed();
    gate.install(&model);
    let mut fut = Box::pin(model.layer(1));
    assert!(futures::poll!(fut.as_mut()).is_pending());
    gate.wait_entered(1).await;
    drop(fut);
    gate.open(100);
    // The read completes on its own and caches the layer; nothing is stuck.
    eventually("the detached read lands", || {
        model.descriptor(1).unwrap().cached
    })
    .await;
    // Dropped while waiting for memory: hold everything, then give up a fetch.
    // Nothing the model reports says when its read has begun to wait (no
    // counter of fetches waiting for memory), so the fetch is given 20 ms to
    // get there; if it has not, it is dropped at an earlier point, which
    // must leak nothing either.
    let a = model.layer(1).await.unwrap();
    let b = model.layer(2).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(20), model.layer(3)).await;
    assert!(
        waiting.is_err(),
        "the fetch was still waiting for memory when dropped"
    );
    drop((a, b));
    for i in 0..4 {
        m.check(i, &model.layer(i).await.unwrap());
    }
    assert!(model.memory_usage() <= 2 * 64 * KIB);
    model.clone().close();
    eventually("memory returns to zero", || model.memory_usage() == 0).await;
}

async fn a_corrupted_layer_is_a_checksum_error(backend: Backend) {
    use std::io::{Seek, SeekFrom, Write};
    let m = TestModel::new(3, 64 * KIB);
    let offset = hyperion::format::read_index(&m.path).unwrap().layers[1].offset();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&m.path)
        .unwrap();
    f.seek(SeekFrom::Start(offset + 100)).unwrap();
    f.write_all(&[0xAA]).unwrap();
    f.sync_all().unwrap();
    let model = m.open(config(backend, 1 << 20)).await;
    let err = model.layer(1).await.unwrap_err();
    assert!(
        matches!(err, Error::ChecksumMismatch { layer: 1, .. }),
        "{err}"
    );
    assert_eq!(model.memory_usage(), 0);
    m.check(0, &model.layer(0).await.unwrap());
    // With verification off, the bytes on disk are returned as they are.
    let unchecked = m
        .open(MmapConfig {
            verify_checksums: false,
            ..config(backend, 1 << 20)
        })
        .await;
    assert_eq!(unchecked.layer(1).await.unwrap()[100], 0xAA);
}

async fn a_truncated_file_is_an_error_not_a_crash(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let keep = hyperion::format::read_index(&m.path).unwrap().layers[2].offset() + 10;
    common::truncate(&m.path, keep);
    let err = model.layer(3).await.unwrap_err();
    assert!(matches!(err, Error::Truncated { layer: 3, .. }), "{err}");
    let err = model.layer(2).await.unwrap_err();
    assert!(matches!(err, Error::Truncated { layer: 2, .. }), "{err}");
    m.check(1, &model.layer(1).await.unwrap());
    assert_eq!(model.memory_usage(), 64 * KIB);
}

async fn a_file_ending_mid_block_reads_exactly(backend: Backend) {
    // Without the writer's final padding the last layer ends mid-block: a
    // direct read of its last block comes back short, at end of file.
    let m = TestModel::new(3, 64 * KIB + 100);
    let last = hyperion::format::read_index(&m.path).unwrap().layers[2].clone();
    let end = last.offset() + last.size;
    assert_ne!(end % 4096, 0);
    common::truncate(&m.path, end);
    let model = m.open(config(backend, 1 << 20)).await;
    for i in 0..3 {
        m.check(i, &model.layer(i).await.unwrap());
    }
}

async fn transient_holds_do_not_cause_spurious_errors(backend: Backend) {
    // Room for one layer; two tasks each fetch and drop one. With the default
    // wait, the second waits out the first's brief hold instead of failing.
    let m = TestModel::new(2, 64 * KIB);
    for _ in 0..20 {
        let model = m.open(config(backend, 64 * KIB)).await;
        // Each task drops its layer itself (a finished task's output would
        // otherwise hold it until joined).
        let a = tokio::spawn(fetch_and_drop(model.clone(), 0));
        let b = tokio::spawn(fetch_and_drop(model.clone(), 1));
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        model.close();
    }
}

async fn fetch_and_drop(model: MappedModel, layer: usize) -> hyperion::Result<()> {
    model.layer(layer).await.map(drop)
}

async fn a_fetch_joining_a_prefetch_counts_it_used(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    let model = m.open(config(backend, 2 * 64 * KIB)).await;
    let gate = Gate::closed();
    gate.install(&model);
    assert!(model.prefetch(0).is_ok());
    gate.wait_entered(1).await;
    let fetch = tokio::spawn(model.layer(0));
    eventually("the fetch joins the read", || model.stats().coalesced == 1).await;
    gate.open(100);
    drop(fetch.await.unwrap().unwrap());
    let s = model.stats();
    assert_eq!((s.prefetch_used, s.prefetch_issued), (1, 1));
    // Layer 0 is now an ordinary cached layer, least recently used: a
    // prefetch may evict it, and that is no waste.
    drop(model.layer(1).await.unwrap());
    assert!(model.prefetch(2).is_ok());
    eventually("the prefetch lands", || model.descriptor(2).unwrap().cached).await;
    assert!(!model.descriptor(0).unwrap().cached && model.descriptor(1).unwrap().cached);
    assert_eq!(model.stats().prefetch_wasted, 0);
}

async fn waiting_forever_is_allowed(backend: Backend) {
    let m = TestModel::new(2, 64 * KIB);
    let model = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::MAX,
            ..config(backend, 64 * KIB)
        })
        .await;
    let held = model.layer(0).await.unwrap();
    let waiter = tokio::spawn(model.layer(1));
    // Time passing is what this checks: a fetch that may wait forever is
    // still waiting a while later (a deadline miscomputed from
    // `Duration::MAX` would have failed it at once).
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!waiter.is_finished());
    drop(held);
    m.check(1, &waiter.await.unwrap().unwrap());
}

async fn a_released_and_refetched_mapped_layer_keeps_its_pages(backend: Backend) {
    let m = TestModel::new(2, 256 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let old = model.layer(0).await.unwrap();
    model.release(0).unwrap();
    let new = model.layer(0).await.unwrap();
    assert!(!LayerWeights::ptr_eq(&old, &new));
    drop(old);
    m.check(0, &new);
    assert_eq!(model.memory_usage(), 256 * KIB);
}

async fn the_granule_rounds_every_charge(backend: Backend) {
    let m = TestModel::new(2, 5000 * 4);
    let model = m
        .open(MmapConfig {
            min_layer_cache_size: 64 * KIB,
            ..config(backend, 1 << 20)
        })
        .await;
    let _w = model.layer(0).await.unwrap();
    assert_eq!(model.memory_usage(), 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let _w = model.layer(0).await.unwrap();
    assert_eq!(
        model.memory_usage(),
        20 * KIB,
        "20000 bytes in whole 4 KiB blocks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_returns_identical_bytes() {
    let m = TestModel::new(5, 200 * KIB + 4);
    let mut models = Vec::new();
    for &backend in common::ENGINES {
        models.push((backend, m.open(config(backend, 4 << 20)).await));
    }
    for i in 0..5 {
        let first = models[0].1.layer(i).await.unwrap();
        m.check(i, &first);
        for (backend, model) in &models {
            let w = model.layer(i).await.unwrap();
            assert_eq!(&w[..], &first[..], "{backend:?}, layer {i}");
            // Only mmap returns views of the file; the others fill buffers.
            assert_eq!(
                w.is_mapped(),
                !common::fills_buffers(*backend),
                "{backend:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_io_uring_where_the_kernel_allows() {
    let m = TestModel::new(1, 4 * KIB);
    let model = m.open(config(Backend::Auto, 1 << 20)).await;
    assert_eq!(model.backend(), Backend::IoUring);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_reads_through_the_page_cache_with_pread() {
    let m = TestModel::new(2, 64 * KIB);
    let model = m
        .open(MmapConfig {
            direct_io: false,
            ..config(Backend::Auto, 1 << 20)
        })
        .await;
    assert_eq!(model.backend(), Backend::Pread);
    for i in 0..2 {
        m.check(i, &model.layer(i).await.unwrap());
    }
}

/// With `direct_io`, a chunk whose pages are in the page cache is copied from
/// there instead of read from the disk again (`O_DIRECT` would ignore the
/// cache); the bytes are the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reads_copy_cached_chunks_from_the_page_cache() {
    // The engines that read with `O_DIRECT` (mmap reads through the page
    // cache, always).
    for backend in common::buffer_engines() {
        let layer = 1 << 20;
        let m = TestModel::new(4, layer);
        let direct = common::direct_io_works(&m.path);
        let model = m.open(config(backend, 16 << 20)).await;
        for i in 0..2 {
            m.check(i, &model.layer(i).await.unwrap());
        }
        assert_eq!(
            model.stats().page_cache_bytes,
            0,
            "{backend:?}: cold layers come from the disk"
        );
        // Now the whole file is cached.
        std::fs::read(&m.path).unwrap();
        for i in 2..4 {
            m.check(i, &model.layer(i).await.unwrap());
        }
        let cached = model.stats().page_cache_bytes;
        if direct {
            // The chunks cover each layer's block-aligned span.
            assert!(
                (2 * layer..2 * layer + 4 * 4096).contains(&cached),
                "{backend:?}: {cached} bytes from the page cache"
            );
        } else {
            assert_eq!(cached, 0);
        }
        // Released and read again: from the cache, the same bytes.
        model.release(0).unwrap();
        m.check(0, &model.layer(0).await.unwrap());
        model.close();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    let m = TestModel::new(3, 64 * KIB);
    let model = m.open(config(Backend::Auto, 1 << 20)).await;
    for i in 0..3 {
        let _ = model.prefetch((i + 1) % 3);
        m.check(i, &model.layer(i).await.unwrap());
    }
}

#[tokio::test]
async fn opening_a_missing_or_invalid_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.tmai");
    let err = MappedModel::open(&missing, MmapConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("nope.tmai"),
        "{err}"
    );
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    let err = MappedModel::open(&junk, MmapConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    let bad = MmapConfig {
        max_cache_size: 0,
        ..MmapConfig::default()
    };
    assert!(matches!(
        MappedModel::open(&junk, bad).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn open_outside_a_runtime_is_an_error_not_a_panic() {
    let m = TestModel::new(1, 4 * KIB);
    let err =
        futures::executor::block_on(MappedModel::open(&m.path, MmapConfig::default())).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn a_runtime_without_timers_is_refused_at_open() {
    let m = TestModel::new(1, 4 * KIB);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt
        .block_on(MappedModel::open(&m.path, MmapConfig::default()))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(ref s) if s.contains("timers")),
        "{err}"
    );
}

#[test]
fn a_model_opened_on_one_runtime_serves_another() {
    let m = TestModel::new(2, 64 * KIB);
    let opener = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let model = opener.block_on(m.open(config(Backend::Auto, 1 << 20)));
    drop(opener);
    let user = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    user.block_on(async {
        let _ = model.prefetch(1);
        m.check(0, &model.layer(0).await.unwrap());
        m.check(1, &model.layer(1).await.unwrap());
    });
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_fetches_on_a_current_thread_runtime_do_not_fail_spuriously() {
    let m = TestModel::new(2, 64 * KIB);
    for _ in 0..20 {
        let model = m.open(config(Backend::Mmap, 64 * KIB)).await;
        // Each task drops its layer itself (a finished task's output would
        // otherwise hold it until joined).
        let a = tokio::spawn(fetch_and_drop(model.clone(), 0));
        let b = tokio::spawn(fetch_and_drop(model.clone(), 1));
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        model.close();
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn bounds<T: Send + Sync + Clone + 'static>() {}
    bounds::<MappedModel>();
    bounds::<LayerWeights>();
    bounds::<Error>();
    fn future_is_send<F: std::future::Future + Send + 'static>(_: F) {}
    let _ = |m: MappedModel| future_is_send(m.layer(0));
}
