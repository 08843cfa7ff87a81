//! The layer and header checksum: xxh3-64, as the `.tmai` format records it.
//!
//! One place, so that the engines, the verifier and the writer agree and the
//! implementation can change without touching them. It is `twox-hash`,
//! which picks its AVX2 path at run time where the CPU has it; `xxhash-rust`
//! (used before, and kept by the tests as an independent reference) picks
//! its SIMD path at compile time, which for a portable x86-64 build is SSE2.
//! Streaming a 64 MiB buffer in 4 MiB updates, each hashed right after it
//! was written (as the engines hash each chunk after it lands), three runs
//! here: 30.3–34.2 GB/s against 26.9–29.2. The warm stream, which hashes
//! each chunk right after copying it, gained 6% (nine interleaved rounds of
//! `POOLED=1 WARM=1 DIRECT=0 examples/stream FILE 512 auto`, 2 GiB: median
//! 17,129 MB/s against 16,142); cold streams are unchanged (3,518–3,651
//! against 3,525–3,653), the disk being the bound there.

use std::hash::Hasher;

/// The xxh3-64 of `bytes`.
pub(crate) fn xxh3_64(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// A streaming xxh3-64: the digest of everything [`update`](Self::update)
/// was given, in order, equals [`xxh3_64`] of it all.
pub(crate) struct Xxh3(twox_hash::XxHash3_64);

impl Xxh3 {
    pub(crate) fn new() -> Self {
        Xxh3(twox_hash::XxHash3_64::new())
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    pub(crate) fn digest(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the other implementation, over lengths around xxh3's
    /// internal block and stripe sizes, in one piece and streamed in uneven
    /// pieces.
    #[test]
    fn matches_xxhash_rust_oneshot_and_streamed() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 1025, 65_536, 299_999,
        ] {
            let bytes = &data[..len];
            let want = xxhash_rust::xxh3::xxh3_64(bytes);
            assert_eq!(xxh3_64(bytes), want, "oneshot, {len} bytes");
            let mut h = Xxh3::new();
            for piece in bytes.chunks(777) {
                h.update(piece);
            }
            assert_eq!(h.digest(), want, "streamed, {len} bytes");
        }
    }
}
