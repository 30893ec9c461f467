//! The bf16 GEMM's block kernel on AVX512-BF16 (`VDPBF16PS`, AMD Zen 4/5, Intel Cooper Lake
//! and later): for CPUs with bf16 dot products but no AMX tiles (or without Linux's tile
//! permission). It reads the AMX packing unchanged (`amx_pack.rs`) and computes the same
//! 32 × 32 blocks of C as [`amx`](super::amx)'s tile kernel, so `amx::gemm_bf16` runs either.
//!
//! **Numerics.** `VDPBF16PS` multiplies two pairs of bf16 (each product exact in f32) and adds
//! them to the f32 accumulator one after the other, each addition rounded to nearest even:
//! every element of C is a sum of exact products in `k` order (pairs swapped), within DESIGN.md's
//! f32 GEMM bound (`K · 2^-23 · Σ|a||b|`). Like AMX, the instruction treats bf16 subnormal
//! inputs as zero and flushes subnormal f32 results (an absolute error of at most
//! `2^-126 · (1 + Σ|b|)` per element). `HEMI_CPU_NO_BF16_DOT=1` turns the path off.
//!
//! **Register tile.** 8 rows × 32 columns of C in 16 zmm accumulators; per pair of `k`, two
//! B vectors (16 columns × 2 `k` each: one row of a packed B tile) and 8 A pairs broadcast
//! from the A tile's rows (an embedded-broadcast operand), 16 `VDPBF16PS`. A 32 × 32 block is
//! four such row groups.
//!
//! Prediction (roofline of one core): 2 × 16 lanes × 2 products × 2 flops = 128 flop/cycle,
//! twice the f32 FMA kernel's (`sgemm`); the loop issues 10 loads per 16 dot products, so it is
//! bound by the dot-product units.

use super::amx::{TILE, TK};
use half::bf16;

/// Whether this CPU has AVX512-BF16 (with AVX-512F/BW) for [`block`] (detected once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::env::var_os("HEMI_CPU_NO_BF16_DOT").is_none()
                && super::convert::avx512()
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Rows of C per register tile.
const ROWS: usize = 8;

/// One 32 × 32 block of C from A slivers `2·bi, 2·bi+1` and B slivers `2·bj, 2·bj+1` (AMX
/// packing) over `kb` k blocks of a product with inner dimension `k`, into `acc` (row-major
/// 32 × 32 f32, overwritten). The last k block's pairs past `k` (zero padding) are skipped:
/// a product with `k = 4` (a weight gradient at 4 output pixels) runs 2 pairs, not 16.
///
/// # Safety
/// [`available`] holds; `pa` holds the A slivers and `pb` the B slivers named (each
/// `kb * TILE` long).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn block(
    pa: &[bf16],
    pb: &[bf16],
    (bi, bj, kb): (usize, usize, usize),
    k: usize,
    acc: &mut [f32; 1024],
) {
    use std::arch::x86_64::*;
    let sliver = kb * TILE;
    debug_assert!(k > (kb - 1) * TK && k <= kb * TK);
    let b0 = pb[2 * bj * sliver..][..sliver].as_ptr();
    let b1 = pb[(2 * bj + 1) * sliver..][..sliver].as_ptr();
    for group in 0..4 {
        // Rows 8·(group % 2).. of A sliver 2·bi + group / 2 (a tile row is TK bf16).
        let a = pa[(2 * bi + group / 2) * sliver..][..sliver].as_ptr();
        let a = a.wrapping_add((group % 2) * ROWS * TK);
        let mut c = [[_mm512_setzero_ps(); 2]; ROWS];
        for blk in 0..kb {
            let o = blk * TILE;
            for p in 0..(k - blk * TK).min(TK).div_ceil(2) {
                // SAFETY: pair row `p` (64 bytes) of tile `blk` of each B sliver, and pair `p`
                // of rows 8·(group % 2) + r (< 16) of tile `blk` of the A sliver, all lie in the
                // slivers (`blk < kb`, checked lengths above).
                unsafe {
                    let x0: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(b0.add(o + p * 32).cast()));
                    let x1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(b1.add(o + p * 32).cast()));
                    for (r, cr) in c.iter_mut().enumerate() {
                        let pair = a.add(o + r * TK + 2 * p).cast::<i32>().read_unaligned();
                        let y: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                        cr[0] = _mm512_dpbf16_ps(cr[0], y, x0);
                        cr[1] = _mm512_dpbf16_ps(cr[1], y, x1);
                    }
                }
            }
        }
        for (r, cr) in c.iter().enumerate() {
            let row = &mut acc[(group * ROWS + r) * 32..][..32];
            // SAFETY: `row` holds 32 f32 (two 16-lane stores).
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), cr[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), cr[1]);
            }
        }
    }
}
