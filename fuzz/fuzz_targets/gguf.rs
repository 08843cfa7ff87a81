#![no_main]
//! GGUF metadata: `parse` refuses or accepts any bytes, never panics.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a whole file, and as the prefix of a far longer one.
    let _ = hyperion::format::gguf::parse(data, data.len() as u64);
    let _ = hyperion::format::gguf::parse(data, u64::MAX);
});
