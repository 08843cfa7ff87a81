//! `BufferPool`: layer buffers kept from one model to the next
//! (`hyperion::BufferPool`), for a process that opens model after model.

use pyo3::prelude::*;

/// Layer buffers kept from one model to the next.
///
/// Pass one pool as ``buffer_pool=`` to every ``hyperion.open`` (or
/// ``load_file``) of a process that opens model after model: when a model
/// closes, or when the last array over a layer of a closed model goes, its
/// buffer is kept in the pool (up to ``max_bytes``) instead of given back to
/// the system, and the next model's reads take buffers of the right size
/// from the pool before they allocate new memory, whose first touch is
/// slow. The memory a pool holds is resident and counted in no model's
/// budget; ``retained_bytes`` says how much, ``clear()`` frees it.
#[pyclass(frozen, module = "hyperion._native")]
pub struct BufferPool {
    pub(crate) inner: hyperion::BufferPool,
}

#[pymethods]
impl BufferPool {
    #[new]
    fn new(max_bytes: u64) -> Self {
        BufferPool {
            inner: hyperion::BufferPool::new(max_bytes),
        }
    }

    /// The most bytes the pool keeps.
    #[getter]
    fn max_bytes(&self) -> u64 {
        self.inner.max_bytes()
    }

    /// Bytes of buffers the pool holds now.
    #[getter]
    fn retained_bytes(&self) -> u64 {
        self.inner.retained_bytes()
    }

    /// How many buffers models have taken over from the pool.
    #[getter]
    fn reuses(&self) -> u64 {
        self.inner.reuses()
    }

    /// Frees every buffer the pool holds.
    fn clear(&self) {
        self.inner.clear();
    }

    fn __repr__(&self) -> String {
        format!(
            "BufferPool(max_bytes={}, retained_bytes={}, reuses={})",
            self.inner.max_bytes(),
            self.inner.retained_bytes(),
            self.inner.reuses()
        )
    }
}
