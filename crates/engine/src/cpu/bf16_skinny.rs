//! The bf16 kernels of the few-column GEMM ([`skinny`](super::skinny), which states the
//! layouts, orders and bound) on AVX512-BF16 (`VDPBF16PS`): for the bf16 GEMM on dot products
//! (`amx::gemm_bf16` where the CPU has AVX512-BF16 but no AMX). Each instruction multiplies
//! pairs of `k`: the row-major kernel's vectors hold 16 pairs of one row of A (32 values,
//! converted to bf16 and gathered from two loads by one `vpermt2w`), the column-major kernel's
//! 16 pairs from two rows of Aᵀ (interleaved). As on every AVX512-BF16 unit, bf16 subnormal
//! inputs count as zero and subnormal f32 results of the dot products flush to zero
//! (`bf16_dot`'s extra absolute error). A rounded from f32 as read ([`RoundedBf16`]) holds
//! `half`'s rounding, bit for bit the values a cast would give.
//!
//! Prediction: A (the weight) is read once from memory, 4 bytes per f32 element against one
//! dot-product lane-pair per column of C; at `n ≤ 8` the kernels are bound by that read
//! (≈ 20 GB/s per core here: 5 G weights/s), not by the dot products (≈ 96 G pair-products/s
//! per core). Measured (criterion `cpu_conv2d_train_small`, layer4 at 1 px, batch 4, forward
//! and both gradients, 2 threads of a Zen 5 VM, old/new binaries interleaved): 10–12 GFLOP/s
//! on the block path, 26–37 here, 39–48 with the software prefetches (the samples sat on
//! the instructions waiting for A's loads). In a 4 × 32 px training step the kernels' samples
//! fell from 2930 + 1611 to 2023 + 743 with them.
//!
//! [`RoundedBf16`]: super::amx_pack::RoundedBf16

use super::amx_pack::AmxSrc;
use super::skinny::{mask16, Job, Kernels};
use half::bf16;

/// How far ahead the row-major kernel prefetches each row of A, in bytes.
const ROW_AHEAD: usize = 1024;
/// How many pairs of `k` ahead the column-major kernel prefetches A.
const PAIRS_AHEAD: usize = 12;

/// The bf16 unit: [`Kernels`] on `VDPBF16PS`.
pub(crate) struct Bf16Dot;

impl<A: AmxSrc> Kernels<A, bf16> for Bf16Dot {
    type P = bf16;
    /// (One vector of 32 bf16.)
    const K_STEP: usize = 32;
    fn pack(b: bf16) -> bf16 {
        b
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn rows<const R: usize, const NJ: usize>(
        job: &Job<'_, A, bf16>,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        // Even 16-bit words of two vectors: the bf16 in the low halves of their 32-bit lanes.
        let evens = _mm512_set_epi16(
            62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26, 24, 22, 20,
            18, 16, 14, 12, 10, 8, 6, 4, 2, 0,
        );
        let (k, kp, rs) = (job.k, job.kp, job.a_strides.0);
        for g in (0..rows).step_by(R) {
            // Rows past the task's last repeat it (their sums are dropped).
            let row: [*const A; R] =
                std::array::from_fn(|i| job.a[(r0 + (g + i).min(rows - 1)) * rs..].as_ptr());
            let mut c = [[_mm512_setzero_ps(); NJ]; R];
            for kk in (0..kp).step_by(32) {
                let valid = k - kk;
                let (lo, hi) = (mask16(valid), mask16(valid.saturating_sub(16)));
                // SAFETY: 32 bf16 of each Bᵀ row at `kk < kp` lie in `bt`; the masks select
                // only elements `kk.. < k` of each A row, which lie in `a`.
                unsafe {
                    let b: [__m512bh; NJ] = std::array::from_fn(|j| {
                        std::mem::transmute(_mm512_loadu_si512(
                            job.bt.as_ptr().add(j * kp + kk).cast(),
                        ))
                    });
                    for (i, ci) in c.iter_mut().enumerate() {
                        let p = row[i].wrapping_add(kk);
                        // (The rows stream from memory: their lines `ROW_AHEAD` bytes on are
                        // fetched now; prefetches never fault.)
                        let ahead = p.cast::<i8>().wrapping_add(ROW_AHEAD);
                        _mm_prefetch::<_MM_HINT_T0>(ahead);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                        let x = _mm512_permutex2var_epi16(
                            A::lanes16_masked(p, lo),
                            evens,
                            A::lanes16_masked(p.wrapping_add(16), hi),
                        );
                        let x: __m512bh = std::mem::transmute(x);
                        for (cij, bj) in ci.iter_mut().zip(&b) {
                            *cij = _mm512_dpbf16_ps(*cij, x, *bj);
                        }
                    }
                }
            }
            // SAFETY: AVX-512F is present (the caller's contract).
            unsafe { job.put_sums(out, g, rows, &c) };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn columns<const G: usize, const NJ: usize>(
        job: &Job<'_, A, bf16>,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (k, kp, cs) = (job.k, job.kp, job.a_strides.1);
        let base = job.a[r0..].as_ptr();
        for g0 in (0..rows).step_by(16 * G) {
            let masks: [u16; G] = std::array::from_fn(|g| mask16(rows.saturating_sub(g0 + 16 * g)));
            let mut c = [[_mm512_setzero_ps(); NJ]; G];
            for q in 0..k.div_ceil(2) {
                let odd = 2 * q + 1 < k;
                // (Each pair reads 16·G values from two rows of Aᵀ far apart, which no
                // hardware prefetcher follows: the rows `PAIRS_AHEAD` pairs on are fetched now.)
                for g in 0..G {
                    let p = base.wrapping_add(g0 + 16 * g + 2 * (q + PAIRS_AHEAD) * cs);
                    _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(cs).cast::<i8>());
                }
                // SAFETY: the masks select rows `< rows` of A's columns 2q and (when `odd`)
                // 2q + 1 < k, which lie in `a`; B pair q of each Bᵀ row lies in `bt`.
                unsafe {
                    let x: [__m512bh; G] = std::array::from_fn(|g| {
                        let p = base.wrapping_add(g0 + 16 * g + 2 * q * cs);
                        let even = A::lanes16_masked(p, masks[g]);
                        let next = A::lanes16_masked(p.wrapping_add(cs), masks[g] * odd as u16);
                        std::mem::transmute(_mm512_or_si512(even, _mm512_slli_epi32::<16>(next)))
                    });
                    for j in 0..NJ {
                        let pair = job.bt.as_ptr().add(j * kp + 2 * q);
                        let y = _mm512_set1_epi32(pair.cast::<i32>().read_unaligned());
                        let y: __m512bh = std::mem::transmute(y);
                        for (cg, xg) in c.iter_mut().zip(&x) {
                            cg[j] = _mm512_dpbf16_ps(cg[j], *xg, y);
                        }
                    }
                }
            }
            // SAFETY: AVX-512F is present (the caller's contract).
            unsafe { job.put_lanes(out, g0, rows, &c) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::amx_pack::RoundedBf16;
    use super::super::skinny::{applies, gemm};
    use super::*;

    /// Odd shapes with `n ≤ 8` (both A layouts, overwrite and accumulate) against the f64
    /// reference within the GEMM bound.
    #[test]
    fn matches_f64_reference_at_odd_sizes() {
        if !super::super::bf16_dot::available() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut rnd = super::super::gemm_check::uniform(0xD1B5_4A32_D192_ED03);
        super::super::gemm_check::check_against_f64(
            &[
                (1, 1, 1),
                (17, 3, 7),
                (37, 4, 300),
                (70, 8, 33),
                (129, 5, 1000),
                (64, 6, 64),
                (3, 7, 31),
            ],
            || bf16::from_f32(rnd()),
            bf16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, parallel| {
                assert!(applies(shape.1, sa));
                gemm::<_, _, Bf16Dot>(shape, c, (a, b), (sa, sb), accumulate, parallel)
            },
        );
    }

    /// A given as f32 rounded while read gives the bits of A rounded first (`half`'s rounding:
    /// ties, carries, subnormals among the values).
    #[test]
    fn rounded_a_equals_a_cast_first() {
        if !super::super::bf16_dot::available() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut rnd = super::super::gemm_check::uniform(0x2545_F491_4F6C_DD1D);
        let specials = [
            0x3F80_8000u32,
            0x3F81_8000,
            0x3F7F_FFFF,
            0x0000_8001,
            0x0080_7FFF,
        ];
        for (m, n, k) in [(45, 3, 77), (33, 8, 200)] {
            let wide: Vec<f32> = (0..m * k)
                .map(|i| match specials.get(i % 41) {
                    Some(&bits) => f32::from_bits(bits) * if i % 2 == 0 { 1.0 } else { -1.0 },
                    None => rnd() * 3.0,
                })
                .collect();
            let cast: Vec<bf16> = wide.iter().map(|&v| bf16::from_f32(v)).collect();
            let rounded: Vec<RoundedBf16> = wide.iter().map(|&v| RoundedBf16(v)).collect();
            let b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(rnd())).collect();
            for sa in [(k, 1), (1, m)] {
                let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
                let (cast, rounded) = match sa.1 {
                    1 => (cast.clone(), rounded.clone()),
                    // The same matrix stored column-major.
                    _ => (
                        (0..m * k).map(|i| cast[(i % m) * k + i / m]).collect(),
                        (0..m * k).map(|i| rounded[(i % m) * k + i / m]).collect(),
                    ),
                };
                gemm::<_, _, Bf16Dot>(
                    (m, n, k),
                    &mut want,
                    (&cast, &b),
                    (sa, (n, 1)),
                    false,
                    false,
                );
                gemm::<_, _, Bf16Dot>(
                    (m, n, k),
                    &mut got,
                    (&rounded, &b),
                    (sa, (n, 1)),
                    false,
                    true,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "({m},{n},{k}) A strides {sa:?}");
            }
        }
    }
}
