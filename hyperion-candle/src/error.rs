//! The crate's error type.

use hyperion::DType;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong between Hyperion and candle. Every variant names the
/// tensor concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Hyperion could not read the weights.
    #[error(transparent)]
    Hyperion(#[from] hyperion::Error),
    /// candle refused an operation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The tensor's dtype has no candle counterpart (or not the one asked
    /// for: a GGML block type as a plain `Tensor`, a plain type as a `QTensor`).
    #[error("tensor {tensor:?}: dtype {dtype} is not supported here: {reason}")]
    UnsupportedDType {
        /// The tensor's name.
        tensor: String,
        /// Its dtype in the file.
        dtype: DType,
        /// Why, and what to use instead.
        reason: &'static str,
    },
    /// The tensor's shape is not the one the model expects.
    #[error("tensor {tensor:?}: the model expects shape {expected:?}, the file has {actual:?}")]
    ShapeMismatch {
        /// The tensor's name.
        tensor: String,
        /// The shape the model asked for.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A dimension does not fit in this platform's `usize`.
    #[error("tensor {tensor:?}: shape {shape:?} does not fit in memory on this platform")]
    TooLarge {
        /// The tensor's name.
        tensor: String,
        /// Its shape in the file.
        shape: Vec<u64>,
    },
    /// The model file is not one this model code runs.
    #[error("{}: unsupported model: {what}", path.display())]
    Unsupported {
        /// The model file.
        path: std::path::PathBuf,
        /// What is missing or not supported.
        what: String,
    },
    /// The model lacks a tensor the architecture needs.
    #[error("the model has no tensor {name:?}")]
    MissingTensor {
        /// The tensor's name.
        name: String,
    },
    /// The runtime that reads for a blocking caller is gone.
    #[error("the reader runtime shut down before the read of {what} finished")]
    RuntimeGone {
        /// What was being read.
        what: String,
    },
}

impl From<Error> for candle_core::Error {
    /// Keeps the typed error inside candle's, so callers can downcast it.
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            e => candle_core::Error::wrap(e),
        }
    }
}
