//! GEMMs with few output columns, `C [m × n] (+)= A · B` with `n ≤ 8`: the late layers of a
//! convolution at small images (`n` = images × output pixels: 4 in ResNet-18's last stage at
//! 4 × 32 px). The blocked GEMMs pad `n` to their 32-column tiles there — 8× the products at
//! `n = 4` — and pack all of A (the weight, the step's largest operand) for blocks that use
//! each packed value once. Here A is read where it lies, once, converted in registers, and only
//! B (`k × n`, small) is packed, transposed. This module is the driver (the packing of Bᵀ, the
//! split into parallel tasks, the write-back); the kernels are per unit: bf16 on `VDPBF16PS`
//! ([`bf16_skinny`](super::bf16_skinny)), f16 widened to f32 for FMA
//! ([`f16_skinny`](super::f16_skinny)), and — where there is AVX2 but no AVX-512 — f16 and
//! bf16 widened for 8-lane FMA ([`half_skinny_avx2`](super::half_skinny_avx2), with fewer
//! accumulators: 16 vector registers, not 32).
//!
//! Two kernels each, by A's layout:
//! - **row-major A** (a forward weight): vectors run along `k` — one row of A against one
//!   column of B, 16 lanes each summing every 16th `k` (or pair of `k`) in `k` order; the lanes
//!   are added at the end (a tree). 2 or 4 rows × 8 or 4 columns of C in 16 accumulators.
//! - **column-major A** (the transposed weight of an input gradient): vectors run along `m` —
//!   16 rows of C, from contiguous rows of Aᵀ — against values of B broadcast, in `k` order.
//!   32 or 64 rows × 8 or 4 columns.
//!
//! **Numerics.** Exact products (bf16 × bf16 and f16 × f16 both fit f32), f32 sums rounded to
//! nearest even in the orders above: within DESIGN.md's f32 GEMM bound
//! (`K · 2^-23 · Σ|a||b|`, which holds for any order). The bf16 unit also flushes subnormals
//! like every AVX512-BF16 unit (see its module).
//!
//! A streams from memory once per pass; both kernels prefetch it (the column-major kernel
//! reads rows of Aᵀ 18 KB apart, which no hardware prefetcher follows).

use rayon::prelude::*;

/// The most columns of C this path takes.
pub(crate) const MAX_N: usize = 8;

/// Rows of C per parallel task.
const TASK_ROWS: usize = 64;

/// Whether a product takes this path: at most [`MAX_N`] columns and A row- or column-major.
pub(crate) fn applies(n: usize, (rs, cs): (usize, usize)) -> bool {
    n <= MAX_N && (cs == 1 || rs == 1)
}

/// One unit's kernels over A elements `A` and B elements `B`.
pub(crate) trait Kernels<A, B: Copy>: Sized {
    /// An element of the packed Bᵀ.
    type P: bytemuck::Pod + Send + Sync;
    /// Bᵀ rows are padded with zeros to a multiple of this many `k`.
    const K_STEP: usize;
    /// `b` as packed.
    fn pack(b: B) -> Self::P;
    /// Rows `r0..r0 + rows` of C into `out` (row-major, `n` columns) for a row-major A, `R`
    /// rows × `NJ` columns at a time.
    ///
    /// # Safety
    /// The unit's instructions are present; A holds rows `r0..r0 + rows`; `job.bt` holds `NJ`
    /// rows of `job.kp`.
    unsafe fn rows<const R: usize, const NJ: usize>(
        job: &Job<'_, A, Self::P>,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    );
    /// The same for a column-major A (`A[r][c]` at `a[r + c·cs]`), `16·G` rows at a time.
    ///
    /// # Safety
    /// As [`Kernels::rows`].
    unsafe fn columns<const G: usize, const NJ: usize>(
        job: &Job<'_, A, Self::P>,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    );
}

/// One product's operands, shared by its tasks.
pub(crate) struct Job<'a, A, P> {
    pub(crate) a: &'a [A],
    pub(crate) a_strides: (usize, usize),
    pub(crate) k: usize,
    /// Bᵀ, rows of `kp` (zero past `k` and past `n`).
    pub(crate) bt: &'a [P],
    pub(crate) kp: usize,
    pub(crate) n: usize,
    accumulate: bool,
}

impl<A, P> Job<'_, A, P> {
    /// `out[i][j]` (+)= `value`.
    fn put(&self, out: &mut [f32], i: usize, j: usize, value: f32) {
        let o = &mut out[i * self.n + j];
        *o = if self.accumulate { *o + value } else { value };
    }

    /// A row-major kernel's accumulators for rows `g..` of `out`: row `g + i`, column `j` is
    /// the sum of the lanes of `c[i][j]` (rows from `rows` on and columns from `n` on dropped).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn put_sums<const R: usize, const NJ: usize>(
        &self,
        out: &mut [f32],
        g: usize,
        rows: usize,
        c: &[[std::arch::x86_64::__m512; NJ]; R],
    ) {
        use std::arch::x86_64::_mm512_reduce_add_ps;
        for (i, ci) in c.iter().enumerate().take(rows - g) {
            for (j, cij) in ci.iter().enumerate().take(self.n) {
                self.put(out, g + i, j, _mm512_reduce_add_ps(*cij));
            }
        }
    }

    /// A column-major kernel's accumulators: lane `i` of `c[gi][j]` is row `g0 + 16·gi + i`,
    /// column `j` of `out` (rows from `rows` on and columns from `n` on dropped).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn put_lanes<const G: usize, const NJ: usize>(
        &self,
        out: &mut [f32],
        g0: usize,
        rows: usize,
        c: &[[std::arch::x86_64::__m512; NJ]; G],
    ) {
        let mut lanes = [0f32; 16];
        for (gi, cg) in c.iter().enumerate() {
            let first = g0 + 16 * gi;
            for (j, cgj) in cg.iter().enumerate().take(self.n) {
                // SAFETY: `lanes` holds 16 f32.
                unsafe { std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), *cgj) };
                for (i, v) in lanes.iter().enumerate().take(rows.saturating_sub(first)) {
                    self.put(out, first + i, j, *v);
                }
            }
        }
    }
}

/// The AVX2 unit's write-back ([`half_skinny_avx2`](super::half_skinny_avx2)): 8-lane
/// accumulators, otherwise as [`Job::put_sums`] and [`Job::put_lanes`].
#[cfg(target_arch = "x86_64")]
impl<A, P> Job<'_, A, P> {
    /// [`Job::put_sums`] for 8-lane accumulators (lanes added as a tree: halves, then pairs).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn put_sums8<const R: usize, const NJ: usize>(
        &self,
        out: &mut [f32],
        g: usize,
        rows: usize,
        c: &[[std::arch::x86_64::__m256; NJ]; R],
    ) {
        use std::arch::x86_64::*;
        for (i, ci) in c.iter().enumerate().take(rows - g) {
            for (j, cij) in ci.iter().enumerate().take(self.n) {
                let half = _mm_add_ps(
                    _mm256_castps256_ps128(*cij),
                    _mm256_extractf128_ps::<1>(*cij),
                );
                let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
                let sum = _mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair));
                self.put(out, g + i, j, _mm_cvtss_f32(sum));
            }
        }
    }

    /// [`Job::put_lanes`] for 8-lane accumulators: lane `i` of `c[gi][j]` is row
    /// `g0 + 8·gi + i`, column `j`.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn put_lanes8<const G: usize, const NJ: usize>(
        &self,
        out: &mut [f32],
        g0: usize,
        rows: usize,
        c: &[[std::arch::x86_64::__m256; NJ]; G],
    ) {
        let mut lanes = [0f32; 8];
        for (gi, cg) in c.iter().enumerate() {
            let first = g0 + 8 * gi;
            for (j, cgj) in cg.iter().enumerate().take(self.n) {
                // SAFETY: `lanes` holds 8 f32.
                unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), *cgj) };
                for (i, v) in lanes.iter().enumerate().take(rows.saturating_sub(first)) {
                    self.put(out, first + i, j, *v);
                }
            }
        }
    }
}

/// The low `count` bits of a 16-bit mask.
pub(crate) fn mask16(count: usize) -> u16 {
    if count >= 16 {
        u16::MAX
    } else {
        (1u16 << count) - 1
    }
}

/// `dst[m × n] (+)= A · B` on unit `K` (the callers made the GEMM's checks: `m, n, k > 0`, the
/// operands cover their strides, [`applies`], the unit present).
pub(crate) fn gemm<A: Sync, B: Copy, K: Kernels<A, B>>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (a, b): (&[A], &[B]),
    (a_strides, b_strides): ((usize, usize), (usize, usize)),
    accumulate: bool,
    parallel: bool,
) {
    debug_assert!(applies(n, a_strides) && m > 0 && n > 0 && k > 0);
    let nj = if n <= 4 { 4 } else { MAX_N };
    let kp = k.div_ceil(K::K_STEP) * K::K_STEP;
    let zero = <K::P as bytemuck::Zeroable>::zeroed();
    // (Should the host cache's allocation fail, a plain one: Bᵀ is small.)
    let mut bt = crate::alloc::filled(nj * kp, zero).unwrap_or_else(|_| vec![zero; nj * kp]);
    for j in 0..n {
        let row = &mut bt[j * kp..][..k];
        for (kk, v) in row.iter_mut().enumerate() {
            *v = K::pack(b[kk * b_strides.0 + j * b_strides.1]);
        }
    }
    let job = Job {
        a,
        a_strides,
        k,
        bt: &bt,
        kp,
        n,
        accumulate,
    };
    let task = |(t, out): (usize, &mut [f32])| {
        let (r0, rows) = (t * TASK_ROWS, out.len() / n);
        // SAFETY: the unit is present (the caller's contract); rows `r0..r0 + rows` of A
        // exist and `out` is theirs in `dst`; `bt` holds `nj` rows of `kp`.
        unsafe {
            match (a_strides.1 == 1, nj) {
                (true, 4) => K::rows::<4, 4>(&job, r0, rows, out),
                (true, _) => K::rows::<2, MAX_N>(&job, r0, rows, out),
                (false, 4) => K::columns::<4, 4>(&job, r0, rows, out),
                (false, _) => K::columns::<2, MAX_N>(&job, r0, rows, out),
            }
        }
    };
    let dst = &mut dst[..m * n];
    if parallel {
        dst.par_chunks_mut(TASK_ROWS * n).enumerate().for_each(task);
    } else {
        dst.chunks_mut(TASK_ROWS * n).enumerate().for_each(task);
    }
    crate::alloc::recycle(bt);
}
