//! File formats: each reader turns a file into a [`ModelIndex`] by reading
//! its metadata only; each treats the file as hostile.

// Used by the safetensors and GGUF readers, which are being added.
pub mod gguf;
#[allow(dead_code)]
pub mod grouping;
pub mod tmai;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, FormatError, Result};
use crate::index::ModelIndex;

/// Reads the metadata of the model file at `path` (format detected from its
/// first bytes) and returns its index. Reads no layer bytes.
///
/// This is blocking; [`MappedModel::open`](crate::MappedModel::open) runs it
/// off the async runtime.
pub fn read_index(path: &Path) -> Result<ModelIndex> {
    let shared: Arc<Path> = Arc::from(path);
    let mut file = File::open(path).map_err(|e| Error::io(&shared, "open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(&shared, "stat", e))?
        .len();
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(&shared, "read header", e))?;
    if n == tmai::MAGIC.len() && magic == tmai::MAGIC {
        return tmai::read_index(&mut file, &shared, file_len);
    }
    if n >= gguf::MAGIC.len() && magic.starts_with(&gguf::MAGIC) {
        return gguf::read_index(&mut file, &shared, file_len);
    }
    Err(Error::format(
        &shared,
        FormatError::BadMagic {
            found: magic[..n].to_vec(),
        },
    ))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
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
