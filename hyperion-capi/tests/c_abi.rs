//! The C ABI called directly from Rust: the contract of
//! `include/hyperion/utils/mmap_loader.h`, and that its blocking calls work
//! from plain threads and from inside tokio runtimes of either flavor
//! (no deadlock, no "cannot block inside a runtime" panic).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::ffi::{c_void, CStr, CString};
use std::mem::offset_of;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use common::{TestModel, KIB};
use hyperion::MmapConfig;
use hyperion_capi::*;

fn last_error() -> Option<String> {
    let p = hyperionLastError();
    // SAFETY: a non-NULL result is a NUL-terminated string, valid until this
    // thread's next call of the API; it is copied at once.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn assert_error(needles: &[&str]) {
    let err = last_error().expect("expected a last error");
    for n in needles {
        assert!(err.contains(n), "last error {err:?} does not mention {n:?}");
    }
}

fn open(m: &TestModel, budget: usize) -> *mut HyperionMappedModel {
    let path = CString::new(m.path.to_str().unwrap()).unwrap();
    let config = HyperionMmapConfig {
        maxCacheSize: budget,
        ..hyperionCreateDefaultMmapConfig()
    };
    // SAFETY: both pointers are valid for the call.
    let model = unsafe { hyperionOpenMappedModel(path.as_ptr(), &config) };
    assert!(!model.is_null(), "open failed: {:?}", last_error());
    model
}

/// The bytes behind a weights pointer.
///
/// # Safety
/// `p` must be a live pointer from `hyperionGetLayerWeights` for a layer of
/// `len` bytes.
unsafe fn weights<'a>(p: *mut c_void, len: usize) -> &'a [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

fn descriptor(model: *const HyperionMappedModel, layer: i32) -> HyperionLayerDescriptor {
    let d = hyperionGetLayerDescriptor(model, layer);
    assert!(!d.is_null(), "descriptor({layer}): {:?}", last_error());
    // SAFETY: non-NULL descriptors stay valid until close or thread exit.
    unsafe { *d }
}

/// Gets, checks and releases every layer, `rounds` times, with prefetches.
fn pass(m: &TestModel, model: *mut HyperionMappedModel, rounds: usize) {
    let count = hyperionGetMappedLayerCount(model);
    assert_eq!(count as usize, m.spec.layers);
    for _ in 0..rounds {
        for i in 0..count {
            assert!(hyperionPrefetchLayerWeights(model, (i + 1) % count));
            let p = hyperionGetLayerWeights(model, i);
            assert!(!p.is_null(), "get({i}): {:?}", last_error());
            let d = descriptor(model, i);
            assert_eq!(d.cachedWeights, p);
            assert!(d.isActive);
            // SAFETY: `p` is held until the release below.
            m.check(i as usize, unsafe { weights(p, d.size) });
            hyperionReleaseLayerWeights(model, i);
            assert_eq!(last_error(), None);
        }
    }
}

/// Aborts the process if `f` takes longer than a minute: a deadlock would
/// otherwise hang the test run instead of failing it.
fn within_a_minute<T>(f: impl FnOnce() -> T) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Woken the moment `f` returns (the sender is dropped), or after the
        // minute that is the timeout under test.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_secs(60))
        {
            eprintln!("c_abi: a call did not return within a minute (deadlock?)");
            std::process::abort();
        }
    });
    let out = f();
    drop(done);
    out
}

#[test]
fn the_default_config_is_mmap_configs_default() {
    let c = hyperionCreateDefaultMmapConfig();
    let r = MmapConfig::default();
    assert_eq!(c.maxCacheSize as u64, r.max_cache_size);
    assert_eq!(c.prefetchEnabled, r.prefetch_enabled);
    assert_eq!(c.prefetchThreads as usize, r.prefetch_threads);
    assert_eq!(c.adaptiveCaching, r.adaptive_caching);
    assert_eq!(c.minLayerCacheSize as u64, r.min_layer_cache_size);
    assert_eq!(last_error(), None);
}

#[test]
fn layers_arrive_exact_and_descriptors_follow_them() {
    let m = TestModel::new(6, 64 * KIB + 256);
    let model = open(&m, 256 * 1024);
    let fresh = descriptor(model, 3);
    assert_eq!(fresh.layerIndex, 3);
    assert_eq!(fresh.size, m.spec.layer_size as usize);
    assert_eq!(fresh.precision, 32);
    assert!(fresh.cachedWeights.is_null() && !fresh.isActive);
    assert_eq!((fresh.accessCount, fresh.lastAccessed), (0, 0));

    let p = hyperionGetLayerWeights(model, 3);
    assert!(!p.is_null());
    // SAFETY: held until released below.
    m.check(3, unsafe { weights(p, fresh.size) });
    let file = std::fs::read(&m.path).unwrap();
    assert_eq!(
        &file[fresh.offset..fresh.offset + fresh.size],
        // SAFETY: as above.
        unsafe { weights(p, fresh.size) },
        "offset and size locate the layer in the file"
    );
    assert_eq!(
        hyperionGetLayerWeights(model, 3),
        p,
        "a held layer keeps its address"
    );
    let d = descriptor(model, 3);
    assert_eq!(d.cachedWeights, p);
    assert!(d.isActive && d.accessCount == 2 && d.lastAccessed > 0);
    assert!(hyperionGetMappedModelMemoryUsage(model) >= d.size);

    hyperionSetLayerPriority(model, 3, 7.5);
    assert_eq!(descriptor(model, 3).priority, 7.5);
    hyperionResetLayerPriorities(model);
    assert_eq!(descriptor(model, 3).priority, 0.0);

    hyperionReleaseLayerWeights(model, 3);
    let d = descriptor(model, 3);
    assert!(d.cachedWeights.is_null() && !d.isActive);
    assert_eq!(hyperionGetMappedModelMemoryUsage(model), 0);

    pass(&m, model, 3);
    hyperionCloseMappedModel(model);
    assert_eq!(last_error(), None);
}

#[test]
fn held_layers_survive_eviction_pressure_until_released() {
    // Room for four layers: hold two, stream the rest through the other two.
    let m = TestModel::new(10, 64 * KIB);
    let model = open(&m, 4 * 64 * 1024);
    let a = hyperionGetLayerWeights(model, 0);
    let b = hyperionGetLayerWeights(model, 1);
    assert!(!a.is_null() && !b.is_null());
    for i in 2..10 {
        let p = hyperionGetLayerWeights(model, i);
        assert!(!p.is_null(), "get({i}): {:?}", last_error());
        hyperionReleaseLayerWeights(model, i);
    }
    // SAFETY: layers 0 and 1 were never released.
    unsafe {
        m.check(0, weights(a, 64 * 1024));
        m.check(1, weights(b, 64 * 1024));
    }
    assert!(hyperionGetMappedModelMemoryUsage(model) <= 4 * 64 * 1024);
    hyperionCloseMappedModel(model);
}

#[test]
fn null_negative_out_of_range_and_closed_arguments_are_errors() {
    let m = TestModel::new(3, 16 * KIB);
    assert_eq!(hyperionGetMappedLayerCount(ptr::null()), -1);
    assert_error(&["hyperionGetMappedLayerCount", "NULL"]);
    assert_eq!(hyperionGetMappedModelMemoryUsage(ptr::null()), 0);
    assert_error(&["hyperionGetMappedModelMemoryUsage", "NULL"]);
    assert!(hyperionGetLayerWeights(ptr::null_mut(), 0).is_null());
    hyperionReleaseLayerWeights(ptr::null_mut(), 0);
    assert_error(&["hyperionReleaseLayerWeights", "NULL"]);
    hyperionCloseMappedModel(ptr::null_mut());
    assert_error(&["hyperionCloseMappedModel", "NULL"]);
    // SAFETY: NULL pointers are allowed.
    assert!(unsafe { hyperionOpenMappedModel(ptr::null(), ptr::null()) }.is_null());
    assert_error(&["filepath is NULL"]);

    let model = open(&m, 1 << 20);
    for bad in [-1, i32::MIN] {
        assert!(hyperionGetLayerWeights(model, bad).is_null());
        assert_error(&["hyperionGetLayerWeights", "negative"]);
        assert!(hyperionGetLayerDescriptor(model, bad).is_null());
        assert!(!hyperionPrefetchLayerWeights(model, bad));
        hyperionSetLayerPriority(model, bad, 1.0);
        assert_error(&["hyperionSetLayerPriority", "negative"]);
    }
    for bad in [3, 4, i32::MAX] {
        assert!(hyperionGetLayerWeights(model, bad).is_null());
        assert_error(&["out of range", "3 layers"]);
        hyperionReleaseLayerWeights(model, bad);
        assert_error(&["hyperionReleaseLayerWeights", "out of range"]);
    }
    hyperionSetLayerPriority(model, 0, f32::NAN);
    assert_error(&["NaN"]);
    assert_eq!(hyperionGetMappedLayerCount(model), 3);
    assert_eq!(
        last_error(),
        None,
        "a successful call clears the last error"
    );

    hyperionCloseMappedModel(model);
    assert_eq!(hyperionGetMappedLayerCount(model), -1);
    assert_error(&["not an open model"]);
    assert!(hyperionGetLayerWeights(model, 0).is_null());
    assert_eq!(hyperionGetMappedModelMemoryUsage(model), 0);
    hyperionCloseMappedModel(model);
    assert_error(&["hyperionCloseMappedModel", "not an open model"]);
}

#[test]
fn invalid_configs_are_refused_with_the_c_field_names() {
    let m = TestModel::new(2, 16 * KIB);
    let path = CString::new(m.path.to_str().unwrap()).unwrap();
    let open_with = |c: HyperionMmapConfig| {
        // SAFETY: valid pointers for the call.
        unsafe { hyperionOpenMappedModel(path.as_ptr(), &c) }
    };
    let d = hyperionCreateDefaultMmapConfig();
    for (config, field) in [
        (
            HyperionMmapConfig {
                maxCacheSize: 0,
                ..d
            },
            "maxCacheSize",
        ),
        (
            HyperionMmapConfig {
                prefetchThreads: 0,
                ..d
            },
            "prefetchThreads",
        ),
        (
            HyperionMmapConfig {
                prefetchThreads: -1,
                prefetchEnabled: false,
                ..d
            },
            "prefetchThreads",
        ),
        (
            HyperionMmapConfig {
                prefetchThreads: 1025,
                ..d
            },
            "prefetchThreads",
        ),
        (
            HyperionMmapConfig {
                minLayerCacheSize: usize::MAX,
                ..d
            },
            "minLayerCacheSize",
        ),
    ] {
        assert!(open_with(config).is_null(), "{config:?} was accepted");
        assert_error(&["hyperionOpenMappedModel", field]);
    }
    let model = open_with(HyperionMmapConfig {
        prefetchEnabled: false,
        prefetchThreads: 0,
        ..d
    });
    assert!(!model.is_null());
    assert!(!hyperionPrefetchLayerWeights(model, 0));
    assert_error(&["disabled"]);
    hyperionCloseMappedModel(model);

    // A C caller's garbage in a bool is read as true, not undefined behaviour.
    // Built byte by byte (the struct's padding may not be read as bytes).
    let mut raw = [0u8; std::mem::size_of::<HyperionMmapConfig>()];
    let mut put = |at: usize, bytes: &[u8]| raw[at..at + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(HyperionMmapConfig, maxCacheSize),
        &d.maxCacheSize.to_ne_bytes(),
    );
    put(
        offset_of!(HyperionMmapConfig, prefetchThreads),
        &d.prefetchThreads.to_ne_bytes(),
    );
    put(
        offset_of!(HyperionMmapConfig, minLayerCacheSize),
        &d.minLayerCacheSize.to_ne_bytes(),
    );
    raw[offset_of!(HyperionMmapConfig, prefetchEnabled)] = 0x7f;
    // SAFETY: `raw` has the size of the struct; the function reads it unaligned.
    let model = unsafe { hyperionOpenMappedModel(path.as_ptr(), raw.as_ptr().cast()) };
    assert!(!model.is_null(), "{:?}", last_error());
    assert!(hyperionPrefetchLayerWeights(model, 0));
    hyperionCloseMappedModel(model);

    // A missing file names itself.
    let missing = CString::new("/nonexistent/model.tmai").unwrap();
    // SAFETY: valid pointers for the call.
    assert!(unsafe { hyperionOpenMappedModel(missing.as_ptr(), ptr::null()) }.is_null());
    assert_error(&["/nonexistent/model.tmai"]);
}

#[test]
fn last_errors_and_descriptors_belong_to_their_thread() {
    let m = TestModel::new(2, 16 * KIB);
    let model = open(&m, 1 << 20);
    let handle = model as usize;
    let mine = hyperionGetLayerDescriptor(model, 0);
    assert!(hyperionGetLayerWeights(model, -1).is_null());
    let theirs = std::thread::spawn(move || {
        let model = handle as *mut HyperionMappedModel;
        assert_eq!(last_error(), None, "a new thread has no last error");
        let p = hyperionGetLayerWeights(model, 0);
        assert!(!p.is_null());
        hyperionGetLayerDescriptor(model, 0) as usize
    })
    .join()
    .unwrap();
    assert_error(&["negative"]);
    assert_ne!(mine as usize, theirs, "each thread has its own descriptor");
    assert_eq!(
        hyperionGetLayerDescriptor(model, 0),
        mine,
        "and it is stable"
    );
    hyperionCloseMappedModel(model);
}

#[test]
fn many_threads_share_one_model() {
    let m = TestModel::new(12, 32 * KIB);
    let model = open(&m, 6 * 32 * 1024) as usize;
    std::thread::scope(|s| {
        for t in 0..6 {
            let m = &m;
            s.spawn(move || {
                let model = model as *mut HyperionMappedModel;
                // Thread t owns layers t and t + 6: only it gets and releases them.
                for round in 0..50 {
                    let layer = t + 6 * (round % 2);
                    hyperionPrefetchLayerWeights(model, ((layer + 1) % 12) as i32);
                    hyperionSetLayerPriority(model, layer as i32, round as f32);
                    let p = hyperionGetLayerWeights(model, layer as i32);
                    assert!(!p.is_null(), "get({layer}): {:?}", last_error());
                    // SAFETY: only this thread releases `layer`, below.
                    m.check(layer, unsafe { weights(p, 32 * 1024) });
                    hyperionReleaseLayerWeights(model, layer as i32);
                    assert!(hyperionGetMappedModelMemoryUsage(model) <= 6 * 32 * 1024);
                }
            });
        }
    });
    hyperionCloseMappedModel(model as *mut HyperionMappedModel);
    assert_eq!(last_error(), None);
}

#[tokio::test]
async fn blocking_calls_work_inside_a_current_thread_runtime() {
    // The runtime's only thread is blocked in each call: anything the call
    // needed from this runtime would deadlock here.
    let m = TestModel::new(8, 64 * KIB);
    within_a_minute(|| {
        let model = open(&m, 3 * 64 * 1024);
        pass(&m, model, 2);
        hyperionCloseMappedModel(model);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_calls_work_from_tasks_of_a_multi_thread_runtime() {
    let m = Arc::new(TestModel::new(8, 64 * KIB));
    let model = open(&m, 4 * 64 * 1024) as usize;
    let tasks: Vec<_> = (0..2)
        .map(|t| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                within_a_minute(|| {
                    let model = model as *mut HyperionMappedModel;
                    for round in 0..4 {
                        // Task t owns layers t, t + 2, t + 4, t + 6.
                        let layer = t + 2 * round;
                        let p = hyperionGetLayerWeights(model, layer as i32);
                        assert!(!p.is_null(), "get({layer}): {:?}", last_error());
                        // SAFETY: only this task releases `layer`, below.
                        m.check(layer, unsafe { weights(p, 64 * 1024) });
                        hyperionReleaseLayerWeights(model, layer as i32);
                    }
                })
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    tokio::task::spawn_blocking(move || {
        let model = model as *mut HyperionMappedModel;
        assert!(!hyperionGetLayerWeights(model, 7).is_null());
        hyperionCloseMappedModel(model);
    })
    .await
    .unwrap();
}

#[test]
fn a_model_opened_inside_a_runtime_outlives_that_runtime() {
    let m = TestModel::new(4, 64 * KIB);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let model = rt.block_on(async { open(&m, 2 * 64 * 1024) });
    drop(rt);
    within_a_minute(|| pass(&m, model, 2));
    hyperionCloseMappedModel(model);
}
