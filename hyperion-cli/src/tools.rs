//! `hyperion verify`, `hyperion tensor` and `hyperion convert`: tools that
//! read models through the loader itself, so they exercise what users get.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use hyperion::format::tmai::{LayerDecl, TensorDecl, TmaiWriter};
use hyperion::{MappedModel, MmapConfig};
use indicatif::{ProgressBar, ProgressStyle};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A budget for streaming `index`: room for the largest layer plus read-ahead,
/// at least 64 MiB; the tools never need the whole model in memory.
fn streaming_config(index: &hyperion::ModelIndex) -> MmapConfig {
    let largest = index
        .layers
        .iter()
        .map(|l| l.footprint(4096))
        .max()
        .unwrap_or(0);
    MmapConfig {
        max_cache_size: (largest * 3).max(64 << 20),
        ..MmapConfig::default()
    }
}

fn progress(len: usize, what: &str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} layers {{binary_bytes_per_sec}}"
    ))?);
    Ok(bar)
}

/// Reads every layer through the loader and checks it: checksums for
/// `.tmai`, structure for the others. Reports every bad layer, not just the first.
pub fn verify(path: &Path) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let index = hyperion::format::read_index(path)?;
        let model = MappedModel::open(path, streaming_config(&index)).await?;
        let n = model.layer_count();
        let bar = progress(n, "verifying")?;
        let started = Instant::now();
        let (mut bytes, mut bad) = (0u64, 0usize);
        let mut layers = model.stream_layers(0..n, None);
        let mut i = 0;
        while let Some(layer) = layers.next().await {
            match layer {
                Ok(w) => {
                    let spec = &index.layers[i];
                    let tensor_bytes: u64 = w.tensors().map(|t| t.bytes().len() as u64).sum();
                    let declared: u64 = spec.tensors.iter().map(|t| t.len).sum();
                    if w.len() as u64 != spec.size || tensor_bytes != declared {
                        bar.suspend(|| {
                            eprintln!("layer {i}: {} bytes read, {} expected", w.len(), spec.size)
                        });
                        bad += 1;
                    }
                    bytes += w.len() as u64;
                }
                Err(e) => {
                    bar.suspend(|| eprintln!("layer {i}: {e}"));
                    bad += 1;
                }
            }
            bar.set_position(i as u64 + 1);
            i += 1;
        }
        bar.finish_and_clear();
        let checks = if index.format == hyperion::FileFormat::Tmai {
            "checksums and structure"
        } else {
            "structure"
        };
        if bad > 0 {
            anyhow::bail!(
                "{}: {bad} of {n} layers failed verification",
                path.display()
            );
        }
        println!(
            "{}: ok — {n} layers, {bytes} bytes, {checks} verified in {:.2} s",
            path.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// Writes the exact bytes of tensor `name`, read through the loader, to stdout.
pub fn tensor(path: &Path, name: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let index = hyperion::format::read_index(path)?;
        let layer = index
            .layers
            .iter()
            .position(|l| l.tensors.iter().any(|t| t.name == name))
            .ok_or_else(|| anyhow::anyhow!("{}: no tensor named {name:?}", path.display()))?;
        let model = MappedModel::open(path, streaming_config(&index)).await?;
        let weights = model.layer(layer).await?;
        let tensor = weights
            .tensor(name)
            .expect("the index lists it in this layer");
        let mut out = std::io::stdout().lock();
        out.write_all(tensor.bytes())?;
        out.flush()?;
        Ok(())
    })
}

/// Converts any model Hyperion reads into `.tmai`, streaming layer by layer
/// within a bounded budget; tensors keep their names, dtypes, shapes and
/// exact bytes, and each layer of the source is a layer of the result.
pub fn convert(input: &Path, output: &Path) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let index = hyperion::format::read_index(input)?;
        let decls = index
            .layers
            .iter()
            .map(|l| LayerDecl {
                tensors: l
                    .tensors
                    .iter()
                    .map(|t| TensorDecl::new(t.name.clone(), t.dtype, t.shape.clone()))
                    .collect(),
                precision: Some(l.precision.clamp(1, 64)),
            })
            .collect();
        let mut writer = TmaiWriter::create(output, decls)?;
        let model = MappedModel::open(input, streaming_config(&index)).await?;
        let n = model.layer_count();
        let bar = progress(n, "converting")?;
        let started = Instant::now();
        let mut layers = model.stream_layers(0..n, None);
        let mut bytes = 0u64;
        while let Some(layer) = layers.next().await {
            let layer = layer?;
            for t in layer.tensors() {
                writer.write(t.bytes())?;
                bytes += t.bytes().len() as u64;
            }
            bar.inc(1);
        }
        writer.finish()?;
        bar.finish_and_clear();
        println!(
            "{} -> {}: {n} layers, {bytes} bytes of tensors in {:.2} s (peak memory {} MiB)",
            input.display(),
            output.display(),
            started.elapsed().as_secs_f64(),
            model.stats().peak_memory >> 20
        );
        Ok(())
    })
}
