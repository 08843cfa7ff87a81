//! Poll-level behaviour of fetch futures, with `tokio-test`.

mod common;

use common::{config, Gate, TestModel, KIB};
use hyperion::{Backend, LayerWeights};
use tokio_test::task;
use tokio_test::{assert_pending, assert_ready_ok};

on_all_backends!(
    a_hit_is_ready_on_the_first_poll,
    waiters_are_woken_when_the_read_lands
);

async fn a_hit_is_ready_on_the_first_poll(backend: Backend) {
    let m = TestModel::new(2, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let cached = model.layer(0).await.unwrap();
    let mut fetch = task::spawn(model.layer(0));
    let w = assert_ready_ok!(fetch.poll());
    assert!(LayerWeights::ptr_eq(&w, &cached));
    assert_eq!(model.stats().reads, 1);
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
    assert!(LayerWeights::ptr_eq(&a, &b));
    m.check(1, &a);
    assert_eq!(model.stats().reads, 1);
}
