//! File formats: each reader turns a file into a [`ModelIndex`] by reading
//! its metadata only; each treats the file as hostile.

pub mod gguf;
pub mod grouping;
pub mod safetensors;
pub mod tmai;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, FormatError, Result};
use crate::index::ModelIndex;
use crate::source::{is_object_url, Opener};

/// Reads the metadata of the model at `path` and returns its index. Reads no
/// layer bytes.
///
/// The format is detected: a directory or a `.json` file is a sharded
/// safetensors model (see [`safetensors`]); a file is `.tmai` or GGUF by its
/// magic number, and safetensors by its name (`*.safetensors`) or its first
/// bytes (a plausible header length, then `{`).
///
/// This is blocking; [`MappedModel::open`](crate::MappedModel::open) runs it
/// off the async runtime.
pub fn read_index(path: &Path) -> Result<ModelIndex> {
    crate::object::with_files(path, read_index_with)
}

/// [`read_index`] with the files opened by `opener`.
pub(crate) fn read_index_with(path: &Path, opener: &mut dyn Opener) -> Result<ModelIndex> {
    let remote = is_object_url(path);
    if (!remote && safetensors::is_index_path(path))
        || (remote && path.extension().is_some_and(|e| e == "json"))
    {
        return safetensors::read_index_at(path, opener);
    }
    let shared: Arc<Path> = Arc::from(path);
    let (mut file, file_len) = opener.open(&shared)?;
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(&shared, "read header", e))?;
    if n == tmai::MAGIC.len() && magic == tmai::MAGIC {
        return tmai::read_index(&mut file, &shared, file_len);
    }
    if n >= gguf::MAGIC.len() && magic.starts_with(&gguf::MAGIC) {
        return gguf::read_index(&mut file, &shared, file_len);
    }
    if safetensors::sniff(&mut file, path, &magic[..n]) {
        return safetensors::read_file_index(&mut file, &shared, file_len);
    }
    Err(Error::format(
        &shared,
        FormatError::BadMagic {
            found: magic[..n].to_vec(),
        },
    ))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_up_to(
    file: &mut (impl Read + ?Sized),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
