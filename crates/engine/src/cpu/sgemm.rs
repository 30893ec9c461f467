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

/// Whether the AVX-512 kernel beats the `gemm` crate for an `m × n` product: it needs rows of
/// C at least one register tile (32 columns) wide. Measured per ResNet shape (one core, a
/// throwaway timing loop over both kernels; the train-step bench shows the effect):
/// 64×256×576 108 vs 79 GFLOP/s, 64×3136×576 94 vs 77; but 256×16×2304 36 vs 95 and 512×4×4608
/// 9 vs 28 (most of each 32-wide tile masked off) — narrower products stay with the crate.
/// Products 32 to 63 columns wide went to the crate too while A was always packed (for one or
/// two B slivers); with A read in place (see `gemm_serial`) they run here.
pub(crate) fn suits((m, n): (usize, usize)) -> bool {
    available() && n >= NR && m >= 16
}

use super::sgemm_pack::{pack_a, pack_b_sliver, PackSrc};

thread_local! {
    /// Packing buffers reused across calls on this thread (no allocation or zero-fill per call).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One register tile: `C[rows × cols] (+)= A_sliver · B[kc × cols]`, where the A sliver holds
/// `kc` groups of `MR` values — or, when `DIRECT`, A is read in place: `R` rows `a_rs` apart,
/// consecutive k `a_cs` apart (then `rows == R`) —, B rows start `b_rs` apart, C rows `c_rs` apart; `mask0/1` select
/// the valid columns of the two 16-lane halves.
///
/// # Safety
/// The CPU has AVX-512F; `a` is valid for `kc * MR` reads (when `DIRECT`: `rows == R` and
/// `a + i*a_rs + p*a_cs` is readable for `i < R, p < kc`); for `p < kc`, the `cols` floats at
/// `b + p*b_rs` are readable; for `i < rows`, the `cols` floats at `c + i*c_rs` are writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize, const DIRECT: bool>(
    kc: usize,
    (a, a_rs, a_cs): (*const f32, usize, usize),
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
            let ap = a.add(p * if DIRECT { a_cs } else { MR });
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(if DIRECT { i * a_rs } else { i }));
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
fn kernel_for(rows: usize) -> Kernel {
    match rows {
        0..=4 => kernel::<4, false>,
        5..=8 => kernel::<8, false>,
        _ => kernel::<MR, false>,
    }
}

/// The signature of [`kernel`]'s instances.
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(
    usize,
    (*const f32, usize, usize),
    *const f32,
    usize,
    *mut f32,
    usize,
    usize,
    (u16, u16),
    bool,
);

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
///
/// A product at most `NR` columns wide (a late ResNet layer at small images: 512 × 32 × 4608)
/// has one B sliver, so each A value feeds one register tile: packing A there costs a write
/// and a read of the whole (weight) matrix for 64 flops per value. With f32 operands its
/// full 12-row tiles read A in place instead (12 row streams, or 12 adjacent values per k for
/// a column-major A); only the last partial tile is packed (zero rows beyond `m`).
fn gemm_serial<SA: PackSrc, SB: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    a: (&[SA], (usize, usize)),
    b: (&[SB], (usize, usize)),
    accumulate: bool,
    (pa, pb): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let ((rs, cs), (a_rs, a_cs)) = (b.1, a.1);
    assert!(dst.len() >= m * n && b.0.len() > (k - 1) * rs + (n - 1) * cs);
    assert!(a.0.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    let direct = SA::as_f32(a.0).filter(|_| n <= NR);
    // Rows read in place (full tiles), the rest packed.
    let full = if direct.is_some() { m / MR * MR } else { 0 };
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        if m > full {
            pack_a(&a.0[full * a_rs..], a.1, m - full, (pc, kc), pa);
        }
        let load_c = accumulate || pc > 0;
        for j0 in (0..n).step_by(NR) {
            let cols = NR.min(n - j0);
            pack_b_sliver(b, (pc, kc), (j0, cols), pb);
            for i0 in (0..m).step_by(MR) {
                let rows = MR.min(m - i0);
                #[cfg(target_arch = "x86_64")]
                let (tile, a_tile): (Kernel, _) = match direct {
                    // SAFETY (offset): rows i0..i0+MR and k pc..pc+kc of A lie inside it
                    // (asserted above: i0 + MR <= m).
                    Some(a) if i0 < full => (
                        kernel::<MR, true>,
                        (unsafe { a.as_ptr().add(i0 * a_rs + pc * a_cs) }, a_rs, a_cs),
                    ),
                    // SAFETY (offset): the packed slivers hold (m - full).div_ceil(MR) * kc * MR.
                    _ => (
                        kernel_for(rows),
                        (
                            unsafe { pa.as_ptr().add((i0 - full) / MR * kc * MR) },
                            1,
                            MR,
                        ),
                    ),
                };
                // SAFETY: `available()` was checked by the caller; A as just described; the B
                // sliver holds kc * NR values; C rows i0..i0+rows have `cols` writable
                // columns from j0 (dst holds m * n).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    tile(
                        kc,
                        a_tile,
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
/// same f32 products and sums as widening them first), or f32 rounded to f16 while packed
/// ([`RoundedF16`](super::sgemm_pack::RoundedF16)). Callers check `SA::simd()` and
/// `SB::simd()` (for f32: `available()`) and the slice extents (as for `gemm_strided`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm<SA: PackSrc, SB: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[SA],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[SB],
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
                (37, 32, 300),
                (25, 7, 513),
                (48, 29, 600),
                (100, 32, 400),
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

    /// `gemm_f16` at shapes its kernel does not serve directly: products at most 8 columns
    /// wide run `skinny`, others narrower than a register tile run transposed (in parallel
    /// over blocks of A's rows, or serially), and the smallest ones widen for the crate;
    /// against the f64 reference.
    #[test]
    fn narrow_f16_products_match_f64_reference() {
        use half::f16;
        let mut rnd = super::super::gemm_check::uniform(0x3C6E_F372_FE94_F82B);
        super::super::gemm_check::check_against_f64(
            &[
                (100, 4, 300),
                (33, 17, 70),
                (512, 1, 40),
                (40, 31, 9),
                (20, 5, 33),
                (20, 12, 33),
            ],
            || f16::from_f32(rnd()),
            f16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, par| {
                super::super::matmul::gemm_f16(shape, c, a, sa, b, sb, accumulate, par)
            },
        );
    }
}
