//! Packing for the AMX bf16 GEMM (`amx::gemm_bf16`): A into 16-row × 32-`k` tiles, B into
//! 16-pair-row × 16-column tiles in the pairwise (VNNI) order `TDPBF16PS` reads. Packing only
//! moves values: the tiles hold exactly the operands' elements, zeros past the edges, and every
//! element of `out` is written (the caller does not zero it). A may also be an f32 operand
//! rounded to bf16 as it is packed ([`RoundedBf16`]: an autocast weight, read without its bf16
//! copy), with `half`'s rounding, so the tiles hold the values a cast would give.
//!
//! Full tiles of the four layouts convolutions use move through AVX-512 registers (element by
//! element, the transposed layouts took 14 % of a bf16 training step, more than the tile
//! multiplications): two rows of 16 bf16 interleave into 16 pairs (32-bit lanes), and the
//! transposed layouts then transpose 16 × 16 pairs with `sgemm_pack::transpose16`. Edge tiles
//! keep the element-wise loops.

use super::amx::{TILE, TK, TM, TN};
use super::sgemm_pack::PackSrc;
use half::bf16;
use rayon::prelude::*;

/// An f32 value that the A packer rounds to bf16 (nearest even, as `half::bf16::from_f32`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RoundedBf16(pub f32);

/// An element of A as [`pack_a`] reads it: bf16 itself, or [`RoundedBf16`].
pub(crate) trait AmxSrc: Copy + Send + Sync + 'static {
    /// The value as bf16.
    fn to_bf16(self) -> bf16;
    /// The 16 values at `p` as bf16 bits in the low halves of 32-bit lanes (high halves 0).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; 16 values are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn lanes16(p: *const Self) -> std::arch::x86_64::__m512i;
    /// As [`lanes16`](AmxSrc::lanes16), lane `i` read only where bit `i` of `mask` is set
    /// (else 0; masked-off values are not accessed).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; the values `mask` selects are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn lanes16_masked(p: *const Self, mask: u16) -> std::arch::x86_64::__m512i;
    /// Writes the 32 values at `p` as 32 bf16 at `out`.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; 32 values are readable at `p`, 32 writable at `out`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn row32(p: *const Self, out: *mut bf16) {
        use std::arch::x86_64::*;
        // SAFETY: 32 readable values at `p`, 32 writable bf16 at `out` (the caller's contract).
        unsafe {
            let lo = _mm512_cvtepi32_epi16(Self::lanes16(p));
            let hi = _mm512_cvtepi32_epi16(Self::lanes16(p.add(16)));
            _mm256_storeu_si256(out.cast(), lo);
            _mm256_storeu_si256(out.add(16).cast(), hi);
        }
    }
    /// The 32 values at `p` whose `mask` bit is set as bf16 bits in the 16-bit lanes (others
    /// 0; masked-off values are not accessed).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; the values `mask` selects are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn lanes32_masked(p: *const Self, mask: u32) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: each half reads only the values its 16 bits of `mask` select.
        unsafe {
            let lo = _mm512_cvtepi32_epi16(Self::lanes16_masked(p, mask as u16));
            let hi = _mm512_cvtepi32_epi16(Self::lanes16_masked(
                p.wrapping_add(16),
                (mask >> 16) as u16,
            ));
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
        }
    }
}

impl AmxSrc for bf16 {
    fn to_bf16(self) -> bf16 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn lanes16(p: *const bf16) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: 16 readable bf16 (32 bytes) at `p` (the caller's contract).
        unsafe { _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn lanes16_masked(p: *const bf16, mask: u16) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: only the selected values (the low 16 of a 32-lane masked load) are read.
        unsafe {
            let v = _mm512_maskz_loadu_epi16(u32::from(mask), p.cast());
            _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn row32(p: *const bf16, out: *mut bf16) {
        use std::arch::x86_64::*;
        // SAFETY: 64 readable bytes at `p`, 64 writable at `out` (the caller's contract).
        unsafe { _mm512_storeu_si512(out.cast(), _mm512_loadu_si512(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn lanes32_masked(p: *const bf16, mask: u32) -> std::arch::x86_64::__m512i {
        // SAFETY: only the selected values are read (the caller's contract).
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_epi16(mask, p.cast()) }
    }
}

impl AmxSrc for RoundedBf16 {
    fn to_bf16(self) -> bf16 {
        bf16::from_f32(self.0)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn lanes16(p: *const RoundedBf16) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // (The weight is read once per pass, from memory: the line 512 bytes on along the
        // same row is fetched ahead — the next tiles of either packing order read it.)
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128).cast());
        // SAFETY: 16 readable f32 (64 bytes) at `p` (the caller's contract).
        unsafe { super::convert::round_bf16_lanes(_mm512_loadu_si512(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn lanes16_masked(p: *const RoundedBf16, mask: u16) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: only the selected f32 are read.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, p.cast());
            super::convert::round_bf16_lanes(_mm512_castps_si512(v))
        }
    }
}

/// The high bf16 part of an f16 value `S` ([`PackSrc`]: f16 itself, or an f32 rounded to f16
/// as it is packed): the value rounded to bf16 (nearest even). With [`Lo`] it splits the
/// value exactly: an f16 has 11 significant bits, its bf16 rounding 8, and the remainder —
/// at most half a bf16 unit in the last place, a multiple of 2^-24 — fits the 8 bits of a
/// bf16 with room to spare; bf16's exponent range holds both parts of every f16 (subnormals
/// included), so the AMX unit, which flushes values below 2^-126, sees none. Products of
/// parts are exact in f32, so an f16 GEMM runs as four bf16 ones (`amx::gemm_f16`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hi<S>(pub S);

/// The low bf16 part of an f16 value: its difference from [`Hi`] (exact), 0 for an infinity or
/// a NaN (whose [`Hi`] part carries it).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lo<S>(pub S);

// SAFETY: both are `repr(transparent)` wrappers of their one field.
unsafe impl<S> bytemuck::TransparentWrapper<S> for Hi<S> {}
// SAFETY: as above.
unsafe impl<S> bytemuck::TransparentWrapper<S> for Lo<S> {}

/// The low part of `x` given its high part `hi` (see [`Lo`]).
fn low_part(x: f32, hi: bf16) -> bf16 {
    match x.is_finite() {
        true => bf16::from_f32(x - hi.to_f32()),
        false => bf16::ZERO,
    }
}

/// 16 f32 lanes of f16 values split into bf16 parts: `(hi, lo)` as bf16 bits in the low halves
/// of 32-bit lanes (see [`Hi`], [`Lo`]).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn split_lanes(
    x: std::arch::x86_64::__m512,
) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(x);
    let hi = super::convert::round_bf16_lanes(bits);
    let rest = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(hi)));
    // (The rest has at most 4 significant bits: its low 16 bits are zero, the shift is exact.)
    let magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFF_FFFF));
    let finite = _mm512_cmplt_epu32_mask(magnitude, _mm512_set1_epi32(0x7F80_0000));
    let lo = _mm512_maskz_srli_epi32::<16>(finite, _mm512_castps_si512(rest));
    (hi, lo)
}

macro_rules! split_src {
    ($part:ident, $pick:expr) => {
        impl<S: PackSrc> AmxSrc for $part<S> {
            fn to_bf16(self) -> bf16 {
                let x = self.0.to_f32();
                let hi = bf16::from_f32(x);
                $pick((hi, low_part(x, hi)))
            }
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw")]
            unsafe fn lanes16(p: *const Self) -> std::arch::x86_64::__m512i {
                // SAFETY: 16 readable values at `p` (the caller's contract).
                unsafe { Self::lanes16_masked(p, u16::MAX) }
            }
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw")]
            unsafe fn lanes16_masked(p: *const Self, mask: u16) -> std::arch::x86_64::__m512i {
                // SAFETY: only the selected values are read (the caller's contract; `PackSrc`
                // holds its `simd` whenever AVX-512F/BW do).
                $pick(split_lanes(unsafe { S::load16(p.cast(), mask) }))
            }
        }
    };
}
split_src!(Hi, |(hi, _)| hi);
split_src!(Lo, |(_, lo)| lo);

/// Packs row slivers `first..` of `A [m × k]` (element `(r, c)` at `a[r*rs + c*cs]`; sliver
/// `s` = rows `16·s..16·s + 16`) into tiles: the `i`-th sliver of `out`, k block `b` at
/// `((i * kb + b) * TILE)`, row-major 16 × 32, zero-padded past `m` and `k`. `out` holds a
/// whole number of slivers of `kb` tiles; every element is written. Serial: the GEMM packs
/// each worker's panel of A right before multiplying it, so the panel stays in that core's
/// cache instead of going out to memory and back.
pub(crate) fn pack_a<S: AmxSrc>(
    a: &[S],
    (rs, cs): (usize, usize),
    (m, k): (usize, usize),
    first: usize,
    out: &mut [bf16],
) {
    let kb = k.div_ceil(TK);
    let fast = super::convert::avx512();
    // k block by k block across the panel's slivers: for a column-major A (the transposed
    // weight of an input gradient) the tiles of one block read the same 32 columns onward of
    // each row, so the panel reads every row sequentially (each tile alone would take one
    // cache line from each of 16 rows far apart, which no prefetcher follows).
    for blk in 0..kb {
        for (si, sliver) in out.chunks_exact_mut(kb * TILE).enumerate() {
            let tile = &mut sliver[blk * TILE..][..TILE];
            pack_a_tile(a, (rs, cs), (m, k), (first + si, blk), tile, fast);
        }
    }
}

/// Tile `(s, blk)` of [`pack_a`] (`fast`: the CPU has AVX-512F/BW).
fn pack_a_tile<S: AmxSrc>(
    a: &[S],
    (rs, cs): (usize, usize),
    (m, k): (usize, usize),
    (s, blk): (usize, usize),
    tile: &mut [bf16],
    fast: bool,
) {
    let (r0, c0) = (s * TM, blk * TK);
    let (rows, cols) = (m.saturating_sub(r0).min(TM), (k - c0).min(TK));
    let full = rows == TM && cols == TK;
    let base = r0 * rs + c0 * cs;
    #[cfg(target_arch = "x86_64")]
    if full && fast && (cs == 1 || rs == 1) {
        // SAFETY: AVX-512F/BW detected; a full tile's 16 rows × 32 columns lie inside `a` (the
        // caller's extent check), `tile` holds TILE values.
        unsafe {
            if cs == 1 {
                copy_a_rows(&a[base..], rs, tile)
            } else {
                transpose_a(&a[base..], cs, tile)
            }
        };
        return;
    }
    let _ = fast;
    for (i, row) in tile.chunks_exact_mut(TK).enumerate() {
        if i >= rows {
            row.fill(bf16::ZERO);
            continue;
        }
        for (j, v) in row.iter_mut().enumerate() {
            *v = if j < cols {
                a[base + i * rs + j * cs].to_bf16()
            } else {
                bf16::ZERO
            };
        }
    }
}

/// Packs `B [k × n]` (element `(r, c)` at `b[r*rs + c*cs]`) into tiles: column sliver `t`
/// (16 columns), k block `b` at `((t * kb + b) * TILE)`; inside, pair row `p` holds
/// `(B[2p][c], B[2p+1][c])` for the 16 columns (the order `TDPBF16PS` reads), zero-padded.
/// `out` holds a whole number of slivers of `kb` tiles (slivers past `n`: all zero).
pub(crate) fn pack_b<S: AmxSrc>(
    b: &[S],
    (rs, cs): (usize, usize),
    (k, n): (usize, usize),
    out: &mut [bf16],
) {
    let kb = k.div_ceil(TK);
    let fast = super::convert::avx512();
    out.par_chunks_mut(kb * TILE)
        .enumerate()
        .for_each(|(t, sliver)| {
            let (c0, cols) = (t * TN, n.saturating_sub(t * TN).min(TN));
            for (blk, tile) in sliver.chunks_exact_mut(TILE).enumerate() {
                let r0 = blk * TK;
                let rows = (k - r0).min(TK);
                let base = r0 * rs + c0 * cs;
                #[cfg(target_arch = "x86_64")]
                if cols == TN && fast && (cs == 1 || rs == 1) {
                    // SAFETY: AVX-512F/BW detected; the tile's `rows` rows × 16 columns lie
                    // inside `b` (the caller's extent check), `tile` holds TILE values.
                    unsafe {
                        if cs == 1 {
                            interleave_b_rows(&b[base..], rs, rows, tile)
                        } else {
                            transpose_b(&b[base..], cs, rows, tile)
                        }
                    };
                    continue;
                }
                for (q, v) in tile.iter_mut().enumerate() {
                    // Pair row q / 32, column (q % 32) / 2, row 2·(q / 32) + q % 2 of the block.
                    let (r, j) = (2 * (q / (2 * TN)) + q % 2, (q % (2 * TN)) / 2);
                    *v = if r < rows && j < cols {
                        b[base + r * rs + j * cs].to_bf16()
                    } else {
                        bf16::ZERO
                    };
                }
            }
        });
}

/// 16 values at `even` and 16 at `odd` as 16 bf16 pairs `(even[i], odd[i])`, one per 32-bit
/// lane (the first of a pair in the low half: its lower address).
///
/// # Safety
/// The CPU has AVX-512F/BW; 16 values are readable at each pointer.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pairs<S: AmxSrc>(even: *const S, odd: *const S) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: 16 readable values at each pointer.
    unsafe {
        let (e, o) = (S::lanes16(even), S::lanes16(odd));
        _mm512_or_si512(e, _mm512_slli_epi32::<16>(o))
    }
}

/// Tile row `i` = the 32 contiguous values at `a[i * rs..]` (row-major A).
///
/// # Safety
/// The CPU has AVX-512F/BW; `a` holds `15 * rs + 32` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn copy_a_rows<S: AmxSrc>(a: &[S], rs: usize, tile: &mut [bf16]) {
    debug_assert!(a.len() >= 15 * rs + TK && tile.len() >= TILE);
    for i in 0..TM {
        // SAFETY: row i's 32 values lie inside `a`; tile row i inside `tile`.
        unsafe { S::row32(a.as_ptr().add(i * rs), tile.as_mut_ptr().add(i * TK)) };
    }
}

/// Tile row `i` = `(a[i + 2q·cs], a[i + (2q+1)·cs])` for pairs `q < 16` (column-major A: the
/// transposed weight of the input gradient): 16 pair vectors, transposed.
///
/// # Safety
/// The CPU has AVX-512F/BW; `a` holds `31 * cs + 16` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_a<S: AmxSrc>(a: &[S], cs: usize, tile: &mut [bf16]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= 31 * cs + TM && tile.len() >= TILE);
    let p = a.as_ptr();
    // SAFETY: columns 0..32 hold 16 values each inside `a`.
    let v: [__m512; 16] = std::array::from_fn(|q| unsafe {
        _mm512_castsi512_ps(pairs(p.add(2 * q * cs), p.add((2 * q + 1) * cs)))
    });
    for (i, row) in super::sgemm_pack::transpose16(v).iter().enumerate() {
        // SAFETY: tile row i (64 bytes) lies inside `tile`.
        unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(i * TK).cast(), *row) };
    }
}

/// Pair row `p` = rows `2p` and `2p + 1` of a row-major B interleaved (16 columns); rows from
/// `rows` (≤ 32) on are zeros.
///
/// # Safety
/// The CPU has AVX-512F/BW; `b` holds `(rows - 1) * rs + 16` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleave_b_rows<S: AmxSrc>(b: &[S], rs: usize, rows: usize, tile: &mut [bf16]) {
    use std::arch::x86_64::*;
    debug_assert!((1..=TK).contains(&rows) && tile.len() >= TILE);
    debug_assert!(b.len() >= (rows - 1) * rs + TN);
    let s = b.as_ptr();
    for p in 0..TK / 2 {
        let out = tile.as_mut_ptr().wrapping_add(p * 2 * TN);
        // SAFETY: rows 2p and 2p + 1 (when < `rows`) hold 16 values each inside `b`; pair
        // row p lies inside `tile`.
        unsafe {
            let v = match rows - (2 * p).min(rows) {
                0 => _mm512_setzero_si512(),
                1 => S::lanes16(s.add(2 * p * rs)),
                _ => pairs(s.add(2 * p * rs), s.add((2 * p + 1) * rs)),
            };
            _mm512_storeu_si512(out.cast(), v);
        }
    }
}

/// Pair row `p`, column `j` = the adjacent pair at `b[j·cs + 2p]` (column-major B: the weight
/// gradient's im2col matrix read transposed): each column's 32 values are 16 pairs, and the
/// 16 columns' pair vectors are transposed. Rows from `rows` (≤ 32) on are zeros (a last k
/// block; at small images the whole `k`).
///
/// # Safety
/// The CPU has AVX-512F/BW; `b` holds `15 * cs + rows` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_b<S: AmxSrc>(b: &[S], cs: usize, rows: usize, tile: &mut [bf16]) {
    use std::arch::x86_64::*;
    debug_assert!((1..=TK).contains(&rows) && tile.len() >= TILE);
    debug_assert!(b.len() >= 15 * cs + rows);
    let s = b.as_ptr();
    let mask = u32::MAX >> (TK - rows);
    // SAFETY: column j's first `rows` values lie inside `b` (the mask reads no others).
    let v: [__m512; 16] = std::array::from_fn(|j| unsafe {
        _mm512_castsi512_ps(S::lanes32_masked(s.add(j * cs), mask))
    });
    for (p, row) in super::sgemm_pack::transpose16(v).iter().enumerate() {
        // SAFETY: pair row p (64 bytes) lies inside `tile`.
        unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(p * 2 * TN).cast(), *row) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 (all 65 536 bit patterns, and f32 values rounded to f16) splits into bf16
    /// parts that sum to it exactly, infinities and NaNs into themselves and 0; the packers'
    /// AVX-512 paths (full tiles) give the element-wise parts, for A and for B in both layouts.
    #[test]
    fn f16_splits_into_exact_bf16_parts() {
        use bytemuck::TransparentWrapper;
        use half::f16;
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for x in &all {
            let (hi, lo) = (Hi(*x).to_bf16(), Lo(*x).to_bf16());
            if x.is_finite() {
                assert_eq!(hi.to_f64() + lo.to_f64(), x.to_f64(), "{x:?}");
                assert!(
                    lo.to_f64().abs() <= x.to_f64().abs() / 256.0,
                    "{x:?}: low part {lo}"
                );
            } else {
                let same = (x.is_nan() && hi.is_nan()) || hi.to_f64() == x.to_f64();
                assert!(same && lo.to_bits() == 0, "{x:?}: {hi:?} {lo:?}");
            }
        }
        let mut draw = super::super::gemm_check::uniform(0x2545_F491_4F6C_DD1D);
        let wide: Vec<crate::cpu::sgemm_pack::RoundedF16> = (0..all.len())
            .map(|_| crate::cpu::sgemm_pack::RoundedF16(draw() * 1e4))
            .collect();
        for v in &wide {
            let x = f16::from_f32(v.0).to_f64();
            assert_eq!(Hi(*v).to_bf16().to_f64() + Lo(*v).to_bf16().to_f64(), x);
        }
        // 2048 × 32: full tiles only (the vector paths), row- and column-major.
        let (m, k) = (2048, 32);
        for (rs, cs) in [(k, 1), (1, m)] {
            let mut out = vec![bf16::NAN; m * k];
            let check = |out: &[bf16], part: &dyn Fn(f16) -> bf16, what: &str| {
                for (q, v) in out.iter().enumerate() {
                    let (s, i, j) = (q / TILE, q % TILE / TK, q % TK);
                    let want = part(all[(s * TM + i) * rs + j * cs]);
                    assert_eq!(v.to_bits(), want.to_bits(), "{what} ({rs},{cs}) at {q}");
                }
            };
            pack_a(Hi::wrap_slice(&all[..]), (rs, cs), (m, k), 0, &mut out);
            check(&out, &|x| Hi(x).to_bf16(), "A high");
            pack_a(Lo::wrap_slice(&all[..]), (rs, cs), (m, k), 0, &mut out);
            check(&out, &|x| Lo(x).to_bf16(), "A low");
            // The same values as B [k × n] = [32 × 2048], packed against the definition.
            let (kk, n) = (k, m);
            let (brs, bcs) = (cs, rs);
            for (src, part) in [
                (0, &(|x: f16| Hi(x).to_bf16()) as &dyn Fn(f16) -> bf16),
                (1, &|x: f16| Lo(x).to_bf16()),
            ] {
                let mut out = vec![bf16::NAN; n * kk];
                match src {
                    0 => pack_b(Hi::wrap_slice(&all[..]), (brs, bcs), (kk, n), &mut out),
                    _ => pack_b(Lo::wrap_slice(&all[..]), (brs, bcs), (kk, n), &mut out),
                }
                for (q, v) in out.iter().enumerate() {
                    let (t, w) = (q / TILE, q % TILE);
                    let (r, c) = (2 * (w / (2 * TN)) + w % 2, t * TN + w % (2 * TN) / 2);
                    let want = part(all[r * brs + c * bcs]);
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "B part {src} ({brs},{bcs}) {q}"
                    );
                }
            }
        }
    }

    /// Both packers against their element-wise definition in every layout, at sizes with full
    /// and edge tiles, into buffers pre-filled with NaN (every element must be written).
    #[test]
    fn packs_equal_their_definition() {
        let mut draw = super::super::gemm_check::uniform(0x5851_F42D_4C95_7F2D);
        let (rows, cols) = (50, 97);
        let data: Vec<bf16> = (0..2 * rows * cols)
            .map(|_| bf16::from_f32(draw()))
            .collect();
        // f32 values with low bits that decide the rounding (ties, carries into the exponent,
        // subnormals, NaN, infinities among them).
        let specials = [
            0x3F80_8000u32,
            0x3F81_8000,
            0x7F7F_FFFF,
            0x0000_8001,
            0x7FC0_0001,
        ];
        let data32: Vec<f32> = (0..2 * rows * cols)
            .map(|i| match specials.get(i % 97) {
                Some(&bits) => f32::from_bits(bits),
                None => draw() * 3.7,
            })
            .chain([f32::INFINITY, f32::NEG_INFINITY])
            .collect();
        for (rs, cs) in [(cols, 1), (1, rows), (2 * cols, 2)] {
            let at = |r: usize, c: usize| data[r * rs + c * cs];
            for (m, k) in [(1usize, 1usize), (16, 32), (33, 64), (50, 97), (17, 31)] {
                let kb = k.div_ceil(TK);
                let mut out = vec![bf16::NAN; 2 * m.div_ceil(2 * TM) * kb * TILE];
                pack_a(&data, (rs, cs), (m, k), 0, &mut out);
                for (q, v) in out.iter().enumerate() {
                    let (s, b, i, j) = (q / (kb * TILE), q / TILE % kb, q % TILE / TK, q % TK);
                    let (r, c) = (s * TM + i, b * TK + j);
                    let want = if r < m && c < k { at(r, c) } else { bf16::ZERO };
                    assert_eq!(v.to_bits(), want.to_bits(), "A ({rs},{cs}) {m}x{k} at {q}");
                }
                // A as f32 values rounded while packed: the tiles hold `half`'s rounding.
                let wide: Vec<RoundedBf16> = data32.iter().map(|&v| RoundedBf16(v)).collect();
                let mut out32 = vec![bf16::NAN; out.len()];
                pack_a(&wide, (rs, cs), (m, k), 0, &mut out32);
                for (q, v) in out32.iter().enumerate() {
                    let (s, b, i, j) = (q / (kb * TILE), q / TILE % kb, q % TILE / TK, q % TK);
                    let (r, c) = (s * TM + i, b * TK + j);
                    let want = match r < m && c < k {
                        true => bf16::from_f32(data32[r * rs + c * cs]),
                        false => bf16::ZERO,
                    };
                    assert_eq!(v.to_bits(), want.to_bits(), "rounded A ({rs},{cs}) {m}x{k}");
                }
                // A panel from sliver 1 on: those slivers of the whole pack (zeros past it).
                let mut panel = vec![bf16::NAN; 2 * kb * TILE];
                pack_a(&data, (rs, cs), (m, k), 1, &mut panel);
                for (q, v) in panel.iter().enumerate() {
                    let want = out.get(kb * TILE + q).copied().unwrap_or(bf16::ZERO);
                    assert_eq!(v.to_bits(), want.to_bits(), "A panel ({rs},{cs}) {m}x{k}");
                }
                // The same extents as B [k × n] with n = m.
                let (kk, n) = (m, k);
                let kb = kk.div_ceil(TK);
                let mut out = vec![bf16::NAN; 2 * n.div_ceil(2 * TN) * kb * TILE];
                pack_b(&data, (rs, cs), (kk, n), &mut out);
                for (q, v) in out.iter().enumerate() {
                    let (t, b, w) = (q / (kb * TILE), q / TILE % kb, q % TILE);
                    let (r, c) = (
                        b * TK + 2 * (w / (2 * TN)) + w % 2,
                        t * TN + w % (2 * TN) / 2,
                    );
                    let want = if r < kk && c < n {
                        at(r, c)
                    } else {
                        bf16::ZERO
                    };
                    assert_eq!(v.to_bits(), want.to_bits(), "B ({rs},{cs}) {kk}x{n} at {q}");
                }
            }
        }
    }
}
