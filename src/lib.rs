#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod budget;
pub mod buffer;
mod buffer_pool;
mod cache;
mod checksum;
pub mod config;
pub mod dtype;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(not(feature = "fault-injection"))]
mod faults;
pub mod files;
pub mod format;
mod ggml;
pub mod index;
mod io;
mod meta;
mod model;
mod object;
pub mod pagecache;
pub mod policy;
pub mod source;
mod stats;
pub mod synth;
mod sys;
mod weights;

pub use buffer_pool::BufferPool;
pub use config::{Backend, ColdSharing, MmapConfig, ObjectStoreConfig};
pub use dtype::{DType, GgmlType};
pub use error::{Error, FormatError, ObjectErrorKind, Result};
pub use index::{FileFormat, FileRange, LayerSpec, ModelIndex, TensorLocation, TensorSpec};
#[cfg(feature = "test-hooks")]
pub use model::ReadGate;
pub use model::{LayerDescriptor, LayerFetch, MappedModel, Prefetch, DEFAULT_PRIORITY};
pub use stats::Stats;
pub use weights::{LayerWeights, TensorHandle, TensorView};

/// The `half` crate, whose `f16` and `bf16` [`TensorView::as_f16`] and
/// [`TensorView::as_bf16`] return: use it through this path to get the
/// same version.
pub use half;
