//! `share_page_cache`: cached layers are views of the page cache's own
//! pages, under a read lease, and a file truncated while such views are held
//! never raises SIGBUS (which would kill this test): the truncation waits
//! until Hyperion has copied the shared pages out and released the lease,
//! every held layer keeps its exact bytes, and later reads see the cut as
//! `Error::Truncated`. See src/io/shared.rs and docs/reliability.md.

mod common;

use std::time::{Duration, Instant};

use common::{config, TestModel, KIB};
use hyperion::{Backend, ColdSharing, Error, LayerWeights, MappedModel, MmapConfig};

fn shared_config(backend: Backend) -> MmapConfig {
    MmapConfig {
        share_page_cache: true,
        ..config(backend, 64 << 20)
    }
}

/// Puts the whole file in the page cache.
fn warm(m: &TestModel) {
    std::hint::black_box(std::fs::read(&m.path).unwrap());
}

async fn fetch_all(model: &MappedModel) -> Vec<LayerWeights> {
    let mut held = Vec::new();
    for i in 0..model.layer_count() {
        held.push(model.layer(i).await.unwrap());
    }
    held
}

/// Whether this machine granted the leases (the model shared every layer);
/// where it did not (another user's file, a filesystem without leases),
/// layers are copied and the sharing tests have nothing to test.
fn leases_granted(model: &MappedModel, m: &TestModel) -> bool {
    let total = m.spec.layer_size * m.spec.layers as u64;
    let shared = model.stats().page_cache_shared_bytes;
    if shared == 0 {
        eprintln!(
            "no read lease on {}: layers were copied, nothing shared",
            m.path.display()
        );
        return false;
    }
    assert_eq!(shared, total);
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_layers_are_shared_with_their_exact_bytes() {
    for backend in [Backend::Auto, Backend::Pread] {
        let m = TestModel::new(8, 300 * KIB);
        warm(&m);
        let model = m.open(shared_config(backend)).await;
        let held = fetch_all(&model).await;
        for (i, w) in held.iter().enumerate() {
            m.check(i, w.bytes());
        }
        leases_granted(&model, &m);
        // Checksums were verified on the shared bytes too.
        assert_eq!(model.stats().misses, 8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_not_in_the_page_cache_are_read_not_shared() {
    let m = TestModel::new(4, 256 * KIB);
    let model = m.open(shared_config(Backend::Auto)).await;
    for (i, w) in fetch_all(&model).await.iter().enumerate() {
        m.check(i, w.bytes());
    }
    assert_eq!(model.stats().page_cache_shared_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_open_for_writing_is_not_leased_and_its_layers_are_copied() {
    let m = TestModel::new(4, 256 * KIB);
    warm(&m);
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&m.path)
        .unwrap();
    let model = m.open(shared_config(Backend::Auto)).await;
    for (i, w) in fetch_all(&model).await.iter().enumerate() {
        m.check(i, w.bytes());
    }
    assert_eq!(model.stats().page_cache_shared_bytes, 0);
    // And so nothing stops the writer.
    writer.set_len(0).unwrap();
}

/// The heart of it: views held, the file cut under them. The cut waits for
/// the lease (the views' pages copied out first), then happens; every held
/// byte is still the file's, and a new read sees the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_a_shared_file_while_views_are_held_never_faults() {
    for (round, cut_to) in [0u64, 4096, 1 << 20].into_iter().enumerate() {
        let m = TestModel::new(6, 512 * KIB + 100);
        warm(&m);
        let model = m.open(shared_config(Backend::Auto)).await;
        let held = fetch_all(&model).await;
        if !leases_granted(&model, &m) {
            return;
        }
        let file_len = std::fs::metadata(&m.path).unwrap().len();
        let start = Instant::now();
        // Another "process" (a thread here: the lease is per open file, so
        // the effect is the same) cuts the file; it must wait for the lease.
        let path = m.path.clone();
        let cutter = std::thread::spawn(move || common::truncate(&path, cut_to));
        cutter.join().unwrap();
        let waited = start.elapsed();
        assert_eq!(
            std::fs::metadata(&m.path).unwrap().len(),
            cut_to,
            "round {round}"
        );
        assert!(cut_to < file_len);
        // Every held byte, touched after the cut: the file's bytes, no fault.
        for (i, w) in held.iter().enumerate() {
            m.check(i, w.bytes());
        }
        // A new read of a layer past the cut goes to the copying engine.
        let last = model.layer_count() - 1;
        model.release(last).unwrap();
        drop(held);
        match model.layer(last).await {
            Err(Error::Truncated { layer, .. }) => assert_eq!(layer, last),
            other => panic!(
                "round {round}: expected Truncated, got {:?}",
                other.map(|_| ())
            ),
        }
        assert!(
            waited < Duration::from_secs(30),
            "the cut waited {waited:?}"
        );
    }
}

/// The cut lands while fetches are running and others are held: each fetch
/// is exact bytes or `Error::Truncated`, and every layer held when the cut
/// came keeps its bytes. A read gate lets `k` reads go, the cut starts at
/// once (racing them), and the rest go only after the cut is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_racing_shared_reads_gives_exact_bytes_or_truncated() {
    let layers = 24;
    let m = TestModel::new(layers, 256 * KIB);
    let pristine = std::fs::read(&m.path).unwrap();
    let (mut exact, mut truncated) = (0, 0);
    for round in 0..6u64 {
        std::fs::write(&m.path, &pristine).unwrap();
        warm(&m);
        let model = m.open(shared_config(Backend::Auto)).await;
        let gate = common::Gate::closed();
        gate.install(&model);
        let fetches: Vec<_> = (0..layers)
            .map(|i| {
                let model = model.clone();
                tokio::spawn(async move { (i, model.layer(i).await) })
            })
            .collect();
        let first = 4 * round as usize;
        gate.open(first);
        let path = m.path.clone();
        let cut_to = pristine.len() as u64 * (round + 1) / 8;
        let cutter = tokio::task::spawn_blocking(move || common::truncate(&path, cut_to));
        cutter.await.unwrap();
        gate.open(layers - first);
        let mut held = Vec::new();
        for f in fetches {
            let (i, r) = f.await.unwrap();
            match r {
                Ok(w) => {
                    m.check(i, w.bytes());
                    exact += 1;
                    held.push((i, w));
                }
                Err(Error::Truncated { layer, .. }) => {
                    assert_eq!(layer, i);
                    truncated += 1;
                }
                Err(e) => panic!("layer {i}: {e}"),
            }
        }
        for (i, w) in &held {
            m.check(*i, w.bytes());
        }
        model.close();
    }
    eprintln!("shared, cut during reads: {exact} exact, {truncated} truncated");
    assert_eq!(exact + truncated, 6 * layers);
    assert!(
        exact > 0 && truncated > 0,
        "{exact} exact, {truncated} truncated"
    );
}

/// Handles outlive the model: the lease is held as long as a shared view
/// is, so a cut after `close` still waits and still cannot fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_that_outlive_the_model_keep_the_lease() {
    let m = TestModel::new(3, 256 * KIB);
    warm(&m);
    let model = m.open(shared_config(Backend::Auto)).await;
    let held = fetch_all(&model).await;
    if !leases_granted(&model, &m) {
        return;
    }
    model.close();
    common::truncate(&m.path, 0);
    for (i, w) in held.iter().enumerate() {
        m.check(i, w.bytes());
    }
}

/// Drops the file's pages from the page cache, so every layer is cold.
fn drop_cache(m: &TestModel) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(&m.path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: `posix_fadvise` on a descriptor we hold open; a hint that
    // changes no byte of the file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

fn cold_config(backend: Backend) -> MmapConfig {
    MmapConfig {
        share_cold_layers: ColdSharing::Always,
        ..shared_config(backend)
    }
}

/// `share_cold_layers`: layers not in the page cache are read into it
/// through the leased mapping and shared too, with their exact bytes (and
/// checksums verified on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_layers_are_read_through_the_page_cache_and_shared() {
    for backend in [Backend::Auto, Backend::Pread] {
        let m = TestModel::new(8, 300 * KIB);
        drop_cache(&m);
        let model = m.open(cold_config(backend)).await;
        let held = fetch_all(&model).await;
        for (i, w) in held.iter().enumerate() {
            m.check(i, w.bytes());
            assert!(w.is_mapped() || model.stats().page_cache_shared_bytes == 0);
        }
        leases_granted(&model, &m);
        assert_eq!(model.stats().misses, 8);
    }
}

/// The same lease protects layers shared cold: a cut under held views
/// waits for the copy-out, and every held byte stays the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_under_cold_shared_views_never_faults() {
    for writable in [false, true] {
        let m = TestModel::new(6, 512 * KIB + 100);
        drop_cache(&m);
        let config = MmapConfig {
            share_writable: writable,
            ..cold_config(Backend::Auto)
        };
        let model = m.open(config).await;
        let held = fetch_all(&model).await;
        if !leases_granted(&model, &m) {
            return;
        }
        common::truncate(&m.path, 4096);
        for (i, w) in held.iter().enumerate() {
            m.check(i, w.bytes());
        }
        let last = model.layer_count() - 1;
        model.release(last).unwrap();
        drop(held);
        assert!(matches!(
            model.layer(last).await,
            Err(Error::Truncated { .. })
        ));
    }
}

/// Without `share_cold_layers`, or past the cap, cold layers are copied;
/// with it, a layer already cached and a cold one are both shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_cold_layers_needs_share_page_cache() {
    let m = TestModel::new(4, 256 * KIB);
    drop_cache(&m);
    let config = MmapConfig {
        share_cold_layers: ColdSharing::Always,
        ..config(Backend::Auto, 64 << 20)
    };
    let model = m.open(config).await;
    for (i, w) in fetch_all(&model).await.iter().enumerate() {
        m.check(i, w.bytes());
        assert!(!w.is_mapped());
    }
    assert_eq!(model.stats().page_cache_shared_bytes, 0);
}

/// `LayerWeights::is_writable`, which bindings ask before handing the
/// memory out as writable: read buffers and views made writable are;
/// views of a read-only mapping (the mmap engine, a shared view without
/// `share_writable`) are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_writable_tells_read_only_mappings_apart() {
    let m = TestModel::new(4, 256 * KIB);
    warm(&m);
    let cases = [
        ("read buffers", config(Backend::Auto, 64 << 20), Some(true)),
        ("mmap engine", config(Backend::Mmap, 64 << 20), Some(false)),
        ("shared", shared_config(Backend::Auto), None),
        (
            "shared writable",
            MmapConfig {
                share_writable: true,
                ..shared_config(Backend::Auto)
            },
            None,
        ),
    ];
    for (what, config, expected) in cases {
        let writable_share = config.share_writable;
        let model = m.open(config).await;
        let held = fetch_all(&model).await;
        let expected = match expected {
            Some(e) => e,
            // A shared view is writable with `share_writable`; where the
            // lease was refused the layer was copied (a buffer, writable).
            None if leases_granted(&model, &m) => writable_share,
            None => true,
        };
        for w in &held {
            assert_eq!(
                w.is_writable(),
                expected,
                "{what}: layer {}",
                w.layer_index()
            );
        }
    }
}

/// `ColdSharing::WhenFreshMemoryIsSlow` with fresh memory slow (the fault
/// plan makes it so): a cold layer whose read needs a fresh buffer is read
/// through the page cache and shared; one whose charge takes over a pooled
/// buffer is copied into it, since that copy faults nothing in. With fresh
/// memory fast (no plan; this machine's memory right after a probe may be
/// either), every layer has its exact bytes whichever way it went.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_layers_are_shared_while_fresh_memory_is_slow_unless_a_buffer_is_pooled() {
    use std::sync::Arc;

    use hyperion::faults::FaultPlan;

    let m = TestModel::new(8, 256 * KIB);
    drop_cache(&m);
    let config = MmapConfig {
        share_cold_layers: ColdSharing::WhenFreshMemoryIsSlow,
        ..shared_config(Backend::Auto)
    };
    let plan = Arc::new(FaultPlan::new(1).with_slow_fresh_memory());
    let model = MappedModel::open_with_faults(&m.path, config.clone(), plan)
        .await
        .unwrap();
    let held = fetch_all(&model).await;
    for (i, w) in held.iter().enumerate() {
        m.check(i, w.bytes());
    }
    if !leases_granted(&model, &m) {
        return;
    }
    assert!(held.iter().all(LayerWeights::is_mapped));
    drop(held);
    model.close();

    // A pooled buffer for every layer: read one model's layers into buffers
    // (sharing off), release them to its pool, then read them again cold
    // through a model that shares only while memory is slow... within the
    // same model, so its pool serves them.
    let copy_then_auto = MmapConfig {
        share_page_cache: false,
        ..config.clone()
    };
    let pool = hyperion::BufferPool::new(64 << 20);
    let first = m
        .open(MmapConfig {
            buffer_pool: Some(pool.clone()),
            ..copy_then_auto
        })
        .await;
    for i in 0..first.layer_count() {
        drop(first.layer(i).await.unwrap());
        first.release(i).unwrap();
    }
    first.close();
    assert!(pool.retained_bytes() > 0);
    drop_cache(&m);
    let plan = Arc::new(FaultPlan::new(2).with_slow_fresh_memory());
    let model = MappedModel::open_with_faults(
        &m.path,
        MmapConfig {
            buffer_pool: Some(pool.clone()),
            ..config.clone()
        },
        plan,
    )
    .await
    .unwrap();
    let w = model.layer(0).await.unwrap();
    m.check(0, w.bytes());
    assert!(
        !w.is_mapped(),
        "a pooled buffer was there: copied, not shared"
    );
    assert!(pool.reuses() > 0);
    drop(w);
    model.close();

    // Without the plan: exact bytes, shared or copied.
    drop_cache(&m);
    let model = m.open(config).await;
    for (i, w) in fetch_all(&model).await.iter().enumerate() {
        m.check(i, w.bytes());
    }
}
