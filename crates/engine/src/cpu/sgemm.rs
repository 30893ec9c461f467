//! f32 GEMM with an AVX-512 microkernel, chosen at run time where the CPU has AVX-512F (the
//! `gemm` crate's AVX-512 kernels need a nightly compiler; on stable it runs AVX2 only). Other
//! CPUs, and f64, keep the `gemm` crate.
//!
//! The shapes hemi multiplies on the CPU are mostly small (one image of a convolution:
//! `C_out × (H·W) × (C_in·9)`), so packing must cost little: A is packed `KC` deep into
//! `MR`-row slivers (zero-padded), each `KC × NR` sliver of B (any strides: the weight gradient
//! reads a transposed one) is packed once and used by every row tile, and a `MR × NR = 12 × 32`
//! register tile (24 zmm accumulators, A broadcast from the sliver) runs `KC` fused
//! multiply-adds per element, with masked stores at the column edge. C is accumulated across `KC` passes in memory. Every element is a sum of f32
//! FMAs in `k` order, so the error bound is DESIGN.md's GEMM bound (`K · 2^-24 · |A||B|`,
//! within the stated `K · 2^-23`).
//!
//! Prediction (roofline of one core): 2 FMA units × 16 lanes × 2 flops = 64 flop/cycle; the
//! kernel issues 24 FMAs per 2 loads + 12 broadcasts per k step, so it is FMA-bound at about
//! 90% of that; the `gemm` crate's AVX2 kernel peaks at half of it (8 lanes).

/// Rows of the register tile.
pub(crate) const MR: usize = 12;
/// Columns of the register tile (two zmm vectors).
pub(crate) const NR: usize = 32;
/// Depth of one pass over k (A and B slivers of this depth stay in L1).
const KC: usize = 256;

/// Whether this CPU runs the AVX-512 kernel (detected once; `HEMI_CPU_NO_AVX512` turns it off
/// for comparisons).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::env::var_os("HEMI_CPU_NO_AVX512").is_none()
                && std::arch::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX-512 kernel beats the `gemm` crate for an `m × n` product: it needs wide rows
/// of C. Measured per ResNet shape (one core, a throwaway timing loop over both kernels; the
/// train-step bench shows the effect): 64×256×576 108 vs 79 GFLOP/s, 64×3136×576 94 vs 77; but
/// 256×16×2304 36 vs 95 and 512×4×4608 9 vs 28 (most of each 32-wide tile masked off) — narrow
/// products stay with the crate (the convolutions now batch images so N ≥ 256).
pub(crate) fn suits((m, n): (usize, usize)) -> bool {
    available() && n >= 64 && m >= 16
}

use super::sgemm_pack::{pack_a, pack_b_sliver, PackSrc};

thread_local! {
    /// Packing buffers reused across calls on this thread (no allocation or zero-fill per call).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One register tile: `C[rows × cols] (+)= A_sliver · B[kc × cols]`, where the A sliver holds
/// `kc` groups of `MR` values, B rows start `b_rs` apart, C rows `c_rs` apart; `mask0/1` select
/// the valid columns of the two 16-lane halves.
///
/// # Safety
/// The CPU has AVX-512F; `a` is valid for `kc * MR` reads; for `p < kc`, the `cols` floats at
/// `b + p*b_rs` are readable; for `i < rows`, the `cols` floats at `c + i*c_rs` are writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    c_rs: usize,
    rows: usize,
    (mask0, mask1): (u16, u16),
    load_c: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if load_c {
        for (i, row) in acc.iter_mut().enumerate() {
            if i < rows {
                // SAFETY: row i < rows of C is writable (so readable) for the masked columns.
                unsafe {
                    row[0] = _mm512_maskz_loadu_ps(mask0, c.add(i * c_rs));
                    row[1] = _mm512_maskz_loadu_ps(mask1, c.add(i * c_rs + 16));
                }
            }
        }
    }
    for p in 0..kc {
        // SAFETY: B row p is readable for the masked columns; A holds kc * MR values.
        unsafe {
            let bp = b.add(p * b_rs);
            let b0 = _mm512_maskz_loadu_ps(mask0, bp);
            let b1 = _mm512_maskz_loadu_ps(mask1, bp.add(16));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        if i < rows {
            // SAFETY: row i < rows of C is writable for the masked columns.
            unsafe {
                _mm512_mask_storeu_ps(c.add(i * c_rs), mask0, row[0]);
                _mm512_mask_storeu_ps(c.add(i * c_rs + 16), mask1, row[1]);
            }
        }
    }
}

/// The register tile for `rows` (≤ `MR`) rows of C: 4, 8 or 12 rows of accumulators (a
/// 64-row C is five 12-row tiles and a 4-row one, not six of 12: 64/72 of the FMAs were
/// useful before, all of them now).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
fn kernel_for(
    rows: usize,
) -> unsafe fn(usize, *const f32, *const f32, usize, *mut f32, usize, usize, (u16, u16), bool) {
    match rows {
        0..=4 => kernel::<4>,
        5..=8 => kernel::<8>,
        _ => kernel::<MR>,
    }
}

/// The lane masks of the first `cols` (≤ 32) columns.
pub(crate) fn masks(cols: usize) -> (u16, u16) {
    let m = if cols >= 32 {
        u32::MAX
    } else {
        (1u32 << cols) - 1
    };
    (m as u16, (m >> 16) as u16)
}

/// `dst[m × n] (+)= A · B` serially.
fn gemm_serial<S: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    a: (&[S], (usize, usize)),
    b: (&[S], (usize, usize)),
    accumulate: bool,
    (pa, pb): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let (rs, cs) = b.1;
    assert!(dst.len() >= m * n && b.0.len() > (k - 1) * rs + (n - 1) * cs);
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        pack_a(a.0, a.1, m, (pc, kc), pa);
        let load_c = accumulate || pc > 0;
        for j0 in (0..n).step_by(NR) {
            let cols = NR.min(n - j0);
            pack_b_sliver(b, (pc, kc), (j0, cols), pb);
            for (s, i0) in (0..m).step_by(MR).enumerate() {
                let rows = MR.min(m - i0);
                // SAFETY: `available()` was checked by the caller; the A sliver holds kc * MR
                // values and the B sliver kc * NR; C rows i0..i0+rows have `cols` writable
                // columns from j0 (dst holds m * n).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    kernel_for(rows)(
                        kc,
                        pa.as_ptr().add(s * kc * MR),
                        pb.as_ptr(),
                        NR,
                        dst.as_mut_ptr().add(i0 * n + j0),
                        n,
                        rows,
                        masks(cols),
                        load_c,
                    )
                };
            }
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with element strides (row, col) per operand; `dst`
/// contiguous, `m, n, k > 0`. The operands are f32, or f16 widened exactly while packed (the
/// same f32 products and sums as widening them first). Callers check `S::simd()` (for f32:
/// `available()`) and the slice extents (as for `gemm_strided`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm<S: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[S],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[S],
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    use rayon::prelude::*;
    // The buffers are taken out for the call (a nested call on this thread, e.g. from a job
    // rayon runs while this one waits, simply finds empty ones).
    let (mut pa, mut pb) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    {
        let (pa, pb) = (&mut pa, &mut pb);
        let b = (rhs, (rhs_rs, rhs_cs));
        let threads = rayon::current_num_threads();
        if parallel && threads > 1 && m >= 2 * MR && m * n * k >= 1 << 20 {
            // Row blocks across threads, each packing its own A.
            let rows = m.div_ceil(threads).next_multiple_of(MR);
            dst[..m * n]
                .par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(i, d)| {
                    let a = (&lhs[i * rows * lhs_rs..], (lhs_rs, lhs_cs));
                    let (mut pa, mut pb) = (Vec::new(), Vec::new());
                    gemm_serial((d.len() / n, n, k), d, a, b, accumulate, (&mut pa, &mut pb));
                });
        } else {
            let a = (lhs, (lhs_rs, lhs_cs));
            gemm_serial((m, n, k), dst, a, b, accumulate, (pa, pb));
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = (pa, pb));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd sizes across every blocking edge, both operand layouts, overwrite and accumulate,
    /// against an f64 reference within the GEMM bound.
    #[test]
    fn matches_f64_reference_at_odd_sizes() {
        if !available() {
            println!("skipped: this CPU has no AVX-512F (the gemm crate serves it)");
            return;
        }
        super::super::gemm_check::check_against_f64(
            &[
                (1, 1, 1),
                (13, 33, 7),
                (37, 65, 300),
                (200, 1030, 513),
                (12, 32, 256),
            ],
            super::super::gemm_check::uniform(0x2545_F491_4F6C_DD1D),
            f64::from,
            // (Always parallel: sgemm's serial path is the parallel one's per-thread body.)
            &|shape, c, a, sa, b, sb, accumulate, _| {
                sgemm(shape, c, a, sa, b, sb, accumulate, true)
            },
        );
    }

    /// f16 operands, widened while packed, against the f64 reference of the f16 values.
    #[test]
    fn f16_operands_match_f64_reference() {
        use half::f16;
        if !f16::simd() {
            println!("skipped: this CPU has no AVX-512F/BW (f16 GEMMs widen first there)");
            return;
        }
        let mut rnd = super::super::gemm_check::uniform(0x6C07_8965_2F4A_7C15);
        super::super::gemm_check::check_against_f64(
            &[(1, 1, 1), (13, 33, 7), (37, 65, 300), (64, 96, 513)],
            || f16::from_f32(rnd()),
            f16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, par| {
                sgemm(shape, c, a, sa, b, sb, accumulate, par)
            },
        );
    }
}
