//! A file truncated while a model is open and layers are being read: with
//! `Backend::Auto` (io_uring here) every fetch yields exact bytes or a typed
//! error, and the process never gets SIGBUS (which would kill this test).
//! The mmap backend cannot promise that for a truncation racing a read; see
//! docs/architecture.md.

mod common;

use std::time::Duration;

use common::{config, TestModel, KIB};
use hyperion::{Backend, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_during_reads_is_an_error_never_a_crash() {
    let layers = 24;
    let m = TestModel::new(layers, 256 * KIB);
    let pristine = std::fs::read(&m.path).unwrap();
    let (mut exact, mut truncated) = (0, 0);
    for round in 0..10u64 {
        std::fs::write(&m.path, &pristine).unwrap();
        let model = m.open(config(Backend::Auto, 64 << 20)).await;
        assert_eq!(model.backend(), Backend::IoUring);
        let fetches: Vec<_> = (0..layers)
            .map(|i| {
                let model = model.clone();
                tokio::spawn(async move { model.layer(i).await.map(|w| w.to_vec()) })
            })
            .collect();
        // Cut the file somewhere in its layers while the reads run.
        tokio::time::sleep(Duration::from_micros(200 * round)).await;
        let keep = pristine.len() as u64 * (round + 1) / 12;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&m.path)
            .unwrap()
            .set_len(keep)
            .unwrap();
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
                Err(e) => panic!("layer {i}: unexpected error {e}"),
            }
        }
        model.close();
    }
    assert!(
        truncated > 0 && exact > 0,
        "{exact} exact, {truncated} truncated"
    );
}
