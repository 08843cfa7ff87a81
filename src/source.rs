//! Where a model's files are: on the local filesystem, or in object storage
//! (`s3://bucket/key`). The format parsers read either through a `Source`
//! (read + seek), and open the files a model names (a sharded index's
//! shards) through an `Opener`, so they never know which it is.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

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
