//! safetensors headers and shard indexes: the parsers never panic, and the
//! header parser agrees with the `safetensors` crate (the reference): what it
//! accepts, the crate accepts with the same tensors; what the crate accepts,
//! it accepts too, unless a name is duplicated (the crate keeps the last) or
//! the JSON nests deeper than `MAX_JSON_DEPTH` (the crate allows 128 levels).
#![no_main]

use hyperion::format::safetensors::{parse_header, parse_shard_index};
use hyperion::FormatError;
use libfuzzer_sys::fuzz_target;
use safetensors::SafeTensors;

fuzz_target!(|data: &[u8]| {
    let ours = parse_header(data, data.len() as u64);
    let reference = SafeTensors::read_metadata(data);
    match (&ours, &reference) {
        (Ok(header), Ok((_, metadata))) => {
            assert_eq!(header.tensors.len(), metadata.tensors().len());
            for t in &header.tensors {
                let info = metadata.info(&t.name).expect("the crate has the tensor");
                let start = t.offset - header.data_start;
                assert_eq!(
                    info.data_offsets,
                    (start as usize, (start + t.len) as usize)
                );
                assert_eq!(t.dtype.name(), info.dtype.to_string());
                assert_eq!(
                    t.shape,
                    info.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()
                );
            }
        }
        (Ok(_), Err(e)) => panic!("accepted a header the crate refuses: {e}"),
        (Err(FormatError::DuplicateName { .. }), Ok(_)) => {}
        (Err(FormatError::LimitExceeded { what, .. }), Ok(_)) if what.contains("nesting") => {}
        (Err(e), Ok(_)) => panic!("refused a header the crate accepts: {e}"),
        (Err(_), Err(_)) => {}
    }
    let _ = parse_shard_index(data);
});
