//! A `candle_nn::VarBuilder` backend over a [`MappedModel`].
//!
//! candle builds a model by asking its `VarBuilder` for each tensor by name,
//! synchronously. [`HyperionBackend`] answers from a Hyperion model: the
//! tensor's layer is fetched through the cache (one shared read, the
//! layer's checksum checked, typed errors), the tensor is converted with
//! [`crate::convert`] (one copy into candle's storage), and the
//! layer stays in Hyperion's cache for the next tensor of the same layer
//! until the budget needs the room.
//!
//! The reads run on a small tokio runtime the backend owns, and a blocking
//! call waits for them on a plain channel, so `get` works from any thread,
//! inside a tokio runtime or not, without `block_on`.

use std::path::Path;
use std::sync::mpsc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use hyperion::{MappedModel, MmapConfig, TensorHandle};

use crate::convert;
use crate::error::{Error, Result};

/// A [`SimpleBackend`] that reads every tensor through Hyperion.
///
/// # Examples
///
/// Building a candle layer from a model file through Hyperion:
///
/// ```
/// # use hyperion::{synth, MmapConfig};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("model.tmai");
/// # synth::write(&path, &synth::SynthSpec { layers: 2, layer_size: 64 << 10, ..Default::default() })?;
/// use candle_core::{DType, Device};
/// use candle_nn::VarBuilder;
/// use hyperion_candle::HyperionBackend;
///
/// let backend = HyperionBackend::open(&path, MmapConfig::default())?;
/// let name = backend.model().index().tensor_names().next().unwrap().to_string();
/// let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
/// let tensor = vb.get_unchecked(&name)?;
/// # Ok(())
/// # }
/// ```
pub struct HyperionBackend {
    model: MappedModel,
    /// Runs the reads for blocking callers; dropped after the model.
    runtime: tokio::runtime::Runtime,
}

impl HyperionBackend {
    /// Opens the model at `path` with `config`, on a runtime of the
    /// backend's own (one worker: the reads themselves run on Hyperion's
    /// engines).
    ///
    /// # Errors
    /// Those of [`MappedModel::open`], and [`Error::Hyperion`] with an I/O
    /// error if the runtime cannot be created.
    pub fn open(path: impl AsRef<Path>, config: MmapConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hyperion-candle")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::Hyperion(hyperion::Error::Io {
                    path: path.as_ref().into(),
                    op: "create the reader runtime".into(),
                    source: e.into(),
                })
            })?;
        let path = path.as_ref().to_path_buf();
        let model = wait(&runtime, "the model's metadata", async move {
            MappedModel::open(path, config).await
        })??;
        Ok(HyperionBackend { model, runtime })
    }

    /// The model the tensors come from (its index, stats, budget).
    pub fn model(&self) -> &MappedModel {
        &self.model
    }

    /// Fetches the tensor called `name`, blocking until it is read.
    fn fetch(&self, name: &str) -> Result<TensorHandle> {
        let model = self.model.clone();
        let owned = name.to_string();
        Ok(wait(&self.runtime, name, async move {
            model.tensor(&owned).await
        })??)
    }

    /// The tensor `name` as a candle tensor of `dtype` on `device`: GGML
    /// block types are dequantized, other dtypes converted as candle's own
    /// safetensors backend does (`to_dtype`).
    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let handle = self.fetch(name)?;
        let view = handle.view();
        let tensor = match view.dtype() {
            hyperion::DType::Ggml(t) if t.plain_dtype().is_none() => {
                convert::to_dequantized(&view, device)?
            }
            _ => convert::to_tensor(&view, device)?,
        };
        Ok(tensor.to_dtype(dtype)?)
    }
}

impl SimpleBackend for HyperionBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(Error::ShapeMismatch {
                tensor: name.to_string(),
                expected: shape.dims().to_vec(),
                actual: tensor.dims().to_vec(),
            }
            .into());
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        Ok(self.load(name, dtype, device)?)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.model.index().find_tensor(name).is_some()
    }
}

impl std::fmt::Debug for HyperionBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperionBackend")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Runs `future` on `runtime` and waits for its output on a plain channel
/// (never `block_on`, so this works inside another runtime's worker too).
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    what: &str,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().map_err(|_| Error::RuntimeGone {
        what: what.to_string(),
    })
}
