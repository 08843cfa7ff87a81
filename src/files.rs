//! The small files beside a model's weights — its `config.json`, its
//! `tokenizer.json`, a magic number — read from a local path or an
//! `s3://` URL alike (the URL with the `object-store` feature), for programs
//! that find a model's parts before they open it (`hyperion-generate`).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, FormatError, ObjectErrorKind, Result};
use crate::object::with_files;
use crate::source::is_object_url;

/// The whole of the small file at `path`, a local path or an `s3://` URL:
/// the `config.json` or `tokenizer.json` beside a model's weights. Blocking
/// (one HEAD and one or a few ranged GETs for an object).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("config.json");
/// std::fs::write(&path, br#"{"hidden_size": 576}"#).unwrap();
/// let bytes = hyperion::files::read_small_file(&path, 1 << 20)?;
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
