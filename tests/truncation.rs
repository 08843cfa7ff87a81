//! A file truncated while a model is open, before or while layers are read:
//! with `Backend::Auto` and the default config, whichever engine Auto picks
//! (io_uring here; pread where the ring cannot be created, injected with
//! `--features fault-injection`), and with `Backend::Pread` asked for, every
//! fetch yields exact bytes or `Error::Truncated`, and the process never gets
//! SIGBUS (which would kill this test). The mmap backend cannot promise that
//! for a truncation racing a read, which is why Auto never uses it; see
//! docs/reliability.md.

mod common;

use common::{config, TestModel, KIB};
use hyperion::{Backend, Error, MappedModel, MmapConfig};

/// How a case opens the model, and the engine it must end up with.
#[derive(Clone, Debug)]
enum Opener {
    /// `Backend::Auto` with the defaults (io_uring on this kernel).
    Auto,
    /// `Backend::Auto` where io_uring cannot be created (an injected ring
    /// failure): falls back to pread.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    AutoWithoutRing,
    /// `Backend::Pread` with the given settings.
    Pread(MmapConfig),
    /// `Backend::IoUring` with the given settings.
    Uring(MmapConfig),
}

impl Opener {
    async fn open(&self, m: &TestModel) -> MappedModel {
        let budget = 64 << 20;
        let (model, want) = match self {
            Opener::Auto => (
                m.open(config(Backend::Auto, budget)).await,
                Backend::IoUring,
            ),
            Opener::AutoWithoutRing => (open_without_ring(m, budget).await, Backend::Pread),
            Opener::Pread(c) => (m.open(c.clone()).await, Backend::Pread),
            Opener::Uring(c) => (m.open(c.clone()).await, Backend::IoUring),
        };
        assert_eq!(model.backend(), want, "{self:?}");
        model
    }
}

#[cfg(feature = "fault-injection")]
async fn open_without_ring(m: &TestModel, budget: u64) -> MappedModel {
    let plan = hyperion::faults::FaultPlan::new(0).with_ring_setup_failure();
    MappedModel::open_with_faults(&m.path, config(Backend::Auto, budget), plan.into())
        .await
        .unwrap()
}

#[cfg(not(feature = "fault-injection"))]
async fn open_without_ring(_: &TestModel, _: u64) -> MappedModel {
    unreachable!("AutoWithoutRing cases need --features fault-injection")
}

/// Several rounds of concurrent fetches of every layer, the file cut at a
/// different point and moment each round, while the reads run.
async fn during_reads(opener: &Opener) {
    let layers = 24;
    let m = TestModel::new(layers, 256 * KIB);
    let pristine = std::fs::read(&m.path).unwrap();
    let (mut exact, mut truncated) = (0, 0);
    for round in 0..10u64 {
        std::fs::write(&m.path, &pristine).unwrap();
        let model = opener.open(&m).await;
        // Open: it only counts the reads that start.
        let gate = common::Gate::closed();
        gate.install(&model);
        gate.open(layers);
        let fetches: Vec<_> = (0..layers)
            .map(|i| {
                let model = model.clone();
                tokio::spawn(async move { model.layer(i).await.map(|w| w.to_vec()) })
            })
            .collect();
        // Cut the file somewhere in its layers while the reads run: at once in
        // the first rounds, later once more and more reads have started (2
        // in round 3, 14 in round 9): moments set by the reads' progress, not
        // by a timer (one that sleeps a millisecond is long enough for a fast
        // engine to read everything).
        if round >= 3 {
            gate.wait_entered(2 * (round as usize - 2)).await;
        }
        common::truncate(&m.path, pristine.len() as u64 * (round + 1) / 12);
        for (i, f) in fetches.into_iter().enumerate() {
            match f.await.unwrap() {
                Ok(bytes) => {
                    m.check(i, &bytes);
                    exact += 1;
                }
                Err(Error::Truncated { layer, .. }) => {
                    assert_eq!(layer, i);
                    truncated += 1;
                }
                Err(e) => panic!("{opener:?}, layer {i}: unexpected error {e}"),
            }
        }
        model.close();
    }
    println!("{opener:?}: {exact} exact, {truncated} truncated");
    assert!(
        truncated > 0 && exact > 0,
        "{opener:?}: {exact} exact, {truncated} truncated"
    );
}

/// The file cut inside layer 2 before anything is read: the layers before
/// the cut arrive exact, the cut one and those after are `Truncated`.
async fn before_reads(opener: &Opener) {
    let m = TestModel::new(4, 256 * KIB);
    let model = opener.open(&m).await;
    let index = hyperion::format::read_index(&m.path).unwrap();
    common::truncate(&m.path, index.layers[2].offset() + 100 * KIB);
    for i in 0..4 {
        match model.layer(i).await {
            Ok(w) if i < 2 => m.check(i, &w),
            Err(Error::Truncated { layer, .. }) if i >= 2 => assert_eq!(layer, i),
            other => panic!("{opener:?}, layer {i}: {:?}", other.map(|w| w.len())),
        }
    }
}

/// pread with several chunks per layer read by several threads at once.
fn pread_in_small_chunks() -> Opener {
    Opener::Pread(MmapConfig {
        read_chunk_size: 16 * KIB,
        reads_in_flight: 4,
        ..config(Backend::Pread, 64 << 20)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_truncation_during_reads_is_an_error_never_a_crash() {
    during_reads(&Opener::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pread_truncation_during_reads_is_an_error_never_a_crash() {
    during_reads(&Opener::Pread(config(Backend::Pread, 64 << 20))).await;
    during_reads(&pread_in_small_chunks()).await;
}

/// Buffered reads (asked for, or of chunks found in the page cache) do not
/// exclude a concurrent truncation, which zeroes the page cache past the
/// new end: without checksums to catch that, the engines check the file's
/// size after each buffered chunk. (`during_reads` rewrites the file before
/// each round, so its pages are cached and direct reads copy them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_buffered_reads_racing_truncation_never_return_zeros() {
    for direct_io in [false, true] {
        let unverified = |backend| MmapConfig {
            verify_checksums: false,
            direct_io,
            ..config(backend, 64 << 20)
        };
        during_reads(&Opener::Pread(unverified(Backend::Pread))).await;
        during_reads(&Opener::Uring(unverified(Backend::IoUring))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_before_reads_is_an_error() {
    before_reads(&Opener::Auto).await;
    before_reads(&Opener::Pread(config(Backend::Pread, 64 << 20))).await;
    before_reads(&pread_in_small_chunks()).await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_io_uring_truncation_during_reads_is_an_error_never_a_crash() {
    during_reads(&Opener::AutoWithoutRing).await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_io_uring_truncation_before_reads_is_an_error() {
    before_reads(&Opener::AutoWithoutRing).await;
}

/// A cut that certainly lands in the middle of reads: every request is
/// delayed (injected), so each layer's 16 reads take tens of milliseconds,
/// and the file is cut inside layer 4 as soon as every read has started.
/// Layers before the cut arrive exact; layer 4 and later are `Truncated`
/// (or, if the machine stalled this task past their reads, exact).
#[cfg(feature = "fault-injection")]
async fn cut_in_the_middle_of_reads(auto: bool) {
    use hyperion::faults::FaultPlan;
    let layers = 8;
    let m = TestModel::new(layers, 256 * KIB);
    let mut plan = FaultPlan::new(7).with_delays(1.0, std::time::Duration::from_millis(4));
    let backend = if auto {
        plan = plan.with_ring_setup_failure();
        Backend::Auto
    } else {
        Backend::Pread
    };
    let cfg = MmapConfig {
        read_chunk_size: 16 * KIB,
        reads_in_flight: 1,
        ..config(backend, 64 << 20)
    };
    let model = MappedModel::open_with_faults(&m.path, cfg, plan.into())
        .await
        .unwrap();
    assert_eq!(model.backend(), Backend::Pread);
    let gate = common::Gate::closed();
    gate.install(&model);
    gate.open(layers);
    let fetches: Vec<_> = (0..layers).map(|i| tokio::spawn(model.layer(i))).collect();
    gate.wait_entered(layers).await;
    let index = hyperion::format::read_index(&m.path).unwrap();
    common::truncate(&m.path, index.layers[4].offset() + 100 * KIB);
    let mut truncated = 0;
    for (i, f) in fetches.into_iter().enumerate() {
        match f.await.unwrap() {
            Ok(w) => m.check(i, &w),
            Err(Error::Truncated { layer, .. }) if i >= 4 => {
                assert_eq!(layer, i);
                truncated += 1;
            }
            Err(e) => panic!("auto: {auto}, layer {i}: unexpected error {e}"),
        }
    }
    assert!(truncated > 0, "auto: {auto}: no read was cut");
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pread_cut_in_the_middle_of_reads() {
    cut_in_the_middle_of_reads(false).await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_io_uring_cut_in_the_middle_of_reads() {
    cut_in_the_middle_of_reads(true).await;
}
