//! `hyperion inspect`: a model's layers and tensors, as a table or JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use hyperion::ModelIndex;

pub fn run(file: &Path, json: bool) -> anyhow::Result<()> {
    let index = hyperion::format::read_index(file)?;
    let text = if json {
        serde_json::to_string_pretty(&to_json(&index))? + "\n"
    } else {
        table(&index)
    };
    // A reader that stops early (`| head`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn to_json(index: &ModelIndex) -> serde_json::Value {
    let layers: Vec<_> = index
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::json!({
                "index": i,
                "name": l.name,
                "offset": l.offset(),
                "size": l.size,
                "precision": l.precision,
                "checksum": l.checksum.map(|c| format!("{c:016x}")),
                "ranges": l.ranges.iter().map(|r| serde_json::json!({
                    "file": r.file, "offset": r.offset, "len": r.len,
                })).collect::<Vec<_>>(),
                "tensors": l.tensors.iter().map(|t| serde_json::json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "offset": t.offset,
                    "len": t.len,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "format": index.format.name(),
        "files": index.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "layer_count": index.layers.len(),
        "total_bytes": index.layers.iter().map(|l| l.size).sum::<u64>(),
        "layers": layers,
    })
}

fn table(index: &ModelIndex) -> String {
    let mut out = String::new();
    let total: u64 = index.layers.iter().map(|l| l.size).sum();
    let _ = writeln!(
        out,
        "format {}, {} layers, {} bytes of weights",
        index.format.name(),
        index.layers.len(),
        total
    );
    let _ = writeln!(
        out,
        "{:>6}  {:>14}  {:>12}  {:>4}  {:<16}  tensors",
        "layer", "offset", "size", "bits", "checksum"
    );
    for (i, l) in index.layers.iter().enumerate() {
        let checksum = l
            .checksum
            .map_or_else(|| "-".into(), |c| format!("{c:016x}"));
        let _ = writeln!(
            out,
            "{i:>6}  {:>14}  {:>12}  {:>4}  {checksum:<16}  {}",
            l.offset(),
            l.size,
            l.precision,
            l.tensors.len()
        );
        for t in l.tensors.iter() {
            let _ = writeln!(
                out,
                "        {} {} {:?} @{} +{}",
                t.name, t.dtype, t.shape, t.offset, t.len
            );
        }
    }
    out
}
