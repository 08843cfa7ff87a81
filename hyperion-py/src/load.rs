//! The read behind `hyperion.load_file`: every layer that holds a wanted
//! tensor, read in one pipelined pass and all held, the budget sized to
//! hold exactly them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use futures::StreamExt;
use hyperion::{ColdSharing, Error, MappedModel, MmapConfig};
use pyo3::prelude::*;

use crate::errors::{self, to_py};
use crate::layer::Layer;
use crate::model::parse_backend;
use crate::pool::BufferPool;
use crate::runtime;

/// Layer reads in flight in a shared whole load.
const SHARED_READS_IN_FLIGHT: usize = 6;

/// Reads the layers of `path` that hold the tensors `names` (all when
/// `None`) and returns them; `hyperion.load_file` documents the arguments.
///
/// The arrays over these layers are writable: the model is closed before
/// they are returned, so no one else sees their bytes (safetensors'
/// `load_file` gives writable arrays too). With `share_page_cache`, layers
/// are private copy-on-write views of the page cache's pages
/// (`MmapConfig::share_writable`), writable too: a write copies the page,
/// as in safetensors' torch tensors. With `backend="mmap"` the layers are
/// views of the file's mapping, and read-only.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (path, convert, names, budget, backend, share_page_cache, buffer_pool))]
pub fn load_layers(
    py: Python<'_>,
    path: PathBuf,
    convert: Py<PyAny>,
    names: Option<Vec<String>>,
    budget: Option<u64>,
    backend: &str,
    share_page_cache: bool,
    buffer_pool: Option<PyRef<'_, BufferPool>>,
) -> PyResult<Vec<Layer>> {
    let backend = parse_backend(py, backend)?;
    let defaults = MmapConfig::default();
    let index = py
        .detach(|| hyperion::format::read_index(&path))
        .map_err(|e| to_py(py, e))?;
    let wanted: BTreeSet<usize> = match &names {
        None => (0..index.layers.len()).collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                index.find_tensor(name).map(|t| t.layer).ok_or_else(|| {
                    to_py(
                        py,
                        Error::TensorNotFound {
                            path: path.as_path().into(),
                            name: name.clone(),
                        },
                    )
                })
            })
            .collect::<PyResult<_>>()?,
    };
    let needed: u64 = wanted
        .iter()
        .map(|&l| index.layers[l].footprint(defaults.min_layer_cache_size))
        .sum::<u64>()
        .max(defaults.min_layer_cache_size);
    let budget = match budget {
        Some(b) if b < needed => {
            return Err(errors::new_err(
                py,
                "BudgetError",
                format!(
                "{}: load_file holds every tensor it returns at once: they need {needed} bytes, \
                     more than budget={b}",
                path.display()
            ),
            ))
        }
        Some(b) => b,
        None => needed,
    };
    // A whole load: every layer is shared, cached or not (cold ones read
    // through the page cache), and writable as safetensors' are.
    let config = MmapConfig {
        max_cache_size: budget,
        backend,
        share_page_cache,
        share_cold_layers: if share_page_cache {
            ColdSharing::Always
        } else {
            ColdSharing::Never
        },
        share_writable: share_page_cache,
        buffer_pool: buffer_pool.map(|p| p.inner.clone()),
        // Each shared read waits on its own readahead and then touches its
        // pages (io/shared.rs); more of them in flight keep the disk busy:
        // 6 gave 1,202-1,312 MB/s cold on 2 GiB against 829-1,241 with
        // the default 2, interleaved runs (docs/python.md).
        prefetch_threads: if share_page_cache {
            SHARED_READS_IN_FLIGHT
        } else {
            defaults.prefetch_threads
        },
        ..defaults
    };
    let order: Vec<usize> = wanted.into_iter().collect();
    let loaded = runtime::wait(py, async move {
        let model = MappedModel::open(&path, config).await?;
        let mut layers = model.stream_layers(order, None);
        let mut held = Vec::new();
        while let Some(weights) = layers.next().await {
            held.push(weights?);
        }
        drop(layers);
        model.close();
        Ok::<_, Error>(held)
    })
    .map_err(|e| to_py(py, e))?;
    Ok(loaded
        .into_iter()
        // Read buffers and views made writable (`share_writable`) are
        // writable arrays; views of the mmap engine's mapping are not.
        .map(|w| {
            let writable = w.is_writable();
            Layer::new(w, convert.clone_ref(py), writable)
        })
        .collect())
}
