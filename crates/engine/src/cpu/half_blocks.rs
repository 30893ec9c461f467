//! Elementwise ops on contiguous F16/BF16 data without an f32 copy of the tensor: each block of
//! [`BLOCK`] elements is widened into an f32 buffer in L1, computed there and rounded back into
//! the output. The numerics are those of the general path (widen exactly, compute in f32,
//! round once to nearest even); only the memory traffic differs (one read per input and one
//! write of the output, instead of two f32 passes more).

use super::compute::PAR_THRESHOLD;
use super::convert::Half;
use rayon::prelude::*;

/// Elements per block (8 KiB of f32: two buffers stay in L1).
const BLOCK: usize = 2048;

/// Runs `block(index of the block, out block)` over `len` outputs in blocks, in parallel when
/// long.
fn over_blocks<H: Half>(
    len: usize,
    block: impl Fn(usize, &mut [H]) + Sync,
) -> crate::Result<Vec<H>> {
    let mut out = crate::alloc::for_overwrite::<H>(len)?;
    if len >= PAR_THRESHOLD {
        out.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(i, o)| block(i, o));
    } else {
        out.chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(i, o)| block(i, o));
    }
    Ok(out)
}

/// `f(x)` of every element of `x`.
pub(crate) fn unary<H: Half>(x: &[H], f: impl Fn(f32) -> f32 + Sync) -> crate::Result<Vec<H>> {
    over_blocks(x.len(), |i, o| {
        let mut buf = [0f32; BLOCK];
        let b = &mut buf[..o.len()];
        H::widen(&x[i * BLOCK..][..o.len()], b);
        b.iter_mut().for_each(|v| *v = f(*v));
        H::narrow(b, o);
    })
}

/// `f(a, b)` of every pair of elements of `a` and `b` (same length).
pub(crate) fn binary<H: Half>(
    a: &[H],
    b: &[H],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> crate::Result<Vec<H>> {
    over_blocks(a.len(), |i, o| {
        let (mut ba, mut bb) = ([0f32; BLOCK], [0f32; BLOCK]);
        let (ba, bb) = (&mut ba[..o.len()], &mut bb[..o.len()]);
        H::widen(&a[i * BLOCK..][..o.len()], ba);
        H::widen(&b[i * BLOCK..][..o.len()], bb);
        ba.iter_mut()
            .zip(bb.iter())
            .for_each(|(x, &y)| *x = f(*x, y));
        H::narrow(ba, o);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// `unary(f)` and `binary(g)` of `xs`, `ys` rounded to `H` equal the element-wise
    /// definition `H(f(f32(x)))`, bit for bit (compared through `to_f32`, exact for `H`).
    fn check<H: Half + std::fmt::Debug>(
        (xs, ys): (&[f32], &[f32]),
        from: fn(f32) -> H,
        to: fn(H) -> f32,
    ) -> crate::Result<()> {
        let f = |x: f32| (x * 0.37).exp() - x;
        let g = |a: f32, b: f32| a / b + a;
        let xh: Vec<H> = xs.iter().map(|&v| from(v)).collect();
        let yh: Vec<H> = ys.iter().map(|&v| from(v)).collect();
        let (u, b) = (unary(&xh, f)?, binary(&xh, &yh, g)?);
        for i in 0..xs.len() {
            let want_u = from(f(to(xh[i])));
            assert_eq!(to(u[i]).to_bits(), to(want_u).to_bits(), "unary {i}");
            let want_b = from(g(to(xh[i]), to(yh[i])));
            assert_eq!(to(b[i]).to_bits(), to(want_b).to_bits(), "binary {i}");
        }
        Ok(())
    }

    /// Block by block equals element by element (widen, compute in f32, round once), across
    /// block edges and the parallel threshold, for both half types.
    #[test]
    fn blocks_equal_the_element_wise_definition() -> crate::Result<()> {
        let mut rnd = super::super::gemm_check::uniform(0x1234_5678_9ABC_DEF1);
        for len in [1, BLOCK - 1, 3 * BLOCK + 5, PAR_THRESHOLD + 7] {
            let (xs, ys): (Vec<f32>, Vec<f32>) =
                (0..len).map(|_| (rnd() * 300.0, rnd() * 300.0)).unzip();
            check((&xs, &ys), f16::from_f32, f16::to_f32)?;
            check((&xs, &ys), bf16::from_f32, bf16::to_f32)?;
        }
        Ok(())
    }
}
