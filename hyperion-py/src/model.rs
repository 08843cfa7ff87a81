//! `Model`: an open `MappedModel` for Python, with blocking methods (the GIL
//! released while they wait) and asyncio ones; `LayerStream`: a pipelined
//! pass over layers for `for` and `async for`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use hyperion::{Backend, ColdSharing, Error, LayerWeights, MappedModel, MmapConfig, Prefetch};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{self, to_py, to_py_attached};
use crate::layer::Layer;
use crate::pool::BufferPool;
use crate::runtime;

/// `backend="auto"|"io_uring"|"pread"|"mmap"` as a [`Backend`].
pub fn parse_backend(py: Python<'_>, name: &str) -> PyResult<Backend> {
    Ok(match name {
        "auto" => Backend::Auto,
        "io_uring" => Backend::IoUring,
        "pread" => Backend::Pread,
        "mmap" => Backend::Mmap,
        other => {
            return Err(errors::new_err(
                py,
                "InvalidArgumentError",
                format!(
                    "backend={other:?}: expected \"auto\", \"io_uring\", \"pread\" or \"mmap\""
                ),
            ))
        }
    })
}

/// A layer index from Python: a negative one is out of range, not an
/// `OverflowError`.
fn layer_index(py: Python<'_>, model: &MappedModel, i: i64) -> PyResult<usize> {
    usize::try_from(i).map_err(|_| {
        errors::new_err(
            py,
            "LayerIndexError",
            format!(
                "{}: layer {i} is out of range (the model has {} layers)",
                model.path().display(),
                model.layer_count()
            ),
        )
    })
}

/// Opens a model; `hyperion.open` documents the arguments.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (path, convert, budget, prefetch_threads, adaptive, backend, verify, direct_io, memory_wait, share_page_cache, buffer_pool))]
pub fn open_model(
    py: Python<'_>,
    path: PathBuf,
    convert: Py<PyAny>,
    budget: Option<u64>,
    prefetch_threads: usize,
    adaptive: bool,
    backend: &str,
    verify: bool,
    direct_io: bool,
    memory_wait: f64,
    share_page_cache: bool,
    buffer_pool: Option<PyRef<'_, BufferPool>>,
) -> PyResult<Model> {
    let defaults = MmapConfig::default();
    if !(memory_wait.is_finite() && memory_wait >= 0.0) {
        return Err(errors::new_err(
            py,
            "InvalidArgumentError",
            format!("memory_wait={memory_wait}: expected a number of seconds >= 0"),
        ));
    }
    let config = MmapConfig {
        max_cache_size: budget.unwrap_or(defaults.max_cache_size),
        prefetch_enabled: prefetch_threads > 0,
        prefetch_threads,
        adaptive_caching: adaptive,
        backend: parse_backend(py, backend)?,
        verify_checksums: verify,
        direct_io,
        memory_wait_timeout: Duration::from_secs_f64(memory_wait),
        // Cached layers and cold ones alike (read through the page cache);
        // the arrays are read-only, so the views are too.
        share_page_cache,
        share_cold_layers: if share_page_cache {
            ColdSharing::Always
        } else {
            ColdSharing::Never
        },
        buffer_pool: buffer_pool.map(|p| p.inner.clone()),
        ..defaults
    };
    let model = runtime::wait(py, MappedModel::open(&path, config)).map_err(|e| to_py(py, e))?;
    Ok(Model { model, convert })
}

/// A model opened for layer-by-layer loading within a memory budget.
#[pyclass(frozen, module = "hyperion._native")]
pub struct Model {
    model: MappedModel,
    convert: Py<PyAny>,
}

impl Model {
    fn layer_of(&self, py: Python<'_>, weights: LayerWeights) -> Layer {
        Layer::new(weights, self.convert.clone_ref(py), false)
    }
}

#[pymethods]
impl Model {
    /// The number of layers.
    #[getter]
    fn layer_count(&self) -> usize {
        self.model.layer_count()
    }

    /// The model's file (for a sharded safetensors model, the index or the
    /// directory it was opened by).
    #[getter]
    fn path(&self) -> PathBuf {
        self.model.path().to_path_buf()
    }

    /// The file format: `"tmai"`, `"safetensors"` or `"gguf"`.
    #[getter]
    fn format(&self) -> &'static str {
        self.model.index().format.name()
    }

    /// The engine that reads: `"io_uring"`, `"pread"` or `"mmap"`.
    #[getter]
    fn backend(&self) -> &'static str {
        self.model.backend().name()
    }

    /// The budget: bytes of layer memory the model may hold at once.
    #[getter]
    fn budget(&self) -> u64 {
        self.model.config().max_cache_size
    }

    /// Bytes of layer buffers alive now: cached, held (by arrays and layers
    /// Python still has), or being read. Never more than the budget.
    #[getter]
    fn memory_usage(&self) -> u64 {
        self.model.memory_usage()
    }

    /// Layer `i`'s descriptor as of this call: `offset`, `size`,
    /// `layer_index`, `precision`, `cached`, `is_active`, `priority`,
    /// `last_accessed` (ns since open, 0 if never fetched), `access_count`.
    fn descriptor<'py>(&self, py: Python<'py>, i: i64) -> PyResult<Bound<'py, PyDict>> {
        let i = layer_index(py, &self.model, i)?;
        let d = self.model.descriptor(i).map_err(|e| to_py(py, e))?;
        let out = PyDict::new(py);
        out.set_item("offset", d.offset)?;
        out.set_item("size", d.size)?;
        out.set_item("layer_index", d.layer_index)?;
        out.set_item("precision", d.precision)?;
        out.set_item("cached", d.cached)?;
        out.set_item("is_active", d.is_active)?;
        out.set_item("priority", d.priority)?;
        out.set_item("last_accessed", d.last_accessed)?;
        out.set_item("access_count", d.access_count)?;
        Ok(out)
    }

    /// Every tensor's name, layer by layer, in file order within a layer.
    fn tensor_names(&self) -> Vec<String> {
        self.model
            .index()
            .tensor_names()
            .map(str::to_string)
            .collect()
    }

    /// The index of the layer that holds tensor `name`.
    fn layer_of_tensor(&self, py: Python<'_>, name: &str) -> PyResult<usize> {
        self.model
            .index()
            .find_tensor(name)
            .map(|t| t.layer)
            .ok_or_else(|| {
                to_py(
                    py,
                    Error::TensorNotFound {
                        path: self.model.path().into(),
                        name: name.to_string(),
                    },
                )
            })
    }

    /// Layer `i`'s weights, reading them if they are not cached (once,
    /// however many threads ask). Blocks with the GIL released.
    fn layer(&self, py: Python<'_>, i: i64) -> PyResult<Layer> {
        let i = layer_index(py, &self.model, i)?;
        let fetch = self.model.layer(i);
        let weights = runtime::wait(py, fetch).map_err(|e| to_py(py, e))?;
        Ok(self.layer_of(py, weights))
    }

    /// `await model.layer_async(i)`: layer `i`'s weights, read on Hyperion's
    /// runtime while the event loop runs other coroutines. Cancelling the
    /// awaitable drops the fetch; the read itself finishes and is cached.
    fn layer_async<'py>(&self, py: Python<'py>, i: i64) -> PyResult<Bound<'py, PyAny>> {
        let i = layer_index(py, &self.model, i)?;
        let model = self.model.clone();
        let convert = self.convert.clone_ref(py);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let weights = model.layer(i).await.map_err(to_py_attached)?;
            Ok(Layer::new(weights, convert, false))
        })
    }

    /// The tensor `name` as an array; it keeps its layer's memory alive.
    fn tensor<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let i = self.layer_of_tensor(py, name)?;
        let layer = Bound::new(py, self.layer(py, i as i64)?)?;
        layer.as_any().get_item(name)
    }

    /// Starts reading layer `i` in the background. Returns `"queued"` if a
    /// read was queued, `"present"` if the layer is cached or being read.
    fn prefetch(&self, py: Python<'_>, i: i64) -> PyResult<&'static str> {
        let i = layer_index(py, &self.model, i)?;
        match runtime::enter(|| self.model.prefetch(i)) {
            Ok(Prefetch::Queued) => Ok("queued"),
            Ok(_) => Ok("present"),
            Err(e) => Err(to_py(py, e)),
        }
    }

    /// Drops the cache's copy of layer `i`. Arrays and layers Python still
    /// holds stay valid; the memory returns when the last of them goes.
    fn release(&self, py: Python<'_>, i: i64) -> PyResult<()> {
        let i = layer_index(py, &self.model, i)?;
        self.model.release(i).map_err(|e| to_py(py, e))
    }

    /// Sets layer `i`'s retention priority (lower is evicted first; default 0).
    fn set_priority(&self, py: Python<'_>, i: i64, priority: f32) -> PyResult<()> {
        let i = layer_index(py, &self.model, i)?;
        self.model
            .set_priority(i, priority)
            .map_err(|e| to_py(py, e))
    }

    /// Sets every layer's priority back to 0.
    fn reset_priorities(&self) {
        self.model.reset_priorities()
    }

    /// The model's counters as a dict (hits, misses, reads, bytes_read,
    /// evictions, prefetches, memory_usage, peak_memory …).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.model.stats();
        let d = PyDict::new(py);
        for (k, v) in [
            ("hits", s.hits),
            ("misses", s.misses),
            ("coalesced", s.coalesced),
            ("reads", s.reads),
            ("bytes_read", s.bytes_read),
            ("page_cache_bytes", s.page_cache_bytes),
            ("page_cache_shared_bytes", s.page_cache_shared_bytes),
            ("read_nanos", s.read_nanos),
            ("read_busy_nanos", s.read_busy_nanos),
            ("evictions", s.evictions),
            ("prefetch_issued", s.prefetch_issued),
            ("prefetch_used", s.prefetch_used),
            ("prefetch_wasted", s.prefetch_wasted),
            ("prefetch_skipped", s.prefetch_skipped),
            ("prefetch_peak_in_flight", s.prefetch_peak_in_flight),
            ("memory_usage", s.memory_usage),
            ("peak_memory", s.peak_memory),
            ("pool_idle_bytes", s.pool_idle_bytes),
            ("pool_reuses", s.pool_reuses),
            ("pool_reclaimed", s.pool_reclaimed),
        ] {
            d.set_item(k, v)?;
        }
        d.set_item("hit_rate", s.hit_rate())?;
        Ok(d)
    }

    /// A pipelined pass: layers in `order` (default: all, in order), with
    /// up to `lookahead` of the next ones read ahead. Iterate it with `for`
    /// or `async for`; each item is `(index, layer)`.
    #[pyo3(signature = (order = None, lookahead = None))]
    fn stream(
        &self,
        py: Python<'_>,
        order: Option<Bound<'_, PyAny>>,
        lookahead: Option<usize>,
    ) -> PyResult<LayerStream> {
        let order: Vec<usize> = match order {
            None => (0..self.model.layer_count()).collect(),
            Some(order) => order
                .try_iter()?
                .map(|i| layer_index(py, &self.model, i?.extract::<i64>()?))
                .collect::<PyResult<_>>()?,
        };
        let stream = runtime::enter(|| self.model.stream_layers(order, lookahead)).boxed();
        Ok(LayerStream {
            stream: Arc::new(tokio::sync::Mutex::new(stream)),
            convert: self.convert.clone_ref(py),
        })
    }

    /// `for i, layer in model`: the pass `stream()` gives.
    fn __iter__(&self, py: Python<'_>) -> PyResult<LayerStream> {
        self.stream(py, None, None)
    }

    /// Closes the model: empties the cache and lets go of the files. Layers
    /// and arrays already returned stay valid; later calls raise
    /// `ClosedError`.
    fn close(&self) {
        self.model.clone().close();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<hyperion.Model {:?}: {} {} layers, budget {} bytes, {}>",
            self.model.path(),
            self.model.index().format.name(),
            self.model.layer_count(),
            self.model.config().max_cache_size,
            self.model.backend().name()
        )
    }
}

type Layers = BoxStream<'static, hyperion::Result<LayerWeights>>;

/// `model.stream(...)`: `(index, layer)` pairs, each next layer read ahead
/// while the caller works on this one. Iterate with `for` (blocking, GIL
/// released) or `async for` (on the event loop).
#[pyclass(frozen, module = "hyperion._native")]
pub struct LayerStream {
    stream: Arc<tokio::sync::Mutex<Layers>>,
    convert: Py<PyAny>,
}

#[pymethods]
impl LayerStream {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<(usize, Layer)>> {
        let stream = Arc::clone(&self.stream);
        let next = runtime::wait(py, async move { stream.lock().await.next().await });
        match next {
            None => Ok(None),
            Some(Ok(w)) => Ok(Some((
                w.layer_index(),
                Layer::new(w, self.convert.clone_ref(py), false),
            ))),
            Some(Err(e)) => Err(to_py(py, e)),
        }
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = Arc::clone(&self.stream);
        let convert = self.convert.clone_ref(py);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            match stream.lock().await.next().await {
                None => Err(PyStopAsyncIteration::new_err(())),
                Some(Ok(w)) => Ok((w.layer_index(), Layer::new(w, convert, false))),
                Some(Err(e)) => Err(to_py_attached(e)),
            }
        })
    }
}
