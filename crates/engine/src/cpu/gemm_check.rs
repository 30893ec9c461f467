//! Test support shared by the unit tests of the CPU's own GEMM kernels (`sgemm`, `amx`): odd
//! shapes, both operand layouts, overwrite and accumulate, element by element against an f64
//! reference within DESIGN.md's GEMM bound.

/// Uniform values in [-0.5, 0.5) from a xorshift generator seeded with `seed`.
pub(crate) fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// A GEMM under test: `(shape, dst, a, a strides, b, b strides, accumulate, transposed)`.
pub(crate) type Gemm<'a, E> = &'a dyn Fn(
    (usize, usize, usize),
    &mut [f32],
    &[E],
    (usize, usize),
    &[E],
    (usize, usize),
    bool,
    bool,
);

/// Runs `gemm` on every `(m, n, k)` of `shapes`, with A and B row-major and (`transposed`)
/// column-major, overwriting and accumulating into a random C, operands drawn by `draw`; every
/// element must lie within `(k + 1)·2^-23·Σ|terms| + 1e-30` of the f64 result.
pub(crate) fn check_against_f64<E: Copy>(
    shapes: &[(usize, usize, usize)],
    mut draw: impl FnMut() -> E,
    to_f64: impl Fn(E) -> f64,
    gemm: Gemm<'_, E>,
) {
    for &(m, n, k) in shapes {
        for trans in [false, true] {
            for accumulate in [false, true] {
                let a: Vec<E> = (0..m * k).map(|_| draw()).collect();
                let b: Vec<E> = (0..k * n).map(|_| draw()).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| to_f64(draw()) as f32).collect();
                let (ars, acs) = if trans { (1, m) } else { (k, 1) };
                let (brs, bcs) = if trans { (1, k) } else { (n, 1) };
                let mut c = c0.clone();
                gemm(
                    (m, n, k),
                    &mut c,
                    &a,
                    (ars, acs),
                    &b,
                    (brs, bcs),
                    accumulate,
                    trans,
                );
                for i in 0..m {
                    for j in 0..n {
                        let (mut r, mut mag) = (0f64, 0f64);
                        for p in 0..k {
                            let x = to_f64(a[i * ars + p * acs]) * to_f64(b[p * brs + j * bcs]);
                            r += x;
                            mag += x.abs();
                        }
                        if accumulate {
                            r += c0[i * n + j] as f64;
                            mag += (c0[i * n + j] as f64).abs();
                        }
                        let bound = (k + 1) as f64 * 2f64.powi(-23) * mag + 1e-30;
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - r).abs() <= bound,
                            "({m},{n},{k}) trans {trans} acc {accumulate} at ({i},{j}): {got} vs {r}"
                        );
                    }
                }
            }
        }
    }
}
