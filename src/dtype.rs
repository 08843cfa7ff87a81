//! Element types of tensors.

use std::fmt;

pub use crate::ggml::GgmlType;

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
    /// 4-bit float (E2M1), two per byte.
    F4,
    /// 6-bit float, E2M3, packed.
    F6E2M3,
    /// 6-bit float, E3M2, packed.
    F6E3M2,
    /// 8-bit exponent-only scale, E8M0.
    F8E8M0,
    /// 8-bit float, E4M3, finite, no negative zero.
    F8E4M3Fnuz,
    /// 8-bit float, E5M2, finite, no negative zero.
    F8E5M2Fnuz,
    /// Complex of two `f32`.
    C64,
    /// A GGML type, block-quantized ones included, carried as raw blocks.
    Ggml(GgmlType),
}

impl DType {
    /// Every plain (non-GGML) dtype, in code order.
    pub const ALL: [DType; 22] = [
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
        DType::F4,
        DType::F6E2M3,
        DType::F6E3M2,
        DType::F8E8M0,
        DType::F8E4M3Fnuz,
        DType::F8E5M2Fnuz,
        DType::C64,
    ];

    /// Codes from here up are GGML types: `GGML_BASE + ggml type id`.
    pub const GGML_BASE: u32 = 64;

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
            DType::F4 => 15,
            DType::F6E2M3 => 16,
            DType::F6E3M2 => 17,
            DType::F8E8M0 => 18,
            DType::F8E4M3Fnuz => 19,
            DType::F8E5M2Fnuz => 20,
            DType::C64 => 21,
            DType::Ggml(t) => DType::GGML_BASE + t.id(),
        }
    }

    /// The dtype with `.tmai` code `code`, if any.
    pub fn from_code(code: u32) -> Option<DType> {
        if code >= DType::GGML_BASE {
            return GgmlType::from_id(code - DType::GGML_BASE).map(DType::Ggml);
        }
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bits per element; for block-quantized GGML types, the bits per weight
    /// rounded down (`Q4_K`, 4.5 bits, is 4).
    pub fn bits(self) -> u32 {
        match self {
            DType::F4 => 4,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::U8
            | DType::I8
            | DType::Bool
            | DType::F8E4M3
            | DType::F8E5M2
            | DType::F8E8M0
            | DType::F8E4M3Fnuz
            | DType::F8E5M2Fnuz => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::U32 | DType::I32 | DType::F32 => 32,
            DType::U64 | DType::I64 | DType::F64 | DType::C64 => 64,
            DType::Ggml(t) => (t.type_size() * 8 / t.block_size()) as u32,
        }
    }

    /// Bytes per element, for dtypes whose elements are whole bytes (not
    /// packed sub-byte floats, not block-quantized GGML types).
    pub fn element_size(self) -> Option<u64> {
        match self {
            DType::Ggml(t) if t.block_size() == 1 => Some(t.type_size()),
            DType::Ggml(_) => None,
            d if d.bits() % 8 == 0 => Some(u64::from(d.bits() / 8)),
            _ => None,
        }
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
            DType::F4 => "F4",
            DType::F6E2M3 => "F6_E2M3",
            DType::F6E3M2 => "F6_E3M2",
            DType::F8E8M0 => "F8_E8M0",
            DType::F8E4M3Fnuz => "F8_E4M3FNUZ",
            DType::F8E5M2Fnuz => "F8_E5M2FNUZ",
            DType::C64 => "C64",
            DType::Ggml(t) => t.name(),
        }
    }

    /// Bytes taken by a tensor of this dtype and `shape` (outermost dimension
    /// first), or `None` if it overflows or is not a whole number of bytes or
    /// blocks (packed types must fill whole bytes; GGML block types need the
    /// innermost dimension to be a multiple of the block size).
    ///
    /// ```
    /// use hyperion::{DType, GgmlType};
    /// assert_eq!(DType::F16.byte_len(&[2, 3]), Some(12));
    /// assert_eq!(DType::F4.byte_len(&[3]), None);
    /// assert_eq!(DType::Ggml(GgmlType::Q4_0).byte_len(&[2, 64]), Some(2 * 2 * 18));
    /// assert_eq!(DType::F32.byte_len(&[u64::MAX, 2]), None);
    /// ```
    pub fn byte_len(self, shape: &[u64]) -> Option<u64> {
        let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
        if let DType::Ggml(t) = self {
            let inner = shape.last().copied().unwrap_or(1);
            if inner % t.block_size() != 0 {
                return None;
            }
            return (elements / t.block_size()).checked_mul(t.type_size());
        }
        let bits = u64::from(self.bits());
        if bits % 8 == 0 {
            return elements.checked_mul(bits / 8);
        }
        let total = elements.checked_mul(bits)?;
        (total % 8 == 0).then_some(total / 8)
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
        assert_eq!(DType::from_code(22), None);
        assert_eq!(DType::from_code(63), None);
        assert_eq!(DType::from_code(u32::MAX), None);
        for t in GgmlType::all() {
            assert_eq!(
                DType::from_code(DType::Ggml(t).code()),
                Some(DType::Ggml(t))
            );
        }
    }
}

/// How GGML types map to plain dtypes (here rather than in `ggml.rs`, so
/// that the GGML table depends on nothing).
impl GgmlType {
    /// The plain [`DType`] with the same elements, for the types that have
    /// one (`F32`, `F16`, `BF16`, `F64`, `I8`, `I16`, `I32`, `I64`); `None`
    /// for the block-quantized types.
    ///
    /// ```
    /// use hyperion::{DType, GgmlType};
    /// assert_eq!(GgmlType::BF16.plain_dtype(), Some(DType::BF16));
    /// assert_eq!(GgmlType::Q4_K.plain_dtype(), None);
    /// ```
    pub fn plain_dtype(self) -> Option<DType> {
        Some(match self {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::F64 => DType::F64,
            GgmlType::I8 => DType::I8,
            GgmlType::I16 => DType::I16,
            GgmlType::I32 => DType::I32,
            GgmlType::I64 => DType::I64,
            _ => return None,
        })
    }

    /// The dtype a GGUF reader gives a tensor of this type: the plain dtype
    /// where there is one (so `TensorView::as_f32` and `as_slice` work), else
    /// `DType::Ggml(self)`.
    pub fn dtype(self) -> DType {
        self.plain_dtype().unwrap_or(DType::Ggml(self))
    }

    /// The GGML type of a dtype: the inverse of [`GgmlType::dtype`] (also
    /// accepting `DType::Ggml` of a plain type); `None` for dtypes GGML has no
    /// type for (`U32`, `F8E4M3` …).
    ///
    /// ```
    /// use hyperion::{DType, GgmlType};
    /// assert_eq!(GgmlType::of_dtype(DType::F16), Some(GgmlType::F16));
    /// assert_eq!(GgmlType::of_dtype(DType::Ggml(GgmlType::Q8_0)), Some(GgmlType::Q8_0));
    /// assert_eq!(GgmlType::of_dtype(DType::U32), None);
    /// ```
    pub fn of_dtype(dtype: DType) -> Option<GgmlType> {
        match dtype {
            DType::Ggml(t) => Some(t),
            d => GgmlType::all().find(|t| t.plain_dtype() == Some(d)),
        }
    }
}

#[cfg(test)]
mod ggml_tests {

    use super::*;

    #[test]
    fn table_is_consistent() {
        let all: Vec<GgmlType> = GgmlType::all().collect();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert!(
                all[..i].iter().all(|u| u.id() < t.id()),
                "{t:?}: ids ascend"
            );
            assert!(all[..i].iter().all(|u| u.name() != t.name()));
            assert!(t.block_size() >= 1 && t.type_size() >= 1);
            assert_eq!(GgmlType::of_dtype(t.dtype()), Some(*t));
            assert_eq!(GgmlType::of_dtype(DType::Ggml(*t)), Some(*t));
            if let Some(d) = t.plain_dtype() {
                assert_eq!(d.element_size(), Some(t.type_size()), "{t:?}");
                assert_eq!(d.name(), t.name());
            }
        }
        for retired in [4, 5, 31, 32, 33, 36, 37, 38, 43, u32::MAX] {
            assert_eq!(GgmlType::from_id(retired), None);
        }
    }
}
