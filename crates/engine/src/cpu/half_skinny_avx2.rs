//! The half-precision unit of the few-column GEMM ([`skinny`](super::skinny), which states the
//! layouts, orders and bound) for CPUs with AVX2 but not AVX-512:
//! [`F16Fma`](super::f16_skinny::F16Fma) on 8-lane vectors, for f16 and bf16 alike. A (f16 or
//! bf16, or f32 rounded to either as read: an autocast weight) is read where it lies and
//! widened in registers (`PackSrc::load8`), Bᵀ packed in f32; each FMA rounds once in f32
//! (products of two f16 or two bf16 values are exact in f32). Without it, a late layer at small images (ResNet's
//! last stage at 4 × 32 px: `512 × 4 × 4608`) ran the blocked AVX2 tile transposed, packing
//! the whole weight for four columns of C.
//!
//! With 16 vector registers (not 32), the kernels hold fewer accumulators than the AVX-512
//! unit: row-major A takes 2 rows × 4 columns (or 1 × 8), column-major A 16 rows × 4 columns
//! (or 8 × 8).
//!
//! Prediction: bound by reading A from memory once (≈ 20 GB/s per core), as the AVX-512 unit.

use super::sgemm_pack::PackSrc;
use super::skinny::{Job, Kernels};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// How far ahead the row-major kernel prefetches each row of A, in bytes.
const ROW_AHEAD: usize = 1024;
/// How many values of `k` ahead the column-major kernel prefetches A.
const K_AHEAD: usize = 24;

/// The AVX2 unit: [`Kernels`] on 8-lane f32 FMA over widened values.
pub(crate) struct WidenFma8;

impl<A: PackSrc, B: PackSrc> Kernels<A, B> for WidenFma8 {
    type P = f32;
    /// (One vector of 8 f32.)
    const K_STEP: usize = 8;
    fn pack(b: B) -> f32 {
        b.to_f32()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<const R: usize, const NJ: usize>(
        job: &Job<'_, A, f32>,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        // (The driver's R × NJ assumes 32 registers; here 2 × 4 or 1 × 8 accumulators.)
        // SAFETY: the caller's contract.
        unsafe {
            if NJ <= 4 {
                row_kernel::<A, 2, NJ>(job, r0, rows, out)
            } else {
                row_kernel::<A, 1, NJ>(job, r0, rows, out)
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns<const G: usize, const NJ: usize>(
        job: &Job<'_, A, f32>,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            if NJ <= 4 {
                column_kernel::<A, 2, NJ>(job, r0, rows, out)
            } else {
                column_kernel::<A, 1, NJ>(job, r0, rows, out)
            }
        }
    }
}

/// Row-major A: `R` rows of A, 8 values of `k` at a time (the last group partial), against
/// `NJ` rows of Bᵀ; lane `l` of an accumulator sums every 8th `k` from `l`, in `k` order.
///
/// # Safety
/// As [`Kernels::rows`], with AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_kernel<A: PackSrc, const R: usize, const NJ: usize>(
    job: &Job<'_, A, f32>,
    r0: usize,
    rows: usize,
    out: &mut [f32],
) {
    let (k, kp, rs) = (job.k, job.kp, job.a_strides.0);
    for g in (0..rows).step_by(R) {
        // Rows past the task's last repeat it (their sums are dropped).
        let row: [*const A; R] =
            std::array::from_fn(|i| job.a[(r0 + (g + i).min(rows - 1)) * rs..].as_ptr());
        let mut c = [[_mm256_setzero_ps(); NJ]; R];
        for kk in (0..kp).step_by(8) {
            // (kk < kp ≤ k + 7, so at least one value of each row is left.)
            let n = (k - kk).min(8);
            // SAFETY: 8 f32 of each Bᵀ row at `kk < kp` lie in `bt`; values `kk..kk + n < k`
            // of each A row lie in `a`. (Prefetches never fault.)
            unsafe {
                let b: [__m256; NJ] =
                    std::array::from_fn(|j| _mm256_loadu_ps(job.bt.as_ptr().add(j * kp + kk)));
                for (i, ci) in c.iter_mut().enumerate() {
                    let p = row[i].wrapping_add(kk);
                    _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(ROW_AHEAD));
                    let x = A::load8(p, n);
                    for (cij, bj) in ci.iter_mut().zip(&b) {
                        *cij = _mm256_fmadd_ps(x, *bj, *cij);
                    }
                }
            }
        }
        // SAFETY: AVX2 is present (the caller's contract).
        unsafe { job.put_sums8(out, g, rows, &c) };
    }
}

/// Column-major A (`A[r][c]` at `a[r + c·cs]`): `8·G` rows of C as vectors, from contiguous
/// values of A's columns, against values of Bᵀ broadcast, in `k` order.
///
/// # Safety
/// As [`Kernels::columns`], with AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn column_kernel<A: PackSrc, const G: usize, const NJ: usize>(
    job: &Job<'_, A, f32>,
    r0: usize,
    rows: usize,
    out: &mut [f32],
) {
    let (k, kp, cs) = (job.k, job.kp, job.a_strides.1);
    let base = job.a[r0..].as_ptr();
    for g0 in (0..rows).step_by(8 * G) {
        let counts: [usize; G] = std::array::from_fn(|g| rows.saturating_sub(g0 + 8 * g).min(8));
        let mut c = [[_mm256_setzero_ps(); NJ]; G];
        for kk in 0..k {
            // SAFETY: `counts` covers rows `< rows` of A's column `kk < k`, which lie in `a`;
            // value `kk` of each Bᵀ row lies in `bt`. (Prefetches never fault.)
            unsafe {
                let x: [__m256; G] = std::array::from_fn(|g| {
                    if counts[g] == 0 {
                        return _mm256_setzero_ps();
                    }
                    let p = base.wrapping_add(g0 + 8 * g + kk * cs);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(K_AHEAD * cs).cast::<i8>());
                    A::load8(p, counts[g])
                });
                for j in 0..NJ {
                    let y = _mm256_set1_ps(*job.bt.get_unchecked(j * kp + kk));
                    for (cg, xg) in c.iter_mut().zip(&x) {
                        cg[j] = _mm256_fmadd_ps(*xg, y, cg[j]);
                    }
                }
            }
        }
        // SAFETY: AVX2 is present (the caller's contract).
        unsafe { job.put_lanes8(out, g0, rows, &c) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::amx_pack::RoundedBf16;
    use super::super::gemm_check::{check_against_f64, uniform};
    use super::super::skinny::{applies, gemm};
    use super::*;
    use half::bf16;

    /// bf16 operands (f16 ones run through `f16_skinny`'s tests on each unit): odd shapes with
    /// `n ≤ 8`, both A layouts, overwrite and accumulate, against the f64 reference within the
    /// GEMM bound; and an f32 A rounded while read gives the bits of A cast first (ties both
    /// ways and a subnormal among the values).
    #[test]
    fn bf16_products_match_f64_and_the_cast() {
        if !<bf16 as PackSrc>::avx2() {
            println!("skipped: this CPU has no AVX2/FMA/F16C (or HEMI_CPU_NO_AVX2_GEMM is set)");
            return;
        }
        let mut rnd = uniform(0x2F4A_7C15_9E37_79B9);
        check_against_f64(
            &[
                (1, 1, 1),
                (17, 3, 7),
                (37, 4, 300),
                (70, 8, 33),
                (129, 5, 1000),
            ],
            || bf16::from_f32(rnd()),
            bf16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, parallel| {
                assert!(applies(shape.1, sa));
                gemm::<_, _, WidenFma8>(shape, c, (a, b), (sa, sb), accumulate, parallel)
            },
        );
        let specials = [0x3F80_8000u32, 0x3F81_8000, 0x0000_8001, 0x4041_8000];
        for (m, n, k) in [(45, 3, 77), (33, 8, 200)] {
            let wide: Vec<f32> = (0..m * k)
                .map(|i| match specials.get(i % 41) {
                    Some(&bits) => f32::from_bits(bits) * if i % 2 == 0 { 1.0 } else { -1.0 },
                    None => rnd() * 3.0,
                })
                .collect();
            let b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(rnd())).collect();
            for sa in [(k, 1), (1, m)] {
                // The same matrix, row-major or stored column-major.
                let a: Vec<f32> = match sa.1 {
                    1 => wide.clone(),
                    _ => (0..m * k).map(|i| wide[(i % m) * k + i / m]).collect(),
                };
                let cast: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
                let rounded: Vec<RoundedBf16> = a.iter().map(|&v| RoundedBf16(v)).collect();
                let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
                let strides = (sa, (n, 1));
                gemm::<_, _, WidenFma8>((m, n, k), &mut want, (&cast, &b), strides, false, false);
                gemm::<_, _, WidenFma8>((m, n, k), &mut got, (&rounded, &b), strides, false, true);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "({m},{n},{k}) A strides {sa:?}");
            }
        }
    }
}
