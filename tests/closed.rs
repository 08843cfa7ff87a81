//! `MappedModel::closed`: resolves once the model is closed and every byte
//! of layer memory it held is freed — not before, whatever still holds it
//! (a caller's handle, a read in flight).

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use common::{config, Gate, TestModel, KIB};
use futures::task::noop_waker_ref;
use hyperion::Backend;

fn is_pending(f: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    f.poll(&mut Context::from_waker(noop_waker_ref()))
        .is_pending()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_waits_for_the_model_to_close_and_for_held_handles() {
    let m = TestModel::new(4, 64 * KIB);
    let model = m.open(config(Backend::Auto, 1 << 20)).await;
    let held = model.layer(1).await.unwrap();
    model.layer(2).await.unwrap(); // cached, not held
    let watcher = model.clone();
    let mut closed = pin!(watcher.closed());
    assert!(is_pending(closed.as_mut()), "not closed yet");
    model.close();
    // The cache and the pool are emptied, but a handle still holds layer 1.
    assert!(watcher.memory_usage() > 0);
    assert!(is_pending(closed.as_mut()), "a handle still holds memory");
    m.check(1, &held);
    drop(held);
    tokio::time::timeout(std::time::Duration::from_secs(10), closed)
        .await
        .expect("closed() resolves once the last handle drops");
    let s = watcher.stats();
    assert_eq!((watcher.memory_usage(), s.pool_idle_bytes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_waits_for_a_read_in_flight() {
    let m = TestModel::new(2, 64 * KIB);
    let model = m.open(config(Backend::Auto, 1 << 20)).await;
    let gate = Gate::closed();
    gate.install(&model);
    // A prefetch: the read is the only holder of its memory (a fetch's
    // caller would hold the layer it returns).
    model.prefetch(0).unwrap();
    gate.wait_entered(1).await;
    let watcher = model.clone();
    model.close();
    let mut closed = pin!(watcher.closed());
    // The read holds its reserved memory until it finishes.
    assert!(watcher.memory_usage() > 0);
    assert!(matches!(
        closed
            .as_mut()
            .poll(&mut Context::from_waker(noop_waker_ref())),
        Poll::Pending
    ));
    gate.open(1);
    tokio::time::timeout(std::time::Duration::from_secs(10), closed)
        .await
        .expect("closed() resolves once the read lands and is dropped");
    assert_eq!(watcher.memory_usage(), 0);
}
