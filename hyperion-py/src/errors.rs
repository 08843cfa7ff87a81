//! Hyperion's errors as Python exceptions.
//!
//! The classes are defined in Python (`hyperion/_errors.py`), where they can
//! inherit from both `HyperionError` and the built-in they refine
//! (`FormatError` is a `ValueError`, `LayerIndexError` an `IndexError` …);
//! this maps each `hyperion::Error` variant to its class by name.

use hyperion::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The exception class for `e`, by its name in `hyperion._errors`.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "HyperionIOError",
        Error::Format { .. } => "FormatError",
        Error::Truncated { .. } => "TruncatedError",
        Error::ChecksumMismatch { .. } => "ChecksumError",
        Error::LayerTooLarge { .. } | Error::BudgetExhausted { .. } => "BudgetError",
        Error::LayerOutOfRange { .. } => "LayerIndexError",
        Error::TensorNotFound { .. } => "TensorNotFoundError",
        Error::Closed { .. } => "ClosedError",
        Error::InvalidArgument(_) | Error::DTypeMismatch { .. } => "InvalidArgumentError",
        Error::PrefetchDisabled { .. } => "PrefetchDisabledError",
        Error::BackendUnavailable { .. } => "BackendUnavailableError",
        _ => "HyperionError",
    }
}

/// The exception class `name` of `hyperion._errors`.
pub fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || py.import("hyperion._errors").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// An exception of class `name` with `message`.
pub fn new_err(py: Python<'_>, name: &str, message: String) -> PyErr {
    match class(py, name) {
        Ok(cls) => PyErr::from_type(cls, message),
        Err(e) => e,
    }
}

/// `e` as an instance of its Python class; the message is the library's,
/// which names the file and, where there is one, the layer or tensor, with
/// the Rust names of settings and handles spelled as Python knows them
/// (`max_cache_size` → `budget`), so the caller can tell what to change.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let mut message = e.to_string();
    for (rust, python) in [
        ("the cache budget (max_cache_size)", "the budget"),
        ("LayerWeights handles", "layers and arrays Python holds"),
        ("drop handles sooner", "drop layers and arrays sooner"),
        ("raise max_cache_size", "raise budget"),
        ("max_cache_size", "budget"),
        ("memory_wait_timeout", "memory_wait"),
        ("prefetch_enabled is false", "prefetch_threads is 0"),
    ] {
        message = message.replace(rust, python);
    }
    new_err(py, class_name(&e), message)
}

/// [`to_py`] from code that does not hold the GIL (asyncio futures).
pub fn to_py_attached(e: Error) -> PyErr {
    Python::attach(|py| to_py(py, e))
}
