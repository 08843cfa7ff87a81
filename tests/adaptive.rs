//! `adaptive_caching` in the real cache: cyclic passes over a model larger
//! than the budget, the case plain LRU cannot serve.

mod common;

use common::{config, TestModel, KIB};
use hyperion::{Backend, MmapConfig};

/// Hit rate of `passes` cyclic passes (fetches only, no prefetch) after the
/// first, with room for `room` of the model's layers.
async fn cyclic_hit_rate(m: &TestModel, adaptive: bool, room: u64, passes: usize) -> f64 {
    let model = m
        .open(MmapConfig {
            adaptive_caching: adaptive,
            ..config(Backend::IoUring, room * 64 * KIB)
        })
        .await;
    let layers = model.layer_count();
    for i in 0..layers {
        drop(model.layer(i).await.unwrap());
    }
    let warm = model.stats();
    for _ in 0..passes {
        for i in 0..layers {
            let w = model.layer(i).await.unwrap();
            m.check(i, &w);
        }
        model.check_invariants().unwrap();
    }
    let s = model.stats();
    let hits = s.hits - warm.hits;
    let total = hits + s.misses - warm.misses;
    assert!(s.peak_memory <= room * 64 * KIB);
    hits as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_caching_does_not_thrash_on_cyclic_passes() {
    let m = TestModel::new(32, 64 * KIB);
    let lru = cyclic_hit_rate(&m, false, 8, 6).await;
    let adaptive = cyclic_hit_rate(&m, true, 8, 6).await;
    // Belady's optimum with 8 of 32 layers is about 7/31 = 0.226.
    println!("cyclic 32 layers, room for 8: LRU {lru:.3}, adaptive {adaptive:.3}");
    assert_eq!(
        lru, 0.0,
        "LRU misses every access of a loop longer than the cache"
    );
    assert!(
        adaptive >= 0.9 * 7.0 / 31.0,
        "adaptive hit rate {adaptive:.3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_priorities_still_win_with_adaptive_caching() {
    let m = TestModel::new(8, 64 * KIB);
    let model = m
        .open(MmapConfig {
            adaptive_caching: true,
            ..config(Backend::Mmap, 3 * 64 * KIB)
        })
        .await;
    model.set_priority(5, 10.0).unwrap();
    drop(model.layer(5).await.unwrap());
    for _ in 0..3 {
        for i in 0..8 {
            drop(model.layer(i).await.unwrap());
            assert!(
                model.descriptor(5).unwrap().cached,
                "the high-priority layer stays"
            );
        }
    }
    model.check_invariants().unwrap();
}
