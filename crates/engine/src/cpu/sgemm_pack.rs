//! Packing for our f32 GEMM (`sgemm`, AVX-512 or AVX2 tile): A into `MR`-row slivers, B into
//! `KC × NR` slivers. The operands whose `k` runs along their contiguous axis — a row-major A (the
//! forward weight, the weight gradient's `dy`) and a column-major B (the weight gradient's
//! im2col matrix read transposed) — must be transposed on the way in; element by element that
//! cost 40 % of the kernel's own time in a 224-px training step, so those two cases move
//! 16 × 16 blocks through registers instead (four shuffle stages, [`transpose16`]; 8 × 8 blocks
//! under AVX2, `sgemm_avx2::transpose_rows`). The other
//! layouts are plain copies. Packing only moves values: the packed slivers hold exactly the
//! operands' elements (and zeros past the edges).
//!
//! The operands may also be f16 or bf16 ([`PackSrc`]; bf16 on the AVX2 packers only): they are
//! widened (exactly) as they are packed, so a half convolution runs the f32 kernel without a
//! widened copy of each operand first; and an autocast weight (f32) is rounded to the half type
//! as it is packed.

use super::amx_pack::RoundedBf16;
use super::sgemm::{MR, NR};
use half::{bf16, f16};

/// An operand element the packers read: f32, f16 or bf16 widened exactly on the way in, or f32
/// rounded to f16 or bf16 (an autocast weight).
pub(crate) trait PackSrc: Copy + Send + Sync + 'static {
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// Whether this CPU runs [`PackSrc::load16`] (AVX-512F and BW for every type that has it,
    /// so the packers, compiled for both, inline it; false for the bf16 types).
    fn simd() -> bool;
    /// The slice itself when `Self` is f32 (the GEMM may then read A in place, unpacked).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// The values as f32 in a fresh buffer (for GEMMs the packers do not serve).
    fn widened(s: &[Self]) -> Vec<f32> {
        s.iter().map(|v| v.to_f32()).collect()
    }
    /// The 16 values at `p` whose `mask` bit is set, as f32 (other lanes 0). (The default,
    /// value by value, serves types whose `simd()` is false.)
    ///
    /// # Safety
    /// [`PackSrc::simd`] holds; the masked elements are readable.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load16(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        let mut v = [0f32; 16];
        for (i, x) in v.iter_mut().enumerate() {
            if mask >> i & 1 == 1 {
                // SAFETY: the masked elements are readable (the caller's contract).
                *x = unsafe { *p.add(i) }.to_f32();
            }
        }
        // SAFETY: `v` holds 16 f32.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(v.as_ptr()) }
    }
    /// Whether this CPU runs [`PackSrc::load8`] and the AVX2 tile
    /// ([`sgemm_avx2`](super::sgemm_avx2): AVX2, FMA and F16C).
    fn avx2() -> bool {
        super::sgemm_avx2::available()
    }
    /// The first `n` (1 to 8) values at `p` as f32 (other lanes 0).
    ///
    /// # Safety
    /// [`PackSrc::avx2`] holds; the `n` elements are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self, n: usize) -> std::arch::x86_64::__m256;
}

/// The first `n` (1 to 8) f32 values at `p` (other lanes 0): a plain load when all 8 (or a
/// 4-lane one for 4), else the `n` values copied into a zeroed group (no access past them).
///
/// # Safety
/// AVX2; the `n` values are readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8_f32(p: *const f32, n: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the first `n` values are readable (the caller's contract).
    unsafe {
        if n >= 8 {
            _mm256_loadu_ps(p)
        } else if n == 4 {
            _mm256_insertf128_ps::<0>(_mm256_setzero_ps(), _mm_loadu_ps(p))
        } else {
            let mut group = [0f32; 8];
            std::ptr::copy_nonoverlapping(p, group.as_mut_ptr(), n.min(8));
            _mm256_loadu_ps(group.as_ptr())
        }
    }
}

impl PackSrc for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn simd() -> bool {
        super::sgemm::available() && super::convert::avx512()
    }
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load16(p: *const f32, mask: u16) -> std::arch::x86_64::__m512 {
        // SAFETY: the masked lanes are readable (the caller's contract).
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32, n: usize) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { load8_f32(p, n) }
    }
}

impl PackSrc for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn simd() -> bool {
        super::sgemm::available() && super::convert::avx512()
    }
    fn as_f32(_: &[f16]) -> Option<&[f32]> {
        None
    }
    /// (In parallel when long; should the host cache's allocation fail, a plain one.)
    fn widened(s: &[f16]) -> Vec<f32> {
        super::convert::widened(s).unwrap_or_else(|_| s.iter().map(|v| v.to_f32()).collect())
    }
    /// A masked 16-bit load (AVX-512BW; the upper 16 lanes of the 32-lane load are masked
    /// off), widened by `vcvtph2ps` (exact).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load16(p: *const f16, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the masked lanes are readable (the caller's contract).
        let h = unsafe { _mm512_maskz_loadu_epi16(mask as u32, p.cast()) };
        _mm512_cvtph_ps(_mm512_castsi512_si256(h))
    }
    /// 8 16-bit values ([`load8_u16`]) widened by `vcvtph2ps` (exact).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16, n: usize) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract (n values readable).
        std::arch::x86_64::_mm256_cvtph_ps(unsafe { load8_u16(p.cast(), n) })
    }
}

/// An f32 value that the packers round to f16 and widen back (nearest even: the value a cast
/// to f16 gives, as f32) — an autocast weight read without its f16 copy.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RoundedF16(pub f32);

impl PackSrc for RoundedF16 {
    fn to_f32(self) -> f32 {
        f16::from_f32(self.0).to_f32()
    }
    fn simd() -> bool {
        super::sgemm::available() && super::convert::avx512()
    }
    fn as_f32(_: &[RoundedF16]) -> Option<&[f32]> {
        None
    }
    /// (In parallel when long; should the host cache's allocation fail, a plain one.)
    fn widened(s: &[RoundedF16]) -> Vec<f32> {
        let v: &[f32] = bytemuck::cast_slice(s);
        super::convert::rounded_through::<f16>(v)
            .unwrap_or_else(|_| s.iter().map(|v| v.to_f32()).collect())
    }
    /// A masked f32 load through `vcvtps2ph` (nearest even, the instruction `half` uses) and
    /// `vcvtph2ps`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load16(p: *const RoundedF16, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // (An autocast weight, read once per pass from memory, down its rows in the
        // transposed packing: the line 512 bytes on along the row is fetched ahead.)
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128).cast());
        // SAFETY: the masked lanes are readable (the caller's contract).
        let v = unsafe { _mm512_maskz_loadu_ps(mask, p.cast()) };
        _mm512_cvtph_ps(_mm512_cvtps_ph::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(v))
    }
    /// An f32 load (masked past `n`) through `vcvtps2ph` (nearest even) and `vcvtph2ps`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const RoundedF16, n: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        let v = unsafe { load8_f32(p.cast(), n) };
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }
}

/// bf16 operands (autocast activations and gradients), widened exactly while packed: by the
/// AVX2 packers only (`simd()` is false: AVX-512 CPUs multiply bf16 on AMX or AVX512-BF16
/// where they have it, and widen it first where they have neither).
impl PackSrc for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn simd() -> bool {
        false
    }
    fn as_f32(_: &[bf16]) -> Option<&[f32]> {
        None
    }
    /// (In parallel when long; should the host cache's allocation fail, a plain one.)
    fn widened(s: &[bf16]) -> Vec<f32> {
        super::convert::widened(s).unwrap_or_else(|_| s.iter().map(|v| v.to_f32()).collect())
    }
    /// 16-bit lanes zero-extended and shifted up by 16 (exact), a NaN made quiet (bit 22 set)
    /// as `half` does.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const bf16, n: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (n values readable).
        let h = unsafe { load8_u16(p.cast(), n) };
        let x = _mm256_cvtepu16_epi32(h);
        let magnitude = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFF));
        let nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7F80));
        let quiet = _mm256_or_si256(x, _mm256_and_si256(nan, _mm256_set1_epi32(0x40)));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(quiet))
    }
}

/// An f32 value that the AVX2 packers round to bf16 and widen back (`half`'s rounding, see
/// `convert::round_bf16_lanes`) — an autocast weight read without its bf16 copy.
impl PackSrc for RoundedBf16 {
    fn to_f32(self) -> f32 {
        bf16::from_f32(self.0).to_f32()
    }
    fn simd() -> bool {
        false
    }
    fn as_f32(_: &[RoundedBf16]) -> Option<&[f32]> {
        None
    }
    /// (In parallel when long; should the host cache's allocation fail, a plain one.)
    fn widened(s: &[RoundedBf16]) -> Vec<f32> {
        let v: &[f32] = bytemuck::cast_slice(s);
        super::convert::rounded_through::<bf16>(v)
            .unwrap_or_else(|_| s.iter().map(|v| v.to_f32()).collect())
    }
    /// Non-NaN `x` becomes `(x + 0x7FFF + ((x >> 16) & 1))` with the low 16 bits cleared
    /// (nearest even; a carry bumps the exponent, up to infinity), NaN `x | 0x0040_0000`
    /// cleared likewise (quiet).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const RoundedBf16, n: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        let x = _mm256_castps_si256(unsafe { load8_f32(p.cast(), n) });
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb);
        let rounded = _mm256_add_epi32(x, bias);
        let magnitude = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFF_FFFF));
        // (Magnitudes are non-negative as signed 32-bit integers.)
        let nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7F80_0000));
        let quiet = _mm256_or_si256(x, _mm256_set1_epi32(0x0040_0000));
        let bits = _mm256_blendv_epi8(rounded, quiet, nan);
        _mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(!0xFFFF)))
    }
}

/// The first `n` (1 to 8) 16-bit values at `p` (other lanes 0): a 16-byte load when all 8,
/// else the `n` values copied into a zeroed group.
///
/// # Safety
/// The `n` values are readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8_u16(p: *const u16, n: usize) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    if n >= 8 {
        // SAFETY: 8 values are readable (the caller's contract).
        unsafe { _mm_loadu_si128(p.cast()) }
    } else {
        let mut group = [0u16; 8];
        // SAFETY: `n` values are readable (the caller's contract); `group` holds 8.
        unsafe {
            std::ptr::copy_nonoverlapping(p, group.as_mut_ptr(), n.min(8));
            _mm_loadu_si128(group.as_ptr().cast())
        }
    }
}

/// Makes `out` at least `len` long (the packers write every element they use: a buffer reused
/// across calls is not zero-filled again each time it had been shorter).
pub(crate) fn grow(out: &mut Vec<f32>, len: usize) {
    if out.len() < len {
        out.resize(len, 0.0);
    }
}

/// Packs rows `0..m` × cols `k0..k0+kc` of A (element `(r, c)` at `a[r*rs + c*cs]`) into
/// `MR`-row slivers: sliver `s` holds `kc` groups of `MR` values; rows past `m` are 0.
pub(crate) fn pack_a<S: PackSrc>(
    a: &[S],
    (rs, cs): (usize, usize),
    m: usize,
    (k0, kc): (usize, usize),
    out: &mut Vec<f32>,
) {
    let slivers = m.div_ceil(MR);
    grow(out, slivers * kc * MR);
    // Column-major A (a transposed weight): full slivers 16 at a time, k step by k step, so
    // that each step reads 192 adjacent values of one weight row (sliver by sliver, each k
    // step read 48 bytes of a different row far from the last, which no prefetcher follows:
    // 7.7 % of an fp16 training step at 8 × 64 px, whose weights are not read in place).
    let mut packed = 0;
    #[cfg(target_arch = "x86_64")]
    if rs == 1 && (S::simd() || S::avx2()) && kc > 0 {
        packed = m / MR;
        for g0 in (0..packed).step_by(16) {
            let group = g0..(g0 + 16).min(packed);
            let src = &a[g0 * MR + k0 * cs..][..(kc - 1) * cs + group.len() * MR];
            let dst = &mut out[g0 * kc * MR..][..group.len() * kc * MR];
            // SAFETY: `S::simd()` (or `S::avx2()`) holds; `src` holds kc runs of
            // `group.len() * MR` values `cs` apart, `dst` the group's slivers.
            unsafe {
                if S::simd() {
                    copy_columns_avx512(src, cs, (kc, group.len()), dst)
                } else {
                    super::sgemm_avx2::copy_columns(src, cs, (kc, group.len()), dst)
                }
            };
        }
    }
    for s in packed..slivers {
        let dst = &mut out[s * kc * MR..][..kc * MR];
        let rows = (m - s * MR).min(MR);
        let first = s * MR * rs + k0 * cs;
        if rs == 1 && rows == MR {
            // Column-major A without AVX-512 or AVX2: each k step's 12 rows are adjacent.
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                for (v, x) in d.iter_mut().zip(&a[first + p * cs..][..MR]) {
                    *v = x.to_f32();
                }
            }
        } else if cs == 1 {
            // Row-major A: the sliver is the transpose of `rows` rows of `kc` values.
            let src: [&[S]; MR] = std::array::from_fn(|i| {
                if i < rows {
                    &a[first + i * rs..][..kc]
                } else {
                    &[]
                }
            });
            transpose_rows(&src, kc, dst, MR);
        } else {
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                for (i, v) in d.iter_mut().enumerate() {
                    *v = if i < rows {
                        a[first + i * rs + p * cs].to_f32()
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Copies columns `j0..j0+cols` of rows `p0..p0+kc` of B (element `(r, c)` at
/// `b[r*rs + c*cs]`) into a `kc × NR` sliver, zero-padded past `cols`. B's own rows are often a
/// power-of-two bytes apart, which would map a whole sliver onto a few L1 sets; packed, it is
/// one sequential stream. `out` holds at least `kc × NR` values.
pub(crate) fn pack_b_sliver<S: PackSrc>(
    (b, (rs, cs)): (&[S], (usize, usize)),
    (p0, kc): (usize, usize),
    (j0, cols): (usize, usize),
    out: &mut [f32],
) {
    let out = &mut out[..kc * NR];
    if cs == 1 {
        #[cfg(target_arch = "x86_64")]
        if (S::simd() || S::avx2()) && cols > 0 {
            let src = &b[p0 * rs + j0..][..(kc - 1) * rs + cols];
            // SAFETY: AVX-512F (or AVX2) was detected; `src` holds rows 0..kc of `cols` values
            // `rs` apart, `out` holds kc * NR.
            unsafe {
                if S::simd() {
                    copy_rows_avx512(src, rs, (kc, cols), out)
                } else {
                    super::sgemm_avx2::copy_rows(src, rs, (kc, cols), out)
                }
            };
            return;
        }
        for (p, row) in out.chunks_exact_mut(NR).enumerate() {
            for (v, x) in row[..cols].iter_mut().zip(&b[(p0 + p) * rs + j0..][..cols]) {
                *v = x.to_f32();
            }
            row[cols..].fill(0.0);
        }
    } else if rs == 1 {
        // Transposed B (the weight gradient's im2col matrix): its columns are contiguous.
        let src: [&[S]; NR] = std::array::from_fn(|j| {
            if j < cols {
                &b[p0 + (j0 + j) * cs..][..kc]
            } else {
                &[]
            }
        });
        transpose_rows(&src, kc, out, NR);
    } else {
        for (p, row) in out.chunks_exact_mut(NR).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = if j < cols {
                    b[(p0 + p) * rs + (j0 + j) * cs].to_f32()
                } else {
                    0.0
                };
            }
        }
    }
}

/// `out[p * NR + j] = src[p * rs + j]` for `j < cols` (≤ `NR`), 0 past it, for `p < kc`: two
/// masked loads and two stores per row (a `memcpy` call per 128 bytes cost more than the copy).
///
/// # Safety
/// `S::simd()` holds; `src` holds `(kc - 1) * rs + cols` values, `out` `kc * NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn copy_rows_avx512<S: PackSrc>(
    src: &[S],
    rs: usize,
    (kc, cols): (usize, usize),
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(kc > 0 && src.len() > (kc - 1) * rs + cols - 1 && out.len() >= kc * NR);
    let (m0, m1) = super::sgemm::masks(cols);
    for p in 0..kc {
        // SAFETY: row p's masked columns lie inside `src`; out row p holds NR values.
        unsafe {
            let s = src.as_ptr().add(p * rs);
            let d = out.as_mut_ptr().add(p * NR);
            _mm512_storeu_ps(d, S::load16(s, m0));
            _mm512_storeu_ps(d.add(16), S::load16(s.add(16), m1));
        }
    }
}

/// For slivers `s < count` and `p < kc`: `out[(s * kc + p) * MR + i] = src[p * cs + s * MR + i]`
/// (`i < MR`), k step by k step across the slivers; one masked load (widened or rounded for
/// f16) and one masked store per sliver and step.
///
/// # Safety
/// `S::simd()` holds; `src` holds `(kc - 1) * cs + count * MR` values, `out` `count * kc * MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn copy_columns_avx512<S: PackSrc>(
    src: &[S],
    cs: usize,
    (kc, count): (usize, usize),
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(kc > 0 && src.len() >= (kc - 1) * cs + count * MR);
    debug_assert!(out.len() >= count * kc * MR);
    let mask: u16 = (1 << MR) - 1;
    for p in 0..kc {
        for s in 0..count {
            // SAFETY: MR values at `p * cs + s * MR` lie inside `src`; MR at
            // `(s * kc + p) * MR` inside `out`.
            unsafe {
                let v = S::load16(src.as_ptr().add(p * cs + s * MR), mask);
                _mm512_mask_storeu_ps(out.as_mut_ptr().add((s * kc + p) * MR), mask, v);
            }
        }
    }
}

/// `dst[p * width + i] = src[i][p]` for `p < len`, `i < width` (`src[i]` empty: zeros).
/// Every non-empty `src[i]` holds at least `len` values; `width ≤ 32`; `dst` holds
/// `len * width`.
fn transpose_rows<S: PackSrc>(src: &[&[S]], len: usize, dst: &mut [f32], width: usize) {
    debug_assert!(width == src.len() && dst.len() >= len * width);
    debug_assert!(src.iter().all(|s| s.is_empty() || s.len() >= len));
    #[cfg(target_arch = "x86_64")]
    if S::simd() {
        // SAFETY: `S::simd()` holds; the extents were stated above (checked in debug).
        unsafe { transpose_rows_avx512(src, len, dst, width) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if S::avx2() {
        // SAFETY: `S::avx2()` holds; the extents were stated above (checked in debug).
        unsafe { super::sgemm_avx2::transpose_rows(src, len, dst, width) };
        return;
    }
    for (p, d) in dst[..len * width].chunks_exact_mut(width).enumerate() {
        for (v, s) in d.iter_mut().zip(src) {
            *v = s.get(p).map_or(0.0, |x| x.to_f32());
        }
    }
}

/// [`transpose_rows`] in 16 × 16 blocks: 16 source rows loaded 16 values at a time (masked
/// at the `len` tail; empty rows are zero vectors), transposed in registers, stored as 16
/// destination rows of up to 16 values (masked at the `width` edge).
///
/// # Safety
/// `S::simd()` holds; the extents of [`transpose_rows`] hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_rows_avx512<S: PackSrc>(
    src: &[&[S]],
    len: usize,
    dst: &mut [f32],
    width: usize,
) {
    use std::arch::x86_64::*;
    for i0 in (0..width).step_by(16) {
        let lanes = (width - i0).min(16);
        let store_mask: u16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
        for p0 in (0..len).step_by(16) {
            let steps = (len - p0).min(16);
            let load_mask: u16 = if steps == 16 { !0 } else { (1 << steps) - 1 };
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate().take(lanes) {
                let s = src[i0 + i];
                if !s.is_empty() {
                    // SAFETY: `s` holds at least `len` values; the mask covers p0..p0+steps.
                    *v = unsafe { S::load16(s.as_ptr().add(p0), load_mask) };
                }
            }
            let t = transpose16(r);
            for (p, v) in t.iter().enumerate().take(steps) {
                // SAFETY: dst holds len * width values; row p0 + p < len, lanes i0..i0+lanes
                // < width.
                unsafe {
                    _mm512_mask_storeu_ps(
                        dst.as_mut_ptr().add((p0 + p) * width + i0),
                        store_mask,
                        *v,
                    )
                };
            }
        }
    }
}

/// The transpose of a 16 × 16 block held as 16 rows: `out[c]` lane `r` = `rows[r]` lane `c`.
/// Pairs of rows interleave 32-bit elements, then 64-bit pairs (each 128-bit lane now holds a
/// 4 × 4 block's column), then two rounds of 128-bit lane shuffles gather each column's four
/// lanes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose16(
    rows: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // t[2i] = (a0 b0 a1 b1 | ...), t[2i+1] = (a2 b2 a3 b3 | ...) per 128-bit lane.
    let t: [__m512; 16] = std::array::from_fn(|j| {
        let (a, b) = (rows[j & !1], rows[j | 1]);
        if j % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4i + q] lane L holds column 4L + q of rows 4i..4i+4.
    let u: [__m512; 16] = std::array::from_fn(|j| {
        let (i, q) = (j / 4, j % 4);
        let (a, b) = (
            _mm512_castps_pd(t[4 * i + q / 2]),
            _mm512_castps_pd(t[4 * i + 2 + q / 2]),
        );
        _mm512_castpd_ps(if q % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        // Lanes 0-1 / 2-3 of row blocks 0 and 1 (x), 2 and 3 (y).
        let x0 = _mm512_shuffle_f32x4::<0x44>(u[q], u[4 + q]);
        let x1 = _mm512_shuffle_f32x4::<0xEE>(u[q], u[4 + q]);
        let y0 = _mm512_shuffle_f32x4::<0x44>(u[8 + q], u[12 + q]);
        let y1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
        out[4 + q] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
        out[8 + q] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
        out[12 + q] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both packers against their element-wise definition, at odd sizes and every layout,
    /// for f32, f16 and bf16 operands (widened exactly while packed) and f32 rounded to either:
    /// with AVX-512 (where the CPU has it), with AVX2, and with neither (the scalar branches;
    /// each turned off on the test thread).
    #[test]
    fn packs_equal_their_definition() {
        use super::super::{sgemm::tests::without_avx512, sgemm_avx2::tests::without_avx2};
        check_all_packers();
        without_avx512(check_all_packers);
        without_avx512(|| without_avx2(check_all_packers));
    }

    fn check_all_packers() {
        let mut draw = super::super::gemm_check::uniform(0x9E37_79B9_7F4A_7C15);
        // (209 rows: a column-major A of more than one group of 16 slivers.)
        let (rows, cols) = (209, 300);
        let data: Vec<f32> = (0..2 * rows * cols).map(|_| draw()).collect();
        check_packers(&data, (rows, cols));
        let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x * 1e3)).collect();
        check_packers(&halves, (rows, cols));
        // f32 values that need rounding to f16 (beyond its range and subnormal ones too),
        // against `half`'s rounding.
        let rounded: Vec<RoundedF16> = data
            .iter()
            .enumerate()
            .map(|(i, &x)| RoundedF16(x * [1.0, 1e5, 3e-6, 7.3][i % 4]))
            .collect();
        check_packers(&rounded, (rows, cols));
        // bf16 (packed by the AVX2 packers, else the scalar ones), with a signalling NaN (made
        // quiet as `half` widens it), an infinity and subnormals among the values.
        let specials = [0x7F81u16, 0xFF80, 0x0001, 0x807F];
        let brain: Vec<bf16> = data
            .iter()
            .enumerate()
            .map(|(i, &x)| match specials.get(i % 37) {
                Some(&bits) => bf16::from_bits(bits),
                None => bf16::from_f32(x * 1e3),
            })
            .collect();
        check_packers(&brain, (rows, cols));
        // f32 rounded to bf16, against `half`: ties to even both ways, a signalling NaN, the
        // largest finite f32 (rounds to infinity), a value that stays finite, subnormals.
        let specials = [
            0x3F80_8000u32,
            0x3F81_8000,
            0x7F80_0001,
            0x7F7F_FFFF,
            0xFF7F_7FFF,
            0x0000_8001,
            0x8000_7FFF,
        ];
        let rounded: Vec<RoundedBf16> = data
            .iter()
            .enumerate()
            .map(|(i, &x)| match specials.get(i % 41) {
                Some(&bits) => RoundedBf16(f32::from_bits(bits)),
                None => RoundedBf16(x * [1.0, 1e30, 3e-38, 7.3][i % 4]),
            })
            .collect();
        check_packers(&rounded, (rows, cols));
    }

    fn check_packers<S: PackSrc>(data: &[S], (rows, cols): (usize, usize)) {
        let layouts = [(cols, 1), (1, rows), (2 * cols, 2)];
        for (li, &(rs, cs)) in layouts.iter().enumerate() {
            let at = |r: usize, c: usize| data[r * rs + c * cs].to_f32();
            for m_rows in [1, 12, 13, 41, 209] {
                for (k0, kc) in [(0, 1), (3, 16), (5, 37), (0, 256)] {
                    let mut out = Vec::new();
                    pack_a(data, (rs, cs), m_rows, (k0, kc), &mut out);
                    for s in 0..m_rows.div_ceil(MR) {
                        for p in 0..kc {
                            for i in 0..MR {
                                let r = s * MR + i;
                                let want = if r < m_rows { at(r, k0 + p) } else { 0.0 };
                                let got = out[(s * kc + p) * MR + i];
                                assert_eq!(got.to_bits(), want.to_bits(), "A {li} {r} {p}");
                            }
                        }
                    }
                }
            }
            for (p0, kc) in [(0, 1), (2, 16), (7, 33)] {
                for (j0, n) in [(0, 32), (5, 17), (260, 1), (9, 31)] {
                    // (Stale values first: the padding must be written, not assumed.)
                    let mut out = vec![f32::NAN; kc * NR + 3];
                    pack_b_sliver((data, (rs, cs)), (p0, kc), (j0, n), &mut out);
                    for p in 0..kc {
                        for j in 0..NR {
                            let want = if j < n { at(p0 + p, j0 + j) } else { 0.0 };
                            let got = out[p * NR + j];
                            assert_eq!(got.to_bits(), want.to_bits(), "B {li} {p} {j}");
                        }
                    }
                }
            }
        }
    }
}
