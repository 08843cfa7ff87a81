//! Element types of tensors.

use std::fmt;

/// The element type of a tensor.
///
/// The numeric code of each type is its `.tmai` encoding (see `docs/format.md`).
/// Codes 0–63 are plain element types; codes from 64 up are reserved for
/// block-quantized types (GGML), which are carried as raw blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// Raw bytes with no element structure.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Boolean, one byte per element.
    Bool,
    /// 8-bit float, E4M3.
    F8E4M3,
    /// 8-bit float, E5M2.
    F8E5M2,
}

impl DType {
    /// Every plain dtype, in code order.
    pub const ALL: [DType; 15] = [
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::U32,
        DType::I32,
        DType::U64,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::Bool,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    /// The `.tmai` code of this dtype.
    pub fn code(self) -> u32 {
        match self {
            DType::U8 => 0,
            DType::I8 => 1,
            DType::U16 => 2,
            DType::I16 => 3,
            DType::U32 => 4,
            DType::I32 => 5,
            DType::U64 => 6,
            DType::I64 => 7,
            DType::F16 => 8,
            DType::BF16 => 9,
            DType::F32 => 10,
            DType::F64 => 11,
            DType::Bool => 12,
            DType::F8E4M3 => 13,
            DType::F8E5M2 => 14,
        }
    }

    /// The dtype with `.tmai` code `code`, if any.
    pub fn from_code(code: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bits per element.
    pub fn bits(self) -> u32 {
        match self {
            DType::U8 | DType::I8 | DType::Bool | DType::F8E4M3 | DType::F8E5M2 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::U32 | DType::I32 | DType::F32 => 32,
            DType::U64 | DType::I64 | DType::F64 => 64,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        u64::from(self.bits() / 8)
    }

    /// The short name used by safetensors (`F32`, `BF16` …).
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::Bool => "BOOL",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
        }
    }

    /// Bytes taken by a tensor of this dtype and `shape`, or `None` on overflow.
    ///
    /// ```
    /// use hyperion::DType;
    /// assert_eq!(DType::F16.byte_len(&[2, 3]), Some(12));
    /// assert_eq!(DType::F32.byte_len(&[u64::MAX, 2]), None);
    /// ```
    pub fn byte_len(self, shape: &[u64]) -> Option<u64> {
        shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))?
            .checked_mul(self.size())
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for (i, d) in DType::ALL.into_iter().enumerate() {
            assert_eq!(d.code() as usize, i);
            assert_eq!(DType::from_code(d.code()), Some(d));
        }
        assert_eq!(DType::from_code(15), None);
        assert_eq!(DType::from_code(u32::MAX), None);
    }
}
