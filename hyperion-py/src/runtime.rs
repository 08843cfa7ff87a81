//! The tokio runtime every model runs on, and waiting on it from Python.

use std::future::Future;
use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Builds the runtime (once per process) and hands it to
/// pyo3-async-runtimes, so that asyncio futures run on it too.
///
/// One runtime for the process, not one per model: a runtime per model
/// costs threads per model. Two workers are plenty: the futures only do
/// bookkeeping (cache, budget, waking readers); the reads run on the
/// io_uring ring thread or tokio's blocking pool. Never shut down: its
/// threads end with the process.
pub fn install() -> PyResult<()> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hyperion-py")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start Hyperion's runtime: {e}")))?;
    let rt = RUNTIME.get_or_init(|| rt);
    // Err only if pyo3-async-runtimes has a runtime already: ours, from an
    // earlier import in this process.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(rt);
    Ok(())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME
        .get()
        .expect("the runtime is built when the module is imported")
}

/// Runs `future` to completion on the runtime, with the GIL released, so
/// that other Python threads (and an event loop in another thread) run
/// meanwhile.
///
/// Python threads are never the runtime's threads (Python code runs on the
/// runtime only through asyncio, which calls back on the loop's thread), so
/// `block_on` cannot be nested inside the runtime here.
pub fn wait<F>(py: Python<'_>, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    py.detach(|| runtime().block_on(future))
}

/// Runs `f` inside the runtime's context, with the GIL held: for the calls
/// that may spawn a task but never wait (`prefetch`).
pub fn enter<T>(f: impl FnOnce() -> T) -> T {
    let _context = runtime().enter();
    f()
}
