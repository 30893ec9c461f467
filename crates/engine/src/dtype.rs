//! Element types and their conversions.
//!
//! Float conversions round to nearest even, overflow to ±inf, keep subnormals and NaN; they are
//! the conversions of the `half` crate (bit-exact with IEEE 754). Float → `I64` truncates toward
//! zero like PyTorch's `.long()` (NaN and out-of-range values saturate, as Rust's `as` does).

use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary16.
    F16,
    /// bfloat16 (8 exponent bits, 7 mantissa bits).
    BF16,
    /// IEEE binary32.
    F32,
    /// IEEE binary64 (CPU: references and gradcheck).
    F64,
    /// 64-bit signed integers (class labels, pooling indices).
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }
    /// True for the floating point types.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64)
    }
    /// True for the 16-bit float types.
    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }
    /// Lower-case name as PyTorch spells it (`float16`, `bfloat16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
        }
    }
    /// The wider of two float types (promotion for binary ops): F64 > F32 > {F16, BF16};
    /// F16 with BF16 promotes to F32, as in PyTorch.
    pub fn promote(a: DType, b: DType) -> DType {
        use DType::*;
        match (a, b) {
            (x, y) if x == y => x,
            (F64, _) | (_, F64) => F64,
            (F32, _) | (_, F32) => F32,
            (I64, x) | (x, I64) => x,
            _ => F32,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that is the element of a tensor of some [`DType`].
pub trait Element:
    Copy + Send + Sync + fmt::Debug + bytemuck::Pod + crate::storage::StorageElement + 'static
{
    /// The matching dtype.
    const DTYPE: DType;
    /// Converts to f64 (exact for every type but very large `I64`).
    fn to_f64(self) -> f64;
    /// Converts from f64 with this type's rounding (nearest even for floats).
    fn from_f64(v: f64) -> Self;
    /// Converts from f32 with this type's rounding (nearest even for floats).
    fn from_f32(v: f32) -> Self;
    /// Converts to f32 (exact for F16/BF16/F32).
    fn to_f32(self) -> f32;
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl Element for i64 {
    const DTYPE: DType = DType::I64;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as i64
    }
    fn from_f32(v: f32) -> Self {
        v as i64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}
