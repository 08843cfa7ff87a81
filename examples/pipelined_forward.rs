//! A forward pass over a model larger than the cache budget, overlapping
//! weight I/O with real arithmetic.
//!
//! It writes a synthetic model (or takes yours), calibrates the per-layer
//! compute to take about as long as reading a layer cold, then streams the
//! model through `stream_layers` and prints I/O time, compute time, wall time
//! and the overlap ratio `wall / max(I/O, compute)`: 1.0 is perfect overlap,
//! 2.0 is none.
//!
//! ```sh
//! cargo run --release --example pipelined_forward [-- MODEL.tmai BUDGET_MIB]
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use hyperion::{MappedModel, MmapConfig};

const WIDTH: usize = 256;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = tempfile::tempdir_in(".")?;
    let path = match args.next() {
        Some(p) => p.into(),
        None => {
            let path = dir.path().join("forward.tmai");
            let spec = hyperion::synth::SynthSpec {
                layers: 96,
                layer_size: 8 << 20,
                ..Default::default()
            };
            println!(
                "writing a {} MiB synthetic model",
                (spec.layers as u64 * spec.layer_size) >> 20
            );
            hyperion::synth::write(&path, &spec)?;
            path
        }
    };
    let budget: u64 = args.next().map_or(Ok(64), |s| s.parse())? << 20;
    let config = MmapConfig {
        max_cache_size: budget,
        ..MmapConfig::default()
    };

    // Calibrate: cold reads of a few layers against one pass of arithmetic.
    hyperion::pagecache::drop_cached_pages(&path)?;
    let model = MappedModel::open(&path, config.clone()).await?;
    const SAMPLE: usize = 4;
    let mut first = None;
    for i in 0..SAMPLE.min(model.layer_count()) {
        first = Some(model.layer(i).await?);
    }
    let first = first.ok_or("the model has no layers")?;
    let read_per_layer = Duration::from_nanos(model.stats().read_busy_nanos / SAMPLE as u64);
    let weights = f32_weights(&first);
    let t = Instant::now();
    std::hint::black_box(matvec(weights, &vec![0.01; WIDTH]));
    let one_pass = t.elapsed().max(Duration::from_micros(1));
    let reps = (read_per_layer.as_secs_f64() / one_pass.as_secs_f64())
        .round()
        .max(1.0) as usize;
    drop(first);
    model.close();
    println!(
        "calibration: a cold layer read takes {:.2} ms (mean of {SAMPLE}), one pass of compute {:.2} ms -> {reps} passes per layer",
        read_per_layer.as_secs_f64() * 1e3,
        one_pass.as_secs_f64() * 1e3
    );

    // The pipelined pass, cold.
    hyperion::pagecache::drop_cached_pages(&path)?;
    let model = MappedModel::open(&path, config).await?;
    let n = model.layer_count();
    let mut x = vec![1.0f32 / WIDTH as f32; WIDTH];
    let mut compute = Duration::ZERO;
    let start = Instant::now();
    let mut layers = model.stream_layers(0..n, None);
    while let Some(layer) = layers.next().await {
        let layer = layer?;
        let t = Instant::now();
        let w = f32_weights(&layer);
        for _ in 0..reps {
            let y = matvec(w, &x);
            x = y.iter().map(|v| v.tanh()).collect();
        }
        compute += t.elapsed();
    }
    let wall = start.elapsed();
    let stats = model.stats();
    let io = Duration::from_nanos(stats.read_busy_nanos);
    let ratio = wall.as_secs_f64() / io.max(compute).as_secs_f64();
    println!(
        "{n} layers, {} MiB, budget {} MiB, lookahead {}",
        stats.bytes_read >> 20,
        budget >> 20,
        model.default_lookahead()
    );
    println!(
        "I/O {:.3} s   compute {:.3} s   wall {:.3} s   overlap ratio wall/max(I/O, compute) = {ratio:.3}",
        io.as_secs_f64(),
        compute.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "peak memory {:.1} MiB of {} MiB; activation checksum {:.6}",
        stats.peak_memory as f64 / (1 << 20) as f64,
        budget >> 20,
        x.iter().sum::<f32>()
    );
    Ok(())
}

/// The layer's weights as one `[rows, 256]` f32 matrix (the first tensor).
fn f32_weights(layer: &hyperion::LayerWeights) -> &[f32] {
    layer
        .tensors()
        .next()
        .and_then(|t| t.as_f32())
        .expect("a layer of f32 weights")
}

/// `y = W·x` folded back to `x.len()` outputs.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    let mut acc = vec![0.0f32; x.len()];
    for (r, row) in w.chunks_exact(x.len()).enumerate() {
        let mut lanes = [0.0f32; 8];
        for (ws, xs) in row.chunks_exact(8).zip(x.chunks_exact(8)) {
            for k in 0..8 {
                lanes[k] += ws[k] * xs[k];
            }
        }
        acc[r % x.len()] += lanes.iter().sum::<f32>();
    }
    acc
}
