//! The f16 kernels of the few-column GEMM ([`skinny`](super::skinny), which states the
//! layouts, orders and bound): f16 (or f32 rounded to f16 as read, [`RoundedF16`]) widened
//! exactly to f32 in registers (`vcvtph2ps`), multiplied and added by FMA — this CPU family
//! has no f16 arithmetic of its own (no AVX512-FP16), so f16 GEMMs run on the f32 units, and
//! here without packing A (the weight) or padding `n` to the f32 kernel's tiles. Products of
//! widened f16 are exact in f32, so each FMA rounds once, as the blocked f32 kernel does.
//!
//! Prediction: bound by reading A from memory once (≈ 20 GB/s per core: 5 G f32 weights/s),
//! not by the FMAs (2 × 16 per cycle per core).
//!
//! [`RoundedF16`]: super::sgemm_pack::RoundedF16

use super::sgemm_pack::PackSrc;
use super::skinny::{mask16, Job, Kernels};
use half::f16;

/// How far ahead the row-major kernel prefetches each row of A, in bytes.
const ROW_AHEAD: usize = 1024;
/// How many values of `k` ahead the column-major kernel prefetches A.
const K_AHEAD: usize = 24;

/// The f16 unit: [`Kernels`] on f32 FMA over widened values.
pub(crate) struct F16Fma;

impl<A: PackSrc> Kernels<A, f16> for F16Fma {
    type P = f32;
    /// (One vector of 16 f32.)
    const K_STEP: usize = 16;
    fn pack(b: f16) -> f32 {
        b.to_f32()
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn rows<const R: usize, const NJ: usize>(
        job: &Job<'_, A, f32>,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (k, kp, rs) = (job.k, job.kp, job.a_strides.0);
        for g in (0..rows).step_by(R) {
            // Rows past the task's last repeat it (their sums are dropped).
            let row: [*const A; R] =
                std::array::from_fn(|i| job.a[(r0 + (g + i).min(rows - 1)) * rs..].as_ptr());
            let mut c = [[_mm512_setzero_ps(); NJ]; R];
            for kk in (0..kp).step_by(16) {
                let mask = mask16(k - kk);
                // SAFETY: 16 f32 of each Bᵀ row at `kk < kp` lie in `bt`; the mask selects only
                // elements `kk.. < k` of each A row, which lie in `a`.
                unsafe {
                    let b: [__m512; NJ] =
                        std::array::from_fn(|j| _mm512_loadu_ps(job.bt.as_ptr().add(j * kp + kk)));
                    for (i, ci) in c.iter_mut().enumerate() {
                        let p = row[i].wrapping_add(kk);
                        // (Prefetches never fault.)
                        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(ROW_AHEAD));
                        let x = A::load16(p, mask);
                        for (cij, bj) in ci.iter_mut().zip(&b) {
                            *cij = _mm512_fmadd_ps(x, *bj, *cij);
                        }
                    }
                }
            }
            // SAFETY: AVX-512F is present (the caller's contract).
            unsafe { job.put_sums(out, g, rows, &c) };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn columns<const G: usize, const NJ: usize>(
        job: &Job<'_, A, f32>,
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
            for kk in 0..k {
                // SAFETY: the masks select rows `< rows` of A's column `kk < k`, which lie in
                // `a`; value `kk` of each Bᵀ row lies in `bt`. (Prefetches never fault.)
                unsafe {
                    let x: [__m512; G] = std::array::from_fn(|g| {
                        let p = base.wrapping_add(g0 + 16 * g + kk * cs);
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(K_AHEAD * cs).cast::<i8>());
                        A::load16(p, masks[g])
                    });
                    for j in 0..NJ {
                        let y = _mm512_set1_ps(*job.bt.get_unchecked(j * kp + kk));
                        for (cg, xg) in c.iter_mut().zip(&x) {
                            cg[j] = _mm512_fmadd_ps(*xg, y, cg[j]);
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
    use super::super::sgemm_pack::RoundedF16;
    use super::super::skinny::{applies, gemm};
    use super::*;

    use super::super::half_skinny_avx2::WidenFma8;

    /// Runs `check` for the AVX-512 unit and the AVX2 one, those this CPU has.
    fn for_each_unit(check: impl Fn(&str, fn(Shape, &mut [f32], Ops<'_>, Strides, bool, bool))) {
        let mut ran = false;
        if <f16 as PackSrc>::simd() {
            check("avx512", run::<F16Fma>);
            ran = true;
        }
        if <f16 as PackSrc>::avx2() {
            check("avx2", run::<WidenFma8>);
            ran = true;
        }
        if !ran {
            println!("skipped: this CPU has neither AVX-512 nor AVX2/FMA/F16C");
        }
    }

    type Shape = (usize, usize, usize);
    type Strides = ((usize, usize), (usize, usize));
    /// A as f16 or as f32 rounded while read, and B.
    type Ops<'a> = (Either<'a>, &'a [f16]);
    #[derive(Clone, Copy)]
    enum Either<'a> {
        Cast(&'a [f16]),
        Rounded(&'a [RoundedF16]),
    }

    fn run<K: Kernels<f16, f16> + Kernels<RoundedF16, f16>>(
        shape: Shape,
        c: &mut [f32],
        (a, b): Ops<'_>,
        strides: Strides,
        accumulate: bool,
        parallel: bool,
    ) {
        match a {
            Either::Cast(a) => gemm::<_, _, K>(shape, c, (a, b), strides, accumulate, parallel),
            Either::Rounded(a) => gemm::<_, _, K>(shape, c, (a, b), strides, accumulate, parallel),
        }
    }

    /// Odd shapes with `n ≤ 8` (both A layouts, overwrite and accumulate) against the f64
    /// reference within the GEMM bound, on each unit.
    #[test]
    fn matches_f64_reference_at_odd_sizes() {
        for_each_unit(|_, unit| odd_sizes(unit));
    }

    fn odd_sizes(unit: fn(Shape, &mut [f32], Ops<'_>, Strides, bool, bool)) {
        let mut rnd = super::super::gemm_check::uniform(0x94D0_49BB_1331_11EB);
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
            || f16::from_f32(rnd()),
            f16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, parallel| {
                assert!(applies(shape.1, sa));
                unit(
                    shape,
                    c,
                    (Either::Cast(a), b),
                    (sa, sb),
                    accumulate,
                    parallel,
                )
            },
        );
    }

    /// A given as f32 rounded while read gives the bits of A rounded first (ties, an f16
    /// subnormal and f16's largest finite value among the values), on each unit.
    #[test]
    fn rounded_a_equals_a_cast_first() {
        for_each_unit(rounded_equals_cast);
    }

    fn rounded_equals_cast(name: &str, unit: fn(Shape, &mut [f32], Ops<'_>, Strides, bool, bool)) {
        let mut rnd = super::super::gemm_check::uniform(0xBF58_476D_1CE4_E5B9);
        // A tie (1 + 2^-11), a tie rounding up (1 + 3·2^-11), an f16 subnormal, 65504.
        let specials = [0x3F80_1000u32, 0x3F80_3000, 0x3380_0001, 0x477F_E000];
        for (m, n, k) in [(45, 3, 77), (33, 8, 200)] {
            let wide: Vec<f32> = (0..m * k)
                .map(|i| match specials.get(i % 41) {
                    Some(&bits) => f32::from_bits(bits) * if i % 2 == 0 { 1.0 } else { -1.0 },
                    None => rnd() * 3.0,
                })
                .collect();
            let cast: Vec<f16> = wide.iter().map(|&v| f16::from_f32(v)).collect();
            let rounded: Vec<RoundedF16> = wide.iter().map(|&v| RoundedF16(v)).collect();
            let b: Vec<f16> = (0..k * n).map(|_| f16::from_f32(rnd())).collect();
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
                let shape = (m, n, k);
                let strides = (sa, (n, 1));
                unit(
                    shape,
                    &mut want,
                    (Either::Cast(&cast), &b),
                    strides,
                    false,
                    false,
                );
                unit(
                    shape,
                    &mut got,
                    (Either::Rounded(&rounded), &b),
                    strides,
                    false,
                    true,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{name} ({m},{n},{k}) A strides {sa:?}"
                );
            }
        }
    }
}
