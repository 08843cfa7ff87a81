//! The `.tmai` format (placeholder; being written).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::index::ModelIndex;

/// The first eight bytes of every `.tmai` file.
pub const MAGIC: [u8; 8] = *b"TMAI\x00\r\n\x1a";

pub(crate) fn read_index(_file: &mut File, _path: &Arc<Path>, _file_len: u64) -> Result<ModelIndex> {
    unimplemented!()
}
