//! Elementwise ops on contiguous F16/BF16 data without an f32 copy of the tensor: each block of
//! [`BLOCK`] elements is widened into an f32 buffer in L1, computed there and rounded back into
//! the output. The numerics are those of the general path (widen exactly, compute in f32,
//! round once to nearest even); only the memory traffic differs (one read per input and one
//! write of the output, instead of two f32 passes more).

use super::compute::PAR_THRESHOLD;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Elements per block (8 KiB of f32: two buffers stay in L1).
const BLOCK: usize = 2048;

/// A half-precision element type with slice conversions to and from f32.
pub(crate) trait Half: bytemuck::Pod + Send + Sync {
    fn widen(src: &[Self], dst: &mut [f32]);
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl Half for half::f16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src)
    }
}

impl Half for half::bf16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        super::convert::serial::bf16_to_f32(src, dst)
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        super::convert::serial::f32_to_bf16(src, dst)
    }
}

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

    /// Block by block equals element by element (widen, compute in f32, round once), across
    /// block edges and the parallel threshold, for both half types.
    #[test]
    fn blocks_equal_the_element_wise_definition() -> crate::Result<()> {
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 300.0
        };
        for len in [1, BLOCK - 1, 3 * BLOCK + 5, PAR_THRESHOLD + 7] {
            let (xs, ys): (Vec<f32>, Vec<f32>) = (0..len).map(|_| (rnd(), rnd())).unzip();
            let f = |x: f32| (x * 0.37).exp() - x;
            let g = |a: f32, b: f32| a / b + a;
            let (xh, yh): (Vec<f16>, Vec<f16>) = (
                xs.iter().map(|&v| f16::from_f32(v)).collect(),
                ys.iter().map(|&v| f16::from_f32(v)).collect(),
            );
            let u = unary(&xh, f)?;
            let b = binary(&xh, &yh, g)?;
            for i in 0..len {
                assert_eq!(
                    u[i].to_bits(),
                    f16::from_f32(f(xh[i].to_f32())).to_bits(),
                    "f16 unary {i}"
                );
                let want = f16::from_f32(g(xh[i].to_f32(), yh[i].to_f32()));
                assert_eq!(b[i].to_bits(), want.to_bits(), "f16 binary {i}");
            }
            let (xb, yb): (Vec<bf16>, Vec<bf16>) = (
                xs.iter().map(|&v| bf16::from_f32(v)).collect(),
                ys.iter().map(|&v| bf16::from_f32(v)).collect(),
            );
            let u = unary(&xb, f)?;
            let b = binary(&xb, &yb, g)?;
            for i in 0..len {
                assert_eq!(
                    u[i].to_bits(),
                    bf16::from_f32(f(xb[i].to_f32())).to_bits(),
                    "bf16 unary {i}"
                );
                let want = bf16::from_f32(g(xb[i].to_f32(), yb[i].to_f32()));
                assert_eq!(b[i].to_bits(), want.to_bits(), "bf16 binary {i}");
            }
        }
        Ok(())
    }
}
