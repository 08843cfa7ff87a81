//! Where a model's files are: on the local filesystem, or in object storage
//! (`s3://bucket/key`). The format parsers read either through a `Source`
//! (read + seek), and open the files a model names (a sharded index's
//! shards) through an `Opener`, so they never know which it is.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, FormatError, ObjectErrorKind, Result};

/// The URL schemes read from object storage.
pub(crate) const OBJECT_SCHEMES: &[&str] = &["s3://"];

/// Whether `path` names an object in object storage (`s3://bucket/key`)
/// rather than a local file.
pub fn is_object_url(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|p| OBJECT_SCHEMES.iter().any(|s| p.starts_with(s)))
}

/// The bytes of one model file as the parsers read them: a local file, or
/// an object read by ranged GETs.
pub(crate) trait Source: Read + Seek + Send {}

impl<T: Read + Seek + Send> Source for T {}

/// Opens the files of a model for the parsers: the model's own, and the
/// shards a sharded index names.
pub(crate) trait Opener {
    /// Opens the regular file (or object) `path`; returns it and its length.
    fn open(&mut self, path: &Arc<Path>) -> Result<(Box<dyn Source>, u64)>;
}

/// Files on the local filesystem.
pub(crate) struct LocalFiles;

impl Opener for LocalFiles {
    fn open(&mut self, path: &Arc<Path>) -> Result<(Box<dyn Source>, u64)> {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        if !meta.is_file() {
            let e =
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is not a regular file");
            return Err(Error::io(path, "open", e));
        }
        Ok((Box::new(file), meta.len()))
    }
}

/// Runs the blocking `read` over `path` with the files of its kind: local
/// files, or objects read with a client from the `AWS_*` environment. Safe
/// to call from anywhere, inside an async runtime or not (objects are read
/// on a thread and runtime of their own), but it blocks the caller.
pub(crate) fn with_files<T: Send>(
    path: &Path,
    read: impl FnOnce(&Path, &mut dyn Opener) -> Result<T> + Send,
) -> Result<T> {
    if is_object_url(path) {
        crate::object::with_remote_files(path, read)
    } else {
        read(path, &mut LocalFiles)
    }
}

/// The whole of the small file at `path`, a local path or an `s3://` URL:
/// the `config.json` or `tokenizer.json` beside a model's weights. Blocking
/// (one HEAD and one or a few ranged GETs for an object).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("config.json");
/// std::fs::write(&path, br#"{"hidden_size": 576}"#).unwrap();
/// let bytes = hyperion::source::read_small_file(&path, 1 << 20)?;
/// assert_eq!(bytes, br#"{"hidden_size": 576}"#);
/// # Ok::<(), hyperion::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] or [`Error::ObjectStore`] naming `path` when it cannot be
/// read, and [`FormatError::LimitExceeded`] when it is longer than
/// `max_len` (so a wrong path cannot make this read gigabytes).
pub fn read_small_file(path: impl AsRef<Path>, max_len: u64) -> Result<Vec<u8>> {
    with_files(path.as_ref(), |path, opener| {
        let shared: Arc<Path> = Arc::from(path);
        let (file, len) = opener.open(&shared)?;
        if len > max_len {
            let limit = FormatError::LimitExceeded {
                what: "the file's length".into(),
                value: len,
                limit: max_len,
            };
            return Err(Error::format(&shared, limit));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(len)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&shared, "read", e))?;
        Ok(bytes)
    })
}

/// The first `len` bytes of the file at `path` (fewer if it is shorter), a
/// local path or an `s3://` URL: enough to tell a format by its magic.
/// Blocking, as [`read_small_file`].
///
/// # Errors
/// [`Error::Io`] or [`Error::ObjectStore`] naming `path`.
pub fn read_prefix(path: impl AsRef<Path>, len: usize) -> Result<Vec<u8>> {
    with_files(path.as_ref(), |path, opener| {
        let shared: Arc<Path> = Arc::from(path);
        let (file, _) = opener.open(&shared)?;
        let mut bytes = Vec::with_capacity(len);
        file.take(len as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&shared, "read", e))?;
        Ok(bytes)
    })
}

/// Whether `path` names a regular file, or an object that exists (one
/// HEAD). Blocking, as [`read_small_file`].
///
/// # Errors
/// For an object, any answer but "not found": access denied, an
/// unreachable endpoint, a bad configuration ([`Error::ObjectStore`]).
pub fn file_exists(path: impl AsRef<Path>) -> Result<bool> {
    let path = path.as_ref();
    if !is_object_url(path) {
        return Ok(path.is_file());
    }
    with_files(path, |path, opener| match opener.open(&Arc::from(path)) {
        Ok(_) => Ok(true),
        Err(Error::ObjectStore {
            kind: ObjectErrorKind::NotFound,
            ..
        }) => Ok(false),
        Err(e) => Err(e),
    })
}
