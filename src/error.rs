//! The one error type of the crate.
//!
//! Every message names the file and, where there is one, the layer; format
//! errors also name the item of the file that is wrong. Errors are `Clone`
//! because one failed read is reported to every task that awaited it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::dtype::DType;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Hyperion.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The file concerned.
        path: Arc<Path>,
        /// What was being done (`open`, `read layer 3`, `map` …).
        op: String,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file is not a valid model file; the inner error says where.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file concerned.
        path: Arc<Path>,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// A layer index past the end of the model.
    #[error("{}: layer {layer} is out of range (the model has {count} layers)", path.display())]
    LayerOutOfRange {
        /// The file concerned.
        path: Arc<Path>,
        /// The index asked for.
        layer: usize,
        /// How many layers the model has.
        count: usize,
    },
    /// The model was closed.
    #[error("{}: the model is closed", path.display())]
    Closed {
        /// The file concerned.
        path: Arc<Path>,
    },
    /// One layer needs more memory than the whole cache budget.
    #[error(
        "{}: layer {layer} needs {needed} bytes but the cache budget (max_cache_size) is {budget} bytes",
        path.display()
    )]
    LayerTooLarge {
        /// The file concerned.
        path: Arc<Path>,
        /// The layer.
        layer: usize,
        /// Bytes the layer is charged (its size rounded to the allocation granule).
        needed: u64,
        /// The configured budget.
        budget: u64,
    },
    /// Every byte of the budget is held by live [`LayerWeights`](crate::LayerWeights)
    /// handles, so there was nothing to evict for this layer.
    #[error(
        "{}: no memory for layer {layer}: it needs {needed} bytes, and {held} of the {budget}-byte budget \
         were still held by LayerWeights handles or reads in flight when memory_wait_timeout ran out \
         (drop handles sooner, raise max_cache_size, or wait longer)",
        path.display()
    )]
    BudgetExhausted {
        /// The file concerned.
        path: Arc<Path>,
        /// The layer that could not be loaded.
        layer: usize,
        /// Bytes it needed.
        needed: u64,
        /// Bytes in use when the fetch gave up.
        held: u64,
        /// The configured budget.
        budget: u64,
    },
    /// The file ended before the bytes of a layer did (it was truncated after opening).
    #[error(
        "{}: layer {layer}: the file ended at byte {end} while reading bytes {offset}..{expected_end}",
        path.display()
    )]
    Truncated {
        /// The file concerned.
        path: Arc<Path>,
        /// The layer being read.
        layer: usize,
        /// Start of the range being read.
        offset: u64,
        /// Where the range should have ended.
        expected_end: u64,
        /// Where the file ended.
        end: u64,
    },
    /// A layer's bytes do not match the checksum recorded in the file.
    #[error(
        "{}: layer {layer}: checksum mismatch (file records {expected:#018x}, bytes hash to {actual:#018x})",
        path.display()
    )]
    ChecksumMismatch {
        /// The file concerned.
        path: Arc<Path>,
        /// The layer.
        layer: usize,
        /// The checksum stored in the file.
        expected: u64,
        /// The checksum of the bytes read.
        actual: u64,
    },
    /// The requested backend cannot be used here.
    #[error("{}: the {backend} backend is unavailable: {reason}", path.display())]
    BackendUnavailable {
        /// The file concerned.
        path: Arc<Path>,
        /// The backend asked for.
        backend: &'static str,
        /// Why not.
        reason: String,
    },
    /// A configuration value or argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`prefetch`](crate::MappedModel::prefetch) was called on a model opened
    /// with `prefetch_enabled = false`.
    #[error("{}: prefetching is disabled (prefetch_enabled is false)", path.display())]
    PrefetchDisabled {
        /// The file concerned.
        path: Arc<Path>,
    },
    /// No tensor of the model has this name.
    #[error("{}: no tensor is named {name:?}", path.display())]
    TensorNotFound {
        /// The file concerned.
        path: Arc<Path>,
        /// The name looked up.
        name: String,
    },
    /// A read was abandoned before it finished (its runtime shut down).
    #[error("{}: layer {layer}: the read was abandoned before it finished (runtime shutting down?)", path.display())]
    Aborted {
        /// The file concerned.
        path: Arc<Path>,
        /// The layer.
        layer: usize,
    },
    /// A request to object storage (`s3://…`) failed after its retries: the
    /// object or bucket is missing, the credentials were refused, the
    /// endpoint could not be reached, or the server kept failing. One line,
    /// naming the object's URL.
    #[error("{}: {op} failed: {kind}: {message}", path.display())]
    ObjectStore {
        /// The object's URL (`s3://bucket/key`).
        path: Arc<Path>,
        /// What was being done (`HEAD`, `read layer 3` …).
        op: String,
        /// What kind of failure it was.
        kind: ObjectErrorKind,
        /// The client's own message (one line).
        message: String,
    },
    /// The object changed while the model was open: its ETag is not the one
    /// the model was opened with. No bytes of the new object are returned:
    /// reopen the model to read it.
    #[error(
        "{}: layer {layer}: the object changed since the model was opened (ETag {expected} when \
         opened, now {found}); reopen the model",
        path.display()
    )]
    ObjectChanged {
        /// The object's URL.
        path: Arc<Path>,
        /// The layer being read.
        layer: usize,
        /// The ETag when the model was opened.
        expected: String,
        /// The ETag the server has now (`unknown` if it only refused the
        /// precondition).
        found: String,
    },
    /// A tensor's elements were asked for as a type that its dtype cannot be
    /// read as ([`TensorView::to_vec`](crate::TensorView::to_vec),
    /// [`to_f32_vec`](crate::TensorView::to_f32_vec) …).
    #[error("tensor {tensor:?} of dtype {dtype} cannot be read as {requested}: {reason}")]
    DTypeMismatch {
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
        /// The type asked for (`f32`, `u16` …).
        requested: &'static str,
        /// Why not (the element sizes differ …).
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Arc<Path>, op: impl Into<String>, source: io::Error) -> Self {
        // A reader that is not a file (an object read by ranged GETs) fails
        // with an `Error` of its own inside the `io::Error` the parsers see:
        // that one says what happened.
        if let Some(inner) = source.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            return inner.clone();
        }
        Error::Io {
            path: Arc::clone(path),
            op: op.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn format(path: &Arc<Path>, source: FormatError) -> Self {
        Error::Format {
            path: Arc::clone(path),
            source,
        }
    }
}

/// The kinds of [`Error::ObjectStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectErrorKind {
    /// No such object, or no such bucket.
    NotFound,
    /// The server refused the credentials or the request's permissions.
    AccessDenied,
    /// The endpoint could not be reached (connection refused, DNS, timeout).
    Unreachable,
    /// The server kept answering with errors (5xx, throttling) until the
    /// retries ran out.
    Server,
    /// The URL or the object-store configuration is not usable.
    Config,
    /// Anything else the client reported.
    Other,
}

impl std::fmt::Display for ObjectErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectErrorKind::NotFound => "not found",
            ObjectErrorKind::AccessDenied => "access denied",
            ObjectErrorKind::Unreachable => "endpoint unreachable",
            ObjectErrorKind::Server => "server error",
            ObjectErrorKind::Config => "bad configuration",
            ObjectErrorKind::Other => "request failed",
        })
    }
}

/// What is wrong with a model file. Each message names the item at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file does not start with a known magic number.
    #[error("not a model file: unknown magic bytes {found:02x?}")]
    BadMagic {
        /// The first bytes of the file.
        found: Vec<u8>,
    },
    /// A format version this build cannot read.
    #[error("unsupported {format} version {version}")]
    UnsupportedVersion {
        /// The format.
        format: &'static str,
        /// The version found.
        version: u32,
    },
    /// The file ends inside a structure.
    #[error("truncated: {what} needs bytes up to {needed}, but the file has {available}")]
    Truncated {
        /// The structure being read.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A count or length exceeds a hard limit.
    #[error("{what} is {value}, above the limit of {limit}")]
    LimitExceeded {
        /// The field.
        what: String,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Arithmetic on values from the file overflowed.
    #[error("{what} overflows")]
    Overflow {
        /// The computation.
        what: String,
    },
    /// A range lies outside the region it must be in.
    #[error("{what}: bytes {start}..{end} lie outside {region} ({region_start}..{region_end})")]
    OutOfBounds {
        /// The item.
        what: String,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
        /// The region it must lie in.
        region: &'static str,
        /// The region's start.
        region_start: u64,
        /// The region's end.
        region_end: u64,
    },
    /// Two items claim the same bytes.
    #[error("{first} and {second} overlap")]
    Overlap {
        /// One item.
        first: String,
        /// The other.
        second: String,
    },
    /// A value that must be aligned is not.
    #[error("{what} is {value}, not a multiple of {alignment}")]
    Misaligned {
        /// The field.
        what: String,
        /// Its value.
        value: u64,
        /// The required alignment.
        alignment: u64,
    },
    /// A tensor's byte length disagrees with its dtype and shape.
    #[error("tensor {tensor:?}: dtype {dtype} with shape {shape:?} needs {expected} bytes, but it has {actual}")]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Bytes implied by dtype × shape.
        expected: u64,
        /// Bytes the file gives it.
        actual: u64,
    },
    /// An unknown dtype code.
    #[error("{what}: unknown dtype code {code}")]
    UnknownDType {
        /// The item.
        what: String,
        /// The code found.
        code: u32,
    },
    /// A name appears twice.
    #[error("duplicate name {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A structure's bytes do not match the checksum recorded for them (the file is corrupt).
    #[error(
        "{what}: checksum mismatch (file records {expected:#018x}, bytes hash to {actual:#018x})"
    )]
    ChecksumMismatch {
        /// The structure checked (`header` …).
        what: String,
        /// The checksum stored in the file.
        expected: u64,
        /// The checksum of the bytes.
        actual: u64,
    },
    /// Text that must be UTF-8 is not.
    #[error("{what} is not valid UTF-8 (the first {valid_up_to} bytes are)")]
    NotUtf8 {
        /// The text (`JSON header` …).
        what: String,
        /// How many leading bytes are valid.
        valid_up_to: u64,
    },
    /// JSON that does not parse, or does not have the shape the format
    /// requires (a missing field, a wrong type, an unknown dtype name).
    #[error("{what}: {message}")]
    Json {
        /// The JSON document, or the entry of it (`tensor "w" in the JSON header`).
        what: String,
        /// The parser's message, with its line and column.
        message: String,
    },
    /// Bytes that must belong to some item belong to none (safetensors tensors
    /// must tile their data section exactly).
    #[error("{what}: bytes {start}..{end} belong to no tensor")]
    Gap {
        /// The region (`the data section`), and what borders the gap.
        what: String,
        /// The gap's start, relative to the region.
        start: u64,
        /// The gap's end, relative to the region.
        end: u64,
    },
    /// A file name in an index is absolute or climbs out of its directory.
    #[error("{what}: {name:?} is not a plain relative path inside the model's directory")]
    UnsafePath {
        /// Where the name was found (`shard of tensor "w"` …).
        what: String,
        /// The name.
        name: String,
    },
    /// A file named by an index cannot be opened.
    #[error("{what}: {name:?} cannot be opened: {reason}")]
    MissingFile {
        /// Where the name was found (`shard of tensor "w"` …).
        what: String,
        /// The name, as the index gives it.
        name: String,
        /// Why (the operating system's message).
        reason: String,
    },
    /// An index assigns a tensor to a file that does not hold it.
    #[error("the index puts tensor {tensor:?} in {file:?}, which does not hold it")]
    NotInShard {
        /// The tensor.
        tensor: String,
        /// The file the index names.
        file: String,
    },
    /// A file holds a tensor that its index does not assign to that file.
    #[error("{file:?} holds tensor {tensor:?}, which the index does not assign to it")]
    NotInIndex {
        /// The tensor.
        tensor: String,
        /// The file that holds it.
        file: String,
    },
    /// Any other violation of the format, described.
    #[error("{0}")]
    Invalid(String),
}
