//! Poll-level behaviour of fetch futures, with `tokio-test`.

mod common;

use common::{config, Gate, TestModel, KIB};
use hyperion::{Backend, LayerWeights};
use tokio_test::task;
use tokio_test::{assert_pending, assert_ready_ok};

on_all_backends!(
    a_hit_is_ready_on_the_first_poll,
    waiters_are_woken_when_the_read_lands,
    hits_and_misses_are_counted_when_the_fetch_is_made
);

async fn a_hit_is_ready_on_the_first_poll(backend: Backend) {
    let m = TestModel::new(2, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let cached = model.layer(0).await.unwrap();
    let fetch = model.layer(0);
    assert!(
        fetch.is_hit(),
        "a cached layer is found when the fetch is made"
    );
    let mut fetch = task::spawn(fetch);
    let w = assert_ready_ok!(fetch.poll());
    assert!(LayerWeights::ptr_eq(&w, &cached));
    assert_eq!(model.stats().reads, 1);
    // Polling a completed fetch again is the caller's bug: an error, not a panic.
    let again = fetch.poll();
    assert!(
        matches!(
            again,
            std::task::Poll::Ready(Err(hyperion::Error::InvalidArgument(_)))
        ),
        "{again:?}"
    );
}

async fn hits_and_misses_are_counted_when_the_fetch_is_made(backend: Backend) {
    let m = TestModel::new(2, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let gate = Gate::closed();
    gate.install(&model);
    let mut cold = task::spawn(model.layer(1));
    assert!(!cold.is_hit());
    assert_pending!(cold.poll());
    gate.open(1);
    let first = cold.await.unwrap();
    // Made before any poll, while the layer is cached: a hit.
    let warm = model.layer(1);
    assert!(warm.is_hit());
    let second = warm.await.unwrap();
    assert!(LayerWeights::ptr_eq(&first, &second));
    let _ = model.layer(7).await.unwrap_err();
    let s = model.stats();
    assert_eq!((s.hits, s.misses, s.reads), (1, 1, 1), "{s:?}");
    assert_eq!(model.descriptor(1).unwrap().access_count, 2);
}

async fn waiters_are_woken_when_the_read_lands(backend: Backend) {
    let m = TestModel::new(2, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let gate = Gate::closed();
    gate.install(&model);
    let mut first = task::spawn(model.layer(1));
    let mut second = task::spawn(model.layer(1));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    gate.wait_entered(1).await;
    assert!(!first.is_woken() && !second.is_woken());
    gate.open(1);
    common::eventually("both waiters are woken", || {
        first.is_woken() && second.is_woken()
    })
    .await;
    let a = assert_ready_ok!(first.poll());
    let b = assert_ready_ok!(second.poll());
    // A miss polled again after completion is an error too, not a panic.
    let again = first.poll();
    assert!(
        matches!(
            again,
            std::task::Poll::Ready(Err(hyperion::Error::InvalidArgument(_)))
        ),
        "{again:?}"
    );
    assert!(LayerWeights::ptr_eq(&a, &b));
    m.check(1, &a);
    assert_eq!(model.stats().reads, 1);
}

/// A fetch can be stored in a struct, moved across threads and spawned.
#[test]
fn a_fetch_is_send_static_and_unpin() {
    fn check<T: std::future::Future + Send + Unpin + 'static>() {}
    check::<hyperion::LayerFetch>();
}
