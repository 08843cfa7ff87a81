//! A layer's weights as a Python mapping of tensors, and each tensor's bytes
//! exported without a copy.
//!
//! Under the stable ABI of CPython 3.10 an extension type cannot implement
//! the buffer protocol (it joined the limited API in 3.11), so a tensor is
//! exported through numpy's array interface instead: a [`TensorBuffer`]
//! holds the layer's [`LayerWeights`] and publishes the address, dtype and
//! shape of one tensor in `__array_interface__`; `numpy.asarray(buffer)`
//! makes an array over that memory whose `base` is the buffer. The array
//! keeps the buffer alive, the buffer keeps the weights alive, and the
//! weights keep the bytes alive whatever the cache does: a release, an
//! eviction or closing the model only drops the cache's own handle.

use hyperion::{DType, LayerWeights, TensorView};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::errors;

/// How numpy sees a tensor: its typestr and shape. Types numpy has no
/// dtype for are given as raw bits: `BF16` as `uint16`, 8-bit floats as
/// `uint8`, both in the tensor's shape; packed sub-byte floats and
/// block-quantized GGML types as `uint8` bytes, the innermost dimension
/// counted in bytes (what gguf-py's reader gives for quantized tensors).
fn numpy_view(t: &TensorView<'_>) -> (&'static str, Vec<u64>) {
    let shape = t.shape().to_vec();
    let typestr = match t.dtype() {
        DType::U8 => "|u1",
        DType::I8 => "|i1",
        DType::U16 | DType::BF16 => "<u2",
        DType::I16 => "<i2",
        DType::U32 => "<u4",
        DType::I32 => "<i4",
        DType::U64 => "<u8",
        DType::I64 => "<i8",
        DType::F16 => "<f2",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::Bool => "|b1",
        DType::C64 => "<c8",
        DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0 | DType::F8E4M3Fnuz | DType::F8E5M2Fnuz => {
            "|u1"
        }
        _ => return ("|u1", byte_shape(t)),
    };
    (typestr, shape)
}

/// The shape of a tensor of packed or block-quantized elements as bytes:
/// the innermost dimension in bytes when the rows are whole bytes, else one
/// flat run of bytes.
fn byte_shape(t: &TensorView<'_>) -> Vec<u64> {
    let len = t.bytes().len() as u64;
    let Some((&inner, outer)) = t.shape().split_last() else {
        return vec![len];
    };
    let rows: u64 = outer.iter().product();
    if rows > 0 && inner > 0 && len % rows == 0 {
        let mut shape = outer.to_vec();
        shape.push(len / rows);
        return shape;
    }
    vec![len]
}

/// The item size of a numpy typestr (`<f4` → 4).
fn item_size(typestr: &str) -> u64 {
    typestr[2..].parse().unwrap_or(1)
}

/// One tensor's bytes, for numpy: `numpy.asarray(buffer)` is an array over
/// the layer's memory (no copy) that keeps the layer alive.
#[pyclass(frozen, module = "hyperion._native")]
pub struct TensorBuffer {
    weights: LayerWeights,
    position: usize,
    writable: bool,
}

impl TensorBuffer {
    fn view(&self) -> TensorView<'_> {
        // `position` comes from the same layer's tensor list.
        self.weights
            .tensor_at(self.position)
            .expect("a TensorBuffer's position is inside its layer")
    }
}

#[pymethods]
impl TensorBuffer {
    /// numpy's array interface (version 3) for the tensor's bytes.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.view();
        let bytes = t.bytes();
        let (mut typestr, mut shape) = numpy_view(&t);
        // The format readers check that a tensor's length is its dtype's
        // size of its shape; should that not hold, give numpy the bytes as
        // they are rather than a shape that reaches past them.
        let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if elements.and_then(|n| n.checked_mul(item_size(typestr))) != Some(bytes.len() as u64) {
            typestr = "|u1";
            shape = vec![bytes.len() as u64];
        }
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("typestr", typestr)?;
        d.set_item("shape", PyTuple::new(py, shape)?)?;
        d.set_item("data", (bytes.as_ptr() as usize, !self.writable))?;
        d.set_item("strides", py.None())?;
        Ok(d)
    }

    /// The tensor's name in the file.
    #[getter]
    fn name(&self) -> String {
        self.view().name().to_string()
    }

    /// The tensor's dtype as the file names it (`F32`, `BF16`, `Q4_K` …).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.view().dtype().name()
    }

    /// The tensor's shape as the file gives it, outermost dimension first
    /// (for GGML block types, in elements, not bytes).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.view().shape())
    }

    fn __repr__(&self) -> String {
        let t = self.view();
        format!(
            "TensorBuffer({:?}, {}, {:?}, layer {})",
            t.name(),
            t.dtype(),
            t.shape(),
            self.weights.layer_index()
        )
    }
}

/// One layer's weights: a read-only mapping from tensor name to array.
///
/// The arrays share the layer's memory (no copy) and keep it alive: they
/// stay valid after the layer is released or evicted and after the model is
/// closed. They are read-only views of bytes the cache shares with every
/// other fetch of the layer.
#[pyclass(frozen, module = "hyperion._native")]
pub struct Layer {
    weights: LayerWeights,
    /// `hyperion._arrays.to_numpy` or `to_torch`: a `TensorBuffer` to the
    /// caller's framework.
    convert: Py<PyAny>,
    writable: bool,
}

impl Layer {
    pub fn new(weights: LayerWeights, convert: Py<PyAny>, writable: bool) -> Self {
        Layer {
            weights,
            convert,
            writable,
        }
    }

    fn buffer(&self, position: usize) -> TensorBuffer {
        TensorBuffer {
            weights: self.weights.clone(),
            position,
            writable: self.writable,
        }
    }

    fn array<'py>(&self, py: Python<'py>, position: usize) -> PyResult<Bound<'py, PyAny>> {
        let buffer = Bound::new(py, self.buffer(position))?;
        self.convert.bind(py).call1((buffer,))
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.weights.tensors().position(|t| t.name() == name)
    }

    /// The position of tensor `name`, or `TensorNotFoundError`.
    fn find(&self, py: Python<'_>, name: &str) -> PyResult<usize> {
        self.position(name).ok_or_else(|| {
            errors::new_err(
                py,
                "TensorNotFoundError",
                format!(
                    "layer {} has no tensor named {name:?}",
                    self.weights.layer_index()
                ),
            )
        })
    }

    fn names(&self) -> Vec<&str> {
        self.weights.tensors().map(|t| t.name()).collect()
    }
}

#[pymethods]
impl Layer {
    /// The tensor `name` as an array over the layer's memory.
    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let p = self.find(py, name)?;
        self.array(py, p)
    }

    /// The tensor `name`, or `default` if the layer has none of that name.
    #[pyo3(signature = (name, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.position(name) {
            Some(p) => self.array(py, p),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    fn __contains__(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    fn __len__(&self) -> usize {
        self.weights.tensors().len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(PyList::new(py, self.names())?.try_iter()?.into_any())
    }

    /// The tensor names, in file order.
    fn keys(&self) -> Vec<&str> {
        self.names()
    }

    /// The tensors as arrays, in file order.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        (0..self.weights.tensors().len())
            .map(|p| self.array(py, p))
            .collect()
    }

    /// `(name, array)` pairs, in file order.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Vec<(&str, Bound<'py, PyAny>)>> {
        self.weights
            .tensors()
            .enumerate()
            .map(|(p, t)| Ok((t.name(), self.array(py, p)?)))
            .collect()
    }

    /// Each tensor's dtype as the file names it (`F32`, `BF16`, `Q4_K` …):
    /// the side table for tensors given as raw bytes or bits.
    #[getter]
    fn dtypes(&self) -> Vec<(&str, &'static str)> {
        self.weights
            .tensors()
            .map(|t| (t.name(), t.dtype().name()))
            .collect()
    }

    /// The tensor `name`'s raw bytes as a `TensorBuffer` (for
    /// `numpy.asarray`), whatever the framework.
    fn buffer_of(&self, py: Python<'_>, name: &str) -> PyResult<TensorBuffer> {
        Ok(self.buffer(self.find(py, name)?))
    }

    /// The layer's index in the model.
    #[getter]
    fn index(&self) -> usize {
        self.weights.layer_index()
    }

    /// Bytes of the layer's weights (all its tensors, and any padding
    /// between them).
    #[getter]
    fn nbytes(&self) -> usize {
        self.weights.len()
    }

    /// Whether the layer's bytes are a view of a mapping of the file (the
    /// page cache's own pages, `share_page_cache=True`, or
    /// `backend="mmap"`) rather than a buffer they were read into.
    #[getter]
    fn mapped(&self) -> bool {
        self.weights.is_mapped()
    }

    /// The address of the layer's first byte: every tensor array of the
    /// layer points inside `[address, address + nbytes)`.
    #[getter]
    fn address(&self) -> usize {
        self.weights.as_ptr() as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "<hyperion.Layer {} with {} tensors, {} bytes>",
            self.weights.layer_index(),
            self.weights.tensors().len(),
            self.weights.len()
        )
    }
}
