//! The `hyperion` Python module's native half (`hyperion._native`).
//!
//! The Python package (`python/hyperion/`) is the public face: `load_file`,
//! `open`, the exception classes and the conversion of tensors to numpy
//! arrays or torch tensors. This crate gives it a model, its layers and
//! their tensors' memory:
//!
//! - `runtime.rs`: the one tokio runtime every model runs on, and how a
//!   Python thread waits on it with the GIL released;
//! - `errors.rs`: each `hyperion::Error` as an instance of the matching
//!   Python exception class;
//! - `layer.rs`: `Layer`, a layer's weights as a mapping of tensors, and
//!   `TensorBuffer`, one tensor's bytes exported zero-copy through numpy's
//!   array interface;
//! - `model.rs`: `Model`, a `MappedModel` with blocking and asyncio methods,
//!   and `LayerStream`, a pipelined pass for `for` and `async for`;
//! - `load.rs`: the read behind `load_file`: every layer that holds a wanted
//!   tensor, read ahead in one pass, all held;
//! - `pool.rs`: `BufferPool`, layer buffers kept from one model to the next.

mod errors;
mod layer;
mod load;
mod model;
mod pool;
mod runtime;

use pyo3::prelude::*;

/// The native half of the `hyperion` package: use `hyperion`, not this.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    runtime::install()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::LayerStream>()?;
    m.add_class::<layer::Layer>()?;
    m.add_class::<layer::TensorBuffer>()?;
    m.add_class::<pool::BufferPool>()?;
    m.add_function(wrap_pyfunction!(model::open_model, m)?)?;
    m.add_function(wrap_pyfunction!(load::load_layers, m)?)?;
    Ok(())
}
