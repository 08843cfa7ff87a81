//! What a fetch returns: a layer's bytes, kept alive while held, with typed
//! views of the tensors inside.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::budget::Budget;
use crate::dtype::DType;
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

    /// The tensor called `name`, if the layer has one.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensors().find(|t| t.name() == name)
    }

    /// The layer's tensors, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
        let bytes = self.bytes();
        self.data().tensors.iter().map(move |spec| TensorView {
            spec,
            // The format readers checked that every tensor lies inside its layer.
            bytes: &bytes[spec.offset as usize..(spec.offset + spec.len) as usize],
        })
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
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    spec: &'a TensorSpec,
    bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
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

    /// The elements as `T`, if `T` has the dtype's size and the bytes are
    /// aligned for it (they are for `.tmai` files, whose writer aligns tensors
    /// to 64 bytes). Only meaningful on little-endian hosts.
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Option<&'a [T]> {
        if Some(std::mem::size_of::<T>() as u64) != self.spec.dtype.element_size() {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// The elements as `f32`, if the dtype is `F32` and the bytes are aligned.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.spec.dtype != DType::F32 {
            return None;
        }
        self.as_slice()
    }
}
