#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod budget;
mod buffer;
pub mod config;
pub mod dtype;
pub mod error;
pub mod format;
pub mod index;

pub use config::{Backend, MmapConfig};
pub use dtype::DType;
pub use error::{Error, FormatError, Result};
pub use index::{FileFormat, FileRange, LayerSpec, ModelIndex, TensorSpec};
