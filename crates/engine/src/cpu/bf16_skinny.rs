//! bf16 GEMMs with few output columns on AVX512-BF16 (`VDPBF16PS`): `C [m × n] (+)= A · B`
//! with `n ≤ 8`, the late layers of a convolution at small images (`n` = images × output
//! pixels: 4 in ResNet-18's last stage at 4 × 32 px). The block path (`amx::gemm_bf16`) pads
//! `n` to 32 columns there — 8× the products at `n = 4` — and packs all of A (the weight, the
//! step's largest operand) for blocks that use each packed value once. Here A is read where it
//! lies, once, rounded to bf16 in registers ([`AmxSrc`]), and only `B` (`k × n`, small) is
//! packed, transposed.
//!
//! Two kernels, by A's layout:
//! - **row-major A** (a forward weight): vectors run along `k` — 32 bf16 of one row of A
//!   against 32 of one column of B, 16 lanes each summing the pairs `k ≡ 2l, 2l + 1 (mod 32)`
//!   in `k` order; the 16 lanes are added at the end (a tree). 2 or 4 rows × 8 or 4 columns
//!   of C in 16 accumulators.
//! - **column-major A** (the transposed weight of an input gradient): vectors run along `m` —
//!   16 rows of C, each lane a pair of `k` from two contiguous rows of Aᵀ — against a pair of
//!   B broadcast, in `k` order (the block kernel's order). 32 or 64 rows × 8 or 4 columns.
//!
//! **Numerics.** Exact bf16 products, f32 sums (each rounded to nearest even) in the orders
//! above: within DESIGN.md's f32 GEMM bound (`K · 2^-23 · Σ|a||b|`, any order). As on every
//! AVX512-BF16 unit, bf16 subnormal inputs count as zero and f32 subnormal results of the dot
//! products flush to zero (`bf16_dot`'s extra absolute error). A rounded from f32 as read
//! holds `half`'s rounding, bit for bit the values a cast would give.
//!
//! Prediction: A (the weight) is read once from memory, 4 bytes per f32 element against one
//! dot-product lane-pair per column of C; at `n ≤ 8` the kernels are bound by that read
//! (≈ 20 GB/s per core here: 5 G weights/s), not by the dot products (≈ 96 G pair-products/s
//! per core). Measured (criterion `cpu_conv2d_train_small`, layer4 at 1 px, batch 4, forward
//! and both gradients, 2 threads of a Zen 5 VM, old/new binaries interleaved): 10–12 GFLOP/s
//! on the block path, 26–37 here, 39–48 with the software prefetches below (the samples sat on
//! the instructions waiting for A's loads: the column-major kernel reads two rows of Aᵀ
//! 18 KB apart per pair of `k`, which no hardware prefetcher follows). In a 4 × 32 px
//! training step the kernels' samples fell from 2930 + 1611 to 2023 + 743 with them.

use super::amx_pack::AmxSrc;
use half::bf16;
use rayon::prelude::*;

/// The most columns of C this path takes.
pub(crate) const MAX_N: usize = 8;

/// Whether `amx::gemm_bf16` on dot products takes this path: at most [`MAX_N`] columns and A
/// row- or column-major.
pub(crate) fn applies(n: usize, (rs, cs): (usize, usize)) -> bool {
    n <= MAX_N && (cs == 1 || rs == 1)
}

thread_local! {
    /// The calling thread's transposed B, reused across calls.
    static PACKED_BT: std::cell::RefCell<Vec<bf16>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows of C per parallel task.
const TASK_ROWS: usize = 64;
/// How far ahead the row-major kernel prefetches each row of A, in bytes.
const ROW_AHEAD: usize = 1024;
/// How many pairs of `k` ahead the column-major kernel prefetches A.
const PAIRS_AHEAD: usize = 12;

/// `dst[m × n] (+)= A · B` (as `amx::gemm_bf16`, whose checks the caller made: `m, n, k > 0`,
/// the operands cover their strides, [`applies`], AVX512-BF16 present).
pub(crate) fn gemm<A: AmxSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (a, b): (&[A], &[bf16]),
    (a_strides, b_strides): ((usize, usize), (usize, usize)),
    accumulate: bool,
    parallel: bool,
) {
    debug_assert!(applies(n, a_strides) && m > 0 && n > 0 && k > 0);
    let nj = if n <= 4 { 4 } else { MAX_N };
    let kp = k.div_ceil(32) * 32;
    // Bᵀ: `nj` rows of `kp`, zero past `n` and `k` (the kernels read whole rows).
    let mut bt = PACKED_BT.with(|s| std::mem::take(&mut *s.borrow_mut()));
    bt.clear();
    bt.resize(nj * kp, bf16::ZERO);
    for j in 0..n {
        let row = &mut bt[j * kp..][..k];
        for (kk, v) in row.iter_mut().enumerate() {
            *v = b[kk * b_strides.0 + j * b_strides.1];
        }
    }
    let task = |(t, out): (usize, &mut [f32])| {
        let rows = out.len() / n;
        let job = Job {
            a,
            a_strides,
            k,
            bt: &bt,
            kp,
            n,
            accumulate,
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX512-BF16 is present (the caller's contract); the rows `t·TASK_ROWS..` of
        // A and of `out` exist (`out` is that chunk of `dst`), `bt` holds `nj` rows of `kp`.
        unsafe {
            match (a_strides.1 == 1, nj) {
                (true, 4) => job.rows::<4, 4>(t * TASK_ROWS, rows, out),
                (true, _) => job.rows::<2, MAX_N>(t * TASK_ROWS, rows, out),
                (false, 4) => job.columns::<4, 4>(t * TASK_ROWS, rows, out),
                (false, _) => job.columns::<2, MAX_N>(t * TASK_ROWS, rows, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (t, rows, job, out);
    };
    let dst = &mut dst[..m * n];
    if parallel {
        dst.par_chunks_mut(TASK_ROWS * n).enumerate().for_each(task);
    } else {
        dst.chunks_mut(TASK_ROWS * n).enumerate().for_each(task);
    }
    PACKED_BT.with(|s| *s.borrow_mut() = bt);
}

/// One product's operands, shared by its tasks.
struct Job<'a, A> {
    a: &'a [A],
    a_strides: (usize, usize),
    k: usize,
    /// Bᵀ, rows of `kp` bf16.
    bt: &'a [bf16],
    kp: usize,
    n: usize,
    accumulate: bool,
}

/// The low `count` bits of a 16-bit mask.
fn mask16(count: usize) -> u16 {
    if count >= 16 {
        u16::MAX
    } else {
        (1u16 << count) - 1
    }
}

impl<A: AmxSrc> Job<'_, A> {
    /// `out[i][j]` (+)= `value` for the valid columns.
    fn put(&self, out: &mut [f32], i: usize, j: usize, value: f32) {
        let o = &mut out[i * self.n + j];
        *o = if self.accumulate { *o + value } else { value };
    }

    /// Rows `r0..r0 + rows` of C into `out` (row-major, `n` columns) for a row-major A, `R`
    /// rows × `NJ` columns at a time.
    ///
    /// # Safety
    /// AVX512-BF16 is present; A holds rows `r0..r0 + rows`; `bt` holds `NJ` rows of `kp`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn rows<const R: usize, const NJ: usize>(
        &self,
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
        let (k, kp, rs) = (self.k, self.kp, self.a_strides.0);
        for g in (0..rows).step_by(R) {
            // Rows past the task's last repeat it (their sums are dropped).
            let row: [*const A; R] =
                std::array::from_fn(|i| self.a[(r0 + (g + i).min(rows - 1)) * rs..].as_ptr());
            let mut c = [[_mm512_setzero_ps(); NJ]; R];
            for kk in (0..kp).step_by(32) {
                let valid = k - kk;
                let (lo, hi) = (mask16(valid), mask16(valid.saturating_sub(16)));
                // SAFETY: 32 bf16 of each Bᵀ row at `kk < kp` lie in `bt`; the masks select
                // only elements `kk.. < k` of each A row, which lie in `a`.
                unsafe {
                    let b: [__m512bh; NJ] = std::array::from_fn(|j| {
                        std::mem::transmute(_mm512_loadu_si512(
                            self.bt.as_ptr().add(j * kp + kk).cast(),
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
            for (i, ci) in c.iter().enumerate().take(rows - g) {
                for (j, cij) in ci.iter().enumerate().take(self.n) {
                    self.put(out, g + i, j, _mm512_reduce_add_ps(*cij));
                }
            }
        }
    }

    /// Rows `r0..r0 + rows` of C into `out` for a column-major A (`A[r][c]` at
    /// `a[r + c·cs]`), `16·G` rows × `NJ` columns at a time.
    ///
    /// # Safety
    /// As [`rows`](Self::rows).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn columns<const G: usize, const NJ: usize>(
        &self,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (k, kp, cs) = (self.k, self.kp, self.a_strides.1);
        let base = self.a[r0..].as_ptr();
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
                        let pair = self.bt.as_ptr().add(j * kp + 2 * q);
                        let y = _mm512_set1_epi32(pair.cast::<i32>().read_unaligned());
                        let y: __m512bh = std::mem::transmute(y);
                        for (cg, xg) in c.iter_mut().zip(&x) {
                            cg[j] = _mm512_dpbf16_ps(cg[j], *xg, y);
                        }
                    }
                }
            }
            let mut lanes = [0f32; 16];
            for (g, cg) in c.iter().enumerate() {
                for (j, cgj) in cg.iter().enumerate().take(self.n) {
                    // SAFETY: `lanes` holds 16 f32.
                    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *cgj) };
                    let first = g0 + 16 * g;
                    for (i, v) in lanes.iter().enumerate().take(rows.saturating_sub(first)) {
                        self.put(out, first + i, j, *v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::amx_pack::RoundedBf16;
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
                gemm(shape, c, (a, b), (sa, sb), accumulate, parallel)
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
                gemm(
                    (m, n, k),
                    &mut want,
                    (&cast, &b),
                    (sa, (n, 1)),
                    false,
                    false,
                );
                gemm(
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
