//! What a fetch returns: a layer's bytes, kept alive while held, with typed
//! views of the tensors inside.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::budget::Budget;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::index::TensorSpec;
use crate::io::bytes::{LayerBytes, Storage};
use crate::meta::LayerMeta;

/// A layer's weights: its exact bytes, and the tensors inside them.
///
/// Cloning is cheap (a reference count). The bytes stay valid for as long as
/// any clone is alive, whatever the cache does meanwhile: a release or an
/// eviction only drops the cache's own handle. The memory is returned to the
/// budget when the last handle drops.
///
/// # Examples
///
/// Summing a layer's `f32` weights:
///
/// ```no_run
/// # async fn demo(model: hyperion::MappedModel) -> hyperion::Result<()> {
/// let weights = model.layer(0).await?;
/// for tensor in weights.tensors() {
///     if let Some(values) = tensor.as_f32() {
///         println!("{}: sum {}", tensor.name(), values.iter().sum::<f32>());
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct LayerWeights {
    /// Always `Some` until `drop` takes it, so the budget is told about the
    /// drop only after the reference count has fallen.
    inner: Option<Arc<LayerData>>,
}

struct LayerData {
    bytes: LayerBytes,
    budget: Arc<Budget>,
    layer: usize,
    tensors: Arc<[TensorSpec]>,
    /// Counts live buffers per layer, for `LayerDescriptor::is_active`.
    metas: Arc<[LayerMeta]>,
}

impl Drop for LayerData {
    fn drop(&mut self) {
        let others = self.metas[self.layer].live.fetch_sub(1, Ordering::Relaxed) - 1;
        if let Storage::Mapped(view) = &mut self.bytes.storage {
            // A re-read of this layer maps the same pages: leave them be.
            view.keep_pages = others > 0;
        }
    }
}

impl LayerWeights {
    pub(crate) fn new(
        bytes: LayerBytes,
        budget: Arc<Budget>,
        layer: usize,
        tensors: Arc<[TensorSpec]>,
        metas: Arc<[LayerMeta]>,
    ) -> Self {
        metas[layer].live.fetch_add(1, Ordering::Relaxed);
        LayerWeights {
            inner: Some(Arc::new(LayerData {
                bytes,
                budget,
                layer,
                tensors,
                metas,
            })),
        }
    }

    fn data(&self) -> &Arc<LayerData> {
        self.inner.as_ref().expect("LayerWeights used after drop")
    }

    /// The index of the layer these weights belong to.
    pub fn layer_index(&self) -> usize {
        self.data().layer
    }

    /// The layer's bytes (also available through `Deref`).
    pub fn bytes(&self) -> &[u8] {
        self.data().bytes.as_slice()
    }

    /// Whether the bytes are a view into a memory mapping of the file (the mmap
    /// backend) rather than a buffer they were read into.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data().bytes.storage, Storage::Mapped(_))
    }

    /// Whether the memory under the bytes may be written without a fault:
    /// `true` for a buffer the layer was read into, and for a view of the
    /// page cache made writable ([`MmapConfig::share_writable`]: a private
    /// mapping, so a write copies the page and never reaches the file);
    /// `false` for a view of a read-only mapping (the mmap backend, or a
    /// shared view without `share_writable`). This crate never writes
    /// through it; bindings that hand the memory to another language (the
    /// Python package's writable arrays) ask it before they do.
    ///
    /// [`MmapConfig::share_writable`]: crate::MmapConfig::share_writable
    pub fn is_writable(&self) -> bool {
        match &self.data().bytes.storage {
            Storage::Heap(_) => true,
            Storage::Mapped(view) => view.is_writable(),
        }
    }

    /// The tensor called `name`, if the layer has one.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensors().find(|t| t.name() == name)
    }

    /// The layer's tensors, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
        let bytes = self.bytes();
        self.data()
            .tensors
            .iter()
            .map(move |spec| TensorView::of(spec, bytes))
    }

    /// The tensor at `position` in [`tensors`](Self::tensors) (what
    /// [`ModelIndex::find_tensor`](crate::ModelIndex::find_tensor) returns
    /// as [`TensorLocation::position`](crate::TensorLocation::position)), in
    /// constant time.
    pub fn tensor_at(&self, position: usize) -> Option<TensorView<'_>> {
        let spec = self.data().tensors.get(position)?;
        Some(TensorView::of(spec, self.bytes()))
    }

    /// Whether `a` and `b` share one buffer (one read).
    pub fn ptr_eq(a: &LayerWeights, b: &LayerWeights) -> bool {
        Arc::ptr_eq(a.data(), b.data())
    }

    /// How many handles to this buffer exist (the cache's included).
    pub(crate) fn handle_count(&self) -> usize {
        Arc::strong_count(self.data())
    }
}

impl Clone for LayerWeights {
    fn clone(&self) -> Self {
        LayerWeights {
            inner: Some(Arc::clone(self.data())),
        }
    }
}

impl Drop for LayerWeights {
    fn drop(&mut self) {
        if let Some(data) = self.inner.take() {
            // Only when a fetch waits for memory is the budget told, after the
            // count has fallen; otherwise dropping a handle costs one atomic
            // decrement. (See `Budget::handle_dropped` for the narrow race.)
            let notify = data.budget.has_waiters().then(|| Arc::clone(&data.budget));
            drop(data);
            if let Some(budget) = notify {
                budget.handle_dropped();
            }
        }
    }
}

impl Deref for LayerWeights {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsRef<[u8]> for LayerWeights {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for LayerWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerWeights")
            .field("layer", &self.data().layer)
            .field("len", &self.data().bytes.len)
            .field("tensors", &self.data().tensors.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// A tensor inside a [`LayerWeights`]: name, dtype, shape and exact bytes.
///
/// Reading the elements:
///
/// | method | copies | fails when |
/// | --- | --- | --- |
/// | [`bytes`](Self::bytes) | never | never |
/// | [`as_slice`](Self::as_slice), [`as_f32`](Self::as_f32), [`as_f16`](Self::as_f16), [`as_bf16`](Self::as_bf16) | never | wrong type, or bytes misaligned for it (`None`) |
/// | [`as_slice_or_copy`](Self::as_slice_or_copy) | only if misaligned | wrong type ([`Error::DTypeMismatch`](Error::DTypeMismatch)) |
/// | [`to_vec`](Self::to_vec) | always | wrong type ([`Error::DTypeMismatch`](Error::DTypeMismatch)) |
/// | [`to_f32_vec`](Self::to_f32_vec) | always, converting | not `F16`, `BF16`, `F32` or `F64` ([`Error::DTypeMismatch`](Error::DTypeMismatch)) |
///
/// Tensors of `.tmai` files are aligned (to 64 bytes), so the zero-copy
/// views always work on them. Tensors of safetensors and GGUF files lie
/// where the file put them inside their layer's bytes, which can be
/// misaligned for their type (a safetensors header of any length shifts the
/// whole data section; GGUF allows an alignment of 1): there the zero-copy
/// views give `None`, and the copying methods work.
///
/// Elements are stored little-endian. `as_slice`, `as_slice_or_copy` and
/// `to_vec` reinterpret the bytes in the host's byte order, so they are only
/// meaningful on little-endian hosts (every host Hyperion runs on today);
/// `to_f32_vec` decodes little-endian on any host.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    spec: &'a TensorSpec,
    bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// The view of `spec` inside its layer's `bytes`.
    fn of(spec: &'a TensorSpec, layer_bytes: &'a [u8]) -> Self {
        TensorView {
            spec,
            // The format readers checked that every tensor lies inside its layer.
            bytes: &layer_bytes[spec.offset as usize..(spec.offset + spec.len) as usize],
        }
    }

    /// The tensor's name in the file.
    pub fn name(&self) -> &'a str {
        &self.spec.name
    }

    /// Its element type.
    pub fn dtype(&self) -> DType {
        self.spec.dtype
    }

    /// Its shape, outermost dimension first.
    pub fn shape(&self) -> &'a [u64] {
        &self.spec.shape
    }

    /// Its exact bytes, as stored in the file (little-endian).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The elements as `T`, without copying: `None` if `T`'s size is not the
    /// dtype's element size, or if the bytes are not aligned for `T`. They
    /// are for `.tmai` files, whose writer aligns tensors to 64 bytes; they
    /// may not be for safetensors or GGUF files, where
    /// [`as_slice_or_copy`](Self::as_slice_or_copy) works whatever the
    /// alignment. Only the size is checked against the dtype, so an `F16`
    /// tensor reads as `u16` too.
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Option<&'a [T]> {
        if Some(std::mem::size_of::<T>() as u64) != self.spec.dtype.element_size() {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// The elements as `f32`, without copying, if the dtype is `F32` and the
    /// bytes are aligned (see [`as_slice`](Self::as_slice)).
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.plain_dtype() != DType::F32 {
            return None;
        }
        self.as_slice()
    }

    /// The elements as [`half::f16`], without copying, if the dtype is `F16`
    /// and the bytes are aligned (see [`as_slice`](Self::as_slice)).
    pub fn as_f16(&self) -> Option<&'a [half::f16]> {
        if self.plain_dtype() != DType::F16 {
            return None;
        }
        self.as_slice()
    }

    /// The elements as [`half::bf16`], without copying, if the dtype is
    /// `BF16` and the bytes are aligned (see [`as_slice`](Self::as_slice)).
    pub fn as_bf16(&self) -> Option<&'a [half::bf16]> {
        if self.plain_dtype() != DType::BF16 {
            return None;
        }
        self.as_slice()
    }

    /// The elements as `T`: borrowed from the layer's bytes (zero-copy) when
    /// they are aligned for `T`, copied into a new vector when they are not.
    ///
    /// # Errors
    ///
    /// [`Error::DTypeMismatch`](Error::DTypeMismatch) if `T`'s size is not the dtype's element size
    /// (or the dtype has none: packed sub-byte floats, block-quantized GGML
    /// types). As with [`as_slice`](Self::as_slice), only the size is checked.
    ///
    /// # Examples
    ///
    /// ```
    /// use hyperion::{DType, MappedModel, MmapConfig};
    /// use hyperion::format::tmai::{write_tmai, TensorDecl};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("model.tmai");
    /// let ids: Vec<u8> = [7u32, 8, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
    /// write_tmai(&path, &[vec![(TensorDecl::new("ids", DType::U32, vec![3]), &ids[..])]])?;
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// runtime.block_on(async {
    ///     let model = MappedModel::open(&path, MmapConfig::default()).await?;
    ///     let weights = model.layer(0).await?;
    ///     let ids = weights.tensor("ids").expect("present");
    ///     assert_eq!(&*ids.as_slice_or_copy::<u32>()?, &[7, 8, 9]);
    ///     assert!(ids.as_slice_or_copy::<u16>().is_err()); // 2 bytes, not 4
    ///     Ok::<_, hyperion::Error>(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn as_slice_or_copy<T: bytemuck::Pod>(&self) -> Result<std::borrow::Cow<'a, [T]>> {
        self.check_element_size::<T>()?;
        Ok(match bytemuck::try_cast_slice(self.bytes) {
            Ok(slice) => std::borrow::Cow::Borrowed(slice),
            Err(_) => std::borrow::Cow::Owned(self.copy_elements()),
        })
    }

    /// The elements as `T`, always copied into a new vector (whatever the
    /// alignment); [`as_slice_or_copy`](Self::as_slice_or_copy) copies only
    /// when it must.
    ///
    /// # Errors
    ///
    /// [`Error::DTypeMismatch`](Error::DTypeMismatch) if `T`'s size is not the dtype's element size
    /// (or the dtype has none: packed sub-byte floats, block-quantized GGML
    /// types). As with [`as_slice`](Self::as_slice), only the size is checked.
    ///
    /// # Examples
    ///
    /// ```
    /// # use hyperion::{DType, MappedModel, MmapConfig};
    /// # use hyperion::format::tmai::{write_tmai, TensorDecl};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("model.tmai");
    /// let bias: Vec<u8> = [-1i16, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    /// write_tmai(&path, &[vec![(TensorDecl::new("bias", DType::I16, vec![2]), &bias[..])]])?;
    /// # let runtime = tokio::runtime::Runtime::new()?;
    /// # runtime.block_on(async {
    /// let model = MappedModel::open(&path, MmapConfig::default()).await?;
    /// let weights = model.layer(0).await?;
    /// let bias: Vec<i16> = weights.tensor("bias").expect("present").to_vec()?;
    /// drop(weights); // the copy outlives the layer
    /// assert_eq!(bias, [-1, 2]);
    /// # Ok::<_, hyperion::Error>(())
    /// # })?;
    /// # Ok(()) }
    /// ```
    pub fn to_vec<T: bytemuck::Pod>(&self) -> Result<Vec<T>> {
        self.check_element_size::<T>()?;
        Ok(self.copy_elements())
    }

    /// The elements converted to `f32`, in a new vector: from `F32`, `F16`,
    /// `BF16` (exactly) or `F64` (rounded to nearest), decoded little-endian,
    /// whatever the alignment.
    ///
    /// # Errors
    ///
    /// [`Error::DTypeMismatch`](Error::DTypeMismatch) for any other dtype.
    ///
    /// # Examples
    ///
    /// ```
    /// use hyperion::half::f16;
    /// # use hyperion::{DType, MappedModel, MmapConfig};
    /// # use hyperion::format::tmai::{write_tmai, TensorDecl};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("model.tmai");
    /// let values = [f16::from_f32(0.5), f16::from_f32(-2.0), f16::MAX];
    /// let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    /// write_tmai(&path, &[vec![(TensorDecl::new("w", DType::F16, vec![3]), &bytes[..])]])?;
    /// # let runtime = tokio::runtime::Runtime::new()?;
    /// # runtime.block_on(async {
    /// let model = MappedModel::open(&path, MmapConfig::default()).await?;
    /// let weights = model.layer(0).await?;
    /// let w = weights.tensor("w").expect("present");
    /// assert_eq!(w.as_f16(), Some(&values[..])); // zero-copy
    /// assert_eq!(w.to_f32_vec()?, [0.5, -2.0, 65504.0]);
    /// assert!(w.as_f32().is_none()); // not F32
    /// # Ok::<_, hyperion::Error>(())
    /// # })?;
    /// # Ok(()) }
    /// ```
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let le = |n: usize| self.bytes.chunks_exact(n);
        Ok(match self.plain_dtype() {
            DType::F32 => le(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            DType::F64 => le(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            DType::F16 => self.halves_to_f32(half::f16::from_le_bytes),
            DType::BF16 => self.halves_to_f32(half::bf16::from_le_bytes),
            _ => {
                return Err(self.mismatch(
                    "f32",
                    "to_f32_vec converts F16, BF16, F32 and F64 only".into(),
                ))
            }
        })
    }

    /// The dtype, with a GGML type that has a plain equivalent (`F16` …)
    /// given as that.
    fn plain_dtype(&self) -> DType {
        match self.spec.dtype {
            DType::Ggml(t) => t.plain_dtype().unwrap_or(self.spec.dtype),
            d => d,
        }
    }

    fn check_element_size<T>(&self) -> Result<()> {
        let want = std::mem::size_of::<T>() as u64;
        let requested = std::any::type_name::<T>();
        match self.spec.dtype.element_size() {
            None => Err(self.mismatch(
                requested,
                "its elements are not whole bytes (a packed or block-quantized type)".into(),
            )),
            Some(size) if size != want => Err(self.mismatch(
                requested,
                format!("its elements are {size} bytes, a {requested} is {want}"),
            )),
            // The readers check that a tensor's length is its dtype's size of
            // its shape; this keeps a copy from panicking were it not.
            Some(_) if self.bytes.len() as u64 % want != 0 => Err(self.mismatch(
                requested,
                format!(
                    "its {} bytes are not a whole number of elements",
                    self.bytes.len()
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn mismatch(&self, requested: &'static str, reason: String) -> Error {
        Error::DTypeMismatch {
            tensor: self.spec.name.clone(),
            dtype: self.spec.dtype,
            requested,
            reason,
        }
    }

    /// The bytes copied into a vector of `T` (the caller checked the sizes).
    fn copy_elements<T: bytemuck::Pod>(&self) -> Vec<T> {
        let mut out = vec![T::zeroed(); self.bytes.len() / std::mem::size_of::<T>()];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(self.bytes);
        out
    }

    /// Two-byte floats to `f32`: converted in place from the layer's bytes
    /// when they are aligned (on a little-endian host), else decoded first.
    fn halves_to_f32<H>(&self, from_le: fn([u8; 2]) -> H) -> Vec<f32>
    where
        H: bytemuck::Pod,
        [H]: half::slice::HalfFloatSliceExt,
    {
        use half::slice::HalfFloatSliceExt;
        use std::borrow::Cow;
        let halves: Cow<'_, [H]> = match bytemuck::try_cast_slice(self.bytes) {
            Ok(slice) if cfg!(target_endian = "little") => Cow::Borrowed(slice),
            _ => Cow::Owned(
                self.bytes
                    .chunks_exact(2)
                    .map(|c| from_le([c[0], c[1]]))
                    .collect(),
            ),
        };
        let mut out = vec![0.0; halves.len()];
        halves.convert_to_f32_slice(&mut out);
        out
    }
}

/// One tensor, fetched by name with
/// [`MappedModel::tensor`](crate::MappedModel::tensor): the weights of the
/// layer that holds it (which keep its bytes alive, as any
/// [`LayerWeights`] does) and its place among them.
#[derive(Clone, Debug)]
pub struct TensorHandle {
    weights: LayerWeights,
    position: usize,
}

impl TensorHandle {
    pub(crate) fn new(weights: LayerWeights, position: usize) -> Self {
        debug_assert!(weights.tensor_at(position).is_some());
        TensorHandle { weights, position }
    }

    /// The tensor: name, dtype, shape, bytes and typed views.
    pub fn view(&self) -> TensorView<'_> {
        // `new`'s callers take the position from the same index the layer's
        // tensor list comes from.
        self.weights
            .tensor_at(self.position)
            .expect("a TensorHandle's position is inside its layer")
    }

    /// The weights of the whole layer the tensor is part of.
    pub fn layer(&self) -> &LayerWeights {
        &self.weights
    }
}
