//! The fetch path reports itself through `tracing` spans.

mod common;

use std::sync::{Arc, Mutex};

use common::{config, eventually, TestModel, KIB};
use hyperion::{Backend, MappedModel};
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Records the name and fields of every span created.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, _id: &span::Id, _ctx: Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={:?}", field.name(), value));
            }
        }
        let mut fields = Fields(attrs.metadata().name().to_string());
        attrs.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[test]
fn open_fetch_prefetch_evict_and_release_have_spans() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(
        recorder
            .clone()
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = TestModel::new(3, 64 * KIB);
        let model: MappedModel = m.open(config(Backend::IoUring, 2 * 64 * KIB)).await;
        model.layer(0).await.unwrap();
        model.layer(0).await.unwrap();
        let _ = model.prefetch(1);
        eventually("the prefetch lands", || model.descriptor(1).unwrap().cached).await;
        model.layer(2).await.unwrap();
        model.release(2).unwrap();
        let pread: MappedModel = m.open(config(Backend::Pread, 2 * 64 * KIB)).await;
        pread.layer(1).await.unwrap();
    });
    let spans = recorder.0.lock().unwrap().clone();
    let has = |prefix: &str| spans.iter().any(|s| s.starts_with(prefix));
    assert!(has("open path="), "{spans:#?}");
    assert!(
        has("fetch layer=0 hit=false bytes=65536 backend=\"io_uring\""),
        "{spans:#?}"
    );
    assert!(has("fetch layer=0 hit=true"), "{spans:#?}");
    assert!(
        has("fetch layer=1 hit=false bytes=65536 backend=\"pread\""),
        "{spans:#?}"
    );
    assert!(has("prefetch layer=1"), "{spans:#?}");
    assert!(has("evict layer="), "{spans:#?}");
    assert!(has("release layer=2"), "{spans:#?}");

    // On every engine a miss's span names the engine that read the layer
    // (for `Auto`, the one it picked: never "auto").
    for &backend in common::ENGINES {
        recorder.0.lock().unwrap().clear();
        let engine = rt.block_on(async {
            let m = TestModel::new(1, 64 * KIB);
            let model = m.open(config(backend, 64 * KIB)).await;
            common::assert_engine(&model, backend);
            model.layer(0).await.unwrap();
            model.backend()
        });
        let spans = recorder.0.lock().unwrap().clone();
        let want = format!(
            "fetch layer=0 hit=false bytes=65536 backend={:?}",
            engine.name()
        );
        assert!(
            spans.iter().any(|s| s.starts_with(&want)),
            "{backend:?}: no {want:?} in {spans:#?}"
        );
    }
}
