//! s3:// models when the server or the network misbehaves, through a
//! fault-injecting proxy in front of the real server (`s3::Proxy`): 5xx and
//! throttling answers and connections dropped mid-body are retried within
//! bounded time; an object replaced under an open model is
//! `Error::ObjectChanged`, never mixed bytes; missing objects and buckets,
//! refused credentials and an unreachable endpoint are one-line errors that
//! name the URL. And the budget and single-flight under 1,000 tasks.

mod common;
mod s3;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperion::{Error, LayerWeights, MappedModel, MmapConfig, ObjectErrorKind};
use rand::{Rng, SeedableRng};

/// A synthetic model put in a fresh bucket: the model, its URL.
async fn synth_in_s3(
    server: &s3::Server,
    layers: usize,
    layer_size: u64,
) -> (common::TestModel, String) {
    let m = common::TestModel::new(layers, layer_size);
    let bucket = s3::bucket(server).await;
    let url = s3::upload(server, &bucket, "model.tmai", &m.path).await;
    (m, url)
}

/// Whether a request is a ranged GET of layer bytes (not the header's).
fn layer_get(seen: &s3::Seen) -> bool {
    seen.method == "GET"
        && seen
            .headers
            .get("range")
            .is_some_and(|r| !r.starts_with("bytes=0-"))
}

/// Reads every layer of `model` and checks it against `m`.
async fn read_all(model: &MappedModel, m: &common::TestModel) {
    for i in 0..model.layer_count() {
        let w = model.layer(i).await.unwrap();
        m.check(i, &w);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_throttling_are_retried() {
    let Some(server) = s3::server() else { return };
    let (m, url) = synth_in_s3(server, 6, 256 * common::KIB).await;
    let proxy = s3::Proxy::start(server).await;
    let model = MappedModel::open(&url, s3::config(&proxy.endpoint, 4 << 20))
        .await
        .unwrap();
    // Every other layer request: two 503 SlowDown, then one 500, then through.
    let failed = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&failed);
    proxy.set_rule(move |seen, n| {
        if layer_get(seen) && n % 2 == 0 {
            f.fetch_add(1, Relaxed);
            return s3::Fault::Status(if n % 3 == 0 { 500 } else { 503 });
        }
        s3::Fault::Pass
    });
    read_all(&model, &m).await;
    assert!(
        failed.load(Relaxed) >= 6,
        "the proxy failed {} requests",
        failed.load(Relaxed)
    );
    common::close_and_expect_freed(model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_range_is_resumed_with_the_same_bytes() {
    let Some(server) = s3::server() else { return };
    let (m, url) = synth_in_s3(server, 4, 1 << 20).await;
    let proxy = s3::Proxy::start(server).await;
    let config = MmapConfig {
        read_chunk_size: 512 << 10,
        ..s3::config(&proxy.endpoint, 8 << 20)
    };
    let model = MappedModel::open(&url, config).await.unwrap();
    // The first request of each layer's chunks (every other one) is cut
    // 100,000 bytes into its body.
    let cut = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&cut);
    proxy.set_rule(move |seen, n| {
        if layer_get(seen) && n % 2 == 1 && c.load(Relaxed) < 8 {
            c.fetch_add(1, Relaxed);
            return s3::Fault::CutAfter(100_000);
        }
        s3::Fault::Pass
    });
    read_all(&model, &m).await;
    assert!(
        cut.load(Relaxed) >= 4,
        "only {} bodies were cut",
        cut.load(Relaxed)
    );
    common::close_and_expect_freed(model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_times_out_and_is_retried() {
    let Some(server) = s3::server() else { return };
    let (m, url) = synth_in_s3(server, 3, 128 * common::KIB).await;
    let proxy = s3::Proxy::start(server).await;
    let mut config = s3::config(&proxy.endpoint, 4 << 20);
    config.object_store.request_timeout = Duration::from_millis(500);
    let model = MappedModel::open(&url, config).await.unwrap();
    let stalled = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&stalled);
    proxy.set_rule(move |seen, _| {
        if layer_get(seen) && s.fetch_add(1, Relaxed) == 0 {
            return s3::Fault::Delay(Duration::from_secs(30));
        }
        s3::Fault::Pass
    });
    let start = Instant::now();
    read_all(&model, &m).await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        stalled.load(Relaxed) >= 2,
        "the stalled request was not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_failing_is_an_error_within_the_retry_timeout() {
    let Some(server) = s3::server() else { return };
    let (_m, url) = synth_in_s3(server, 3, 256 * common::KIB).await;
    let proxy = s3::Proxy::start(server).await;
    let mut config = s3::config(&proxy.endpoint, 1 << 20);
    config.object_store.max_retries = 1000;
    config.object_store.retry_timeout = Duration::from_secs(2);
    let model = MappedModel::open(&url, config).await.unwrap();
    proxy.set_rule(|seen, _| {
        if layer_get(seen) {
            s3::Fault::Status(503)
        } else {
            s3::Fault::Pass
        }
    });
    let start = Instant::now();
    let err = model.layer(1).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            &err,
            Error::ObjectStore {
                kind: ObjectErrorKind::Server,
                ..
            }
        ),
        "{err:?}"
    );
    one_line_naming(&err, &url);
    // retry_timeout, plus one backoff (at most max_backoff, 200 ms here)
    // and the last attempt.
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    // The failed read's buffer went back to the budget.
    assert_eq!(model.memory_usage(), 0);
    println!("gave up after {took:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_replaced_under_an_open_model_is_object_changed() {
    let Some(server) = s3::server() else { return };
    let (m, url) = synth_in_s3(server, 4, 128 * common::KIB).await;
    // Checksums off, so that mixed bytes could not hide behind a checksum
    // mismatch: the ETag alone must catch the change.
    let unchecked = MmapConfig {
        verify_checksums: false,
        ..s3::config(&server.endpoint, 4 << 20)
    };
    let model = MappedModel::open(&url, unchecked.clone()).await.unwrap();
    let first = model.layer(0).await.unwrap();
    m.check(0, &first);
    // The same model with other weights: same size, same header, other bytes.
    let other = common::TestModel {
        spec: hyperion::synth::SynthSpec {
            seed: 7,
            ..m.spec.clone()
        },
        ..common::TestModel::new(1, 4096)
    };
    hyperion::synth::write(&other.path, &other.spec).unwrap();
    let bytes = std::fs::read(&other.path).unwrap();
    assert_eq!(
        bytes.len() as u64,
        std::fs::metadata(&m.path).unwrap().len()
    );
    let key = url.rsplit_once('/').unwrap().1;
    let bucket = url.trim_start_matches("s3://").split('/').next().unwrap();
    s3::put(server, bucket, key, bytes).await;
    for i in 1..4 {
        match model.layer(i).await {
            Err(e @ Error::ObjectChanged { .. }) => one_line_naming(&e, &url),
            Err(e) => panic!("layer {i}: expected ObjectChanged, got {e}"),
            Ok(_) => panic!("layer {i} was read from the replaced object"),
        }
    }
    let fresh = MappedModel::open(&url, unchecked).await.unwrap();
    // Reopened: the new object reads, as the new bytes.
    let w = fresh.layer(2).await.unwrap();
    other.check(2, &w);
}

/// `err` is one line and names `url`.
fn one_line_naming(err: &Error, url: &str) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "more than one line: {text}");
    assert!(text.starts_with(url), "does not start with {url}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_and_buckets_are_one_line_not_found_errors() {
    let Some(server) = s3::server() else { return };
    let bucket = s3::bucket(server).await;
    let config = s3::config(&server.endpoint, 1 << 20);
    for url in [
        format!("s3://{bucket}/no/such/model.safetensors"),
        "s3://hyperion-no-such-bucket/model.safetensors".to_string(),
    ] {
        let err = MappedModel::open(&url, config.clone()).await.err().unwrap();
        assert!(
            matches!(
                &err,
                Error::ObjectStore {
                    kind: ObjectErrorKind::NotFound,
                    ..
                }
            ),
            "{url}: {err:?}"
        );
        one_line_naming(&err, &url);
        println!("{err}");
    }
    // A shard the index names but the bucket lacks.
    let url = s3::put(
        server,
        &bucket,
        "m/model.safetensors.index.json",
        br#"{"weight_map":{"a":"gone.safetensors"}}"#.to_vec(),
    )
    .await;
    let err = MappedModel::open(&url, config).await.err().unwrap();
    match &err {
        Error::Format {
            source: hyperion::FormatError::MissingFile { name, reason, .. },
            ..
        } => assert!(
            name == "gone.safetensors" && reason.contains("not found"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    one_line_naming(&err, &url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_one_line_access_denied_errors() {
    let Some(server) = s3::server() else { return };
    let (_m, url) = synth_in_s3(server, 2, 64 * common::KIB).await;
    // moto takes any credentials; the proxy answers as S3 does when it
    // refuses them (403 InvalidAccessKeyId).
    let proxy = s3::Proxy::start(server).await;
    proxy.set_rule(|_, _| s3::Fault::Status(403));
    let err = MappedModel::open(&url, s3::config(&proxy.endpoint, 1 << 20))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &err,
            Error::ObjectStore {
                kind: ObjectErrorKind::AccessDenied,
                ..
            }
        ),
        "{err:?}"
    );
    one_line_naming(&err, &url);
    println!("{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_a_one_line_error_in_bounded_time() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = s3::config(&format!("http://127.0.0.1:{port}"), 1 << 20);
    config.object_store.retry_timeout = Duration::from_secs(1);
    let url = "s3://bucket/model.safetensors";
    let start = Instant::now();
    let err = MappedModel::open(url, config).await.err().unwrap();
    assert!(
        matches!(
            &err,
            Error::ObjectStore {
                kind: ObjectErrorKind::Unreachable,
                ..
            }
        ),
        "{err:?}"
    );
    one_line_naming(&err, url);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    println!("{err}");
}

/// 1,000 tasks over one s3:// model 8× the budget: random fetches,
/// prefetches, releases and priorities; memory never over the budget,
/// every byte right. Then 1,000 tasks awaiting one cold layer: one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_stay_within_budget_and_share_reads() {
    let Some(server) = s3::server() else { return };
    let layers = 32;
    let layer_size = 64 * common::KIB;
    let budget = 4 * layer_size;
    let (m, url) = synth_in_s3(server, layers, layer_size).await;
    let proxy = s3::Proxy::start(server).await;
    let config = MmapConfig {
        memory_wait_timeout: Duration::from_secs(60),
        read_chunk_size: 16 << 10,
        reads_in_flight: 2,
        ..s3::config(&proxy.endpoint, budget)
    };

    // Single flight: 1,000 tasks await one cold layer.
    let model = MappedModel::open(&url, config.clone()).await.unwrap();
    proxy.clear();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (model, barrier) = (model.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                model.layer(5).await.unwrap()
            })
        })
        .collect();
    let mut first: Option<LayerWeights> = None;
    for t in tasks {
        let w = t.await.unwrap();
        match &first {
            Some(f) => assert!(LayerWeights::ptr_eq(f, &w)),
            None => {
                m.check(5, &w);
                first = Some(w);
            }
        }
    }
    drop(first);
    let s = model.stats();
    assert_eq!(
        s.reads, 1,
        "1000 tasks awaiting one cold layer made {} reads",
        s.reads
    );
    // 64 KiB in 16 KiB requests.
    assert_eq!(proxy.count("GET"), 4, "GETs for one layer");
    common::close_and_expect_freed(model).await;

    // The budget under random operations.
    let model = MappedModel::open(&url, config).await.unwrap();
    let expected: Arc<Vec<Vec<u8>>> =
        Arc::new((0..layers).map(|i| m.spec.layer_bytes(i)).collect());
    let over = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..1000u64)
        .map(|seed| {
            let (model, expected, over) = (model.clone(), expected.clone(), over.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                for _ in 0..10 {
                    let i = rng.random_range(0..layers);
                    match rng.random_range(0..10) {
                        0..=5 => {
                            let w = model.layer(i).await.unwrap();
                            assert!(w[..] == expected[i][..], "layer {i}: wrong bytes");
                        }
                        6 | 7 => {
                            let _ = model.prefetch(i);
                        }
                        8 => model.release(i).unwrap(),
                        _ => model.set_priority(i, rng.random_range(-2.0..2.0)).unwrap(),
                    }
                    let s = model.stats();
                    if s.memory_usage + s.pool_idle_bytes > budget {
                        over.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let s = model.stats();
    assert_eq!(over.load(Relaxed), 0);
    assert!(s.peak_memory <= budget, "peak {} > {budget}", s.peak_memory);
    assert!(s.evictions > 0 && s.reads > layers as u64, "{s:?}");
    println!(
        "1000 tasks × 10 operations over s3://: {} reads, {} GETs, {} evictions, peak {} of {budget}",
        s.reads,
        proxy.count("GET"),
        s.evictions,
        s.peak_memory
    );
    common::close_and_expect_freed(model).await;
}
