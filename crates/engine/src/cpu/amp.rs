//! CPU AMP family: the multi-tensor non-finite check + unscale and the loss-scale update,
//! both writing into the buffers they are given.

use super::compute::{buffer, host, to_f64_vec, PAR_THRESHOLD};
use super::convert::with_wide_vectors;
use super::CpuBackend;
use crate::backend::{check_one_f32, AmpOps, ScaleState, ScaleUpdateSpec};
use crate::{CpuStorage, Error, Layout, Result, StorageRef};
use half::{bf16, f16};
use rayon::prelude::*;
use std::sync::Arc;

/// The single value of a one-element storage, as f64.
pub(crate) fn read_scalar(op: &'static str, s: &StorageRef) -> Result<f64> {
    let h = host(op, s)?;
    if h.len() != 1 {
        return Err(Error::shape(
            op,
            format!("expected one element, got {}", h.len()),
        ));
    }
    Ok(to_f64_vec(&h, &Layout::contiguous([1]))?[0])
}

/// Overwrites a one-element storage with `v` (rounded to its dtype).
pub(crate) fn write_scalar(op: &'static str, s: &StorageRef, v: f64) -> Result<()> {
    let b = buffer(op, s)?;
    let mut h = b.write();
    if h.len() != 1 {
        return Err(Error::shape(
            op,
            format!("expected one element, got {}", h.len()),
        ));
    }
    match &mut *h {
        CpuStorage::F16(x) => x[0] = f16::from_f64(v),
        CpuStorage::BF16(x) => x[0] = bf16::from_f64(v),
        CpuStorage::F32(x) => x[0] = v as f32,
        CpuStorage::F64(x) => x[0] = v,
        CpuStorage::I64(x) => x[0] = v as i64,
    }
    Ok(())
}

/// `x *= inv` over a slice in parallel, through f32; whether any input was inf or NaN.
fn unscale_slice<T: Copy + Send + Sync>(
    v: &mut [T],
    inv: f32,
    to: impl Fn(T) -> f32 + Sync,
    from: impl Fn(f32) -> T + Sync,
) -> bool {
    v.par_chunks_mut(PAR_THRESHOLD)
        .map(|c| {
            let mut bad = false;
            for x in c.iter_mut() {
                let f = to(*x);
                bad |= !f.is_finite();
                *x = from(f * inv);
            }
            bad
        })
        .reduce(|| false, |a, b| a || b)
}

/// The bit-pattern elements [`any_non_finite_bits`] scans.
trait Bits: bytemuck::Pod + Ord + Send + Sync + std::ops::BitAnd<Output = Self> {}
impl<B: bytemuck::Pod + Ord + Send + Sync + std::ops::BitAnd<Output = B>> Bits for B {}

/// The largest `x & magnitude` of a block (0 for an empty one).
#[inline(always)]
fn masked_max<B: Bits>(block: &[B], magnitude: B) -> B {
    block.iter().fold(B::zeroed(), |m, &x| m.max(x & magnitude))
}

/// [`masked_max`] in the CPU's widest vectors ([`with_wide_vectors`]: 32 bytes per instruction
/// with AVX2, 64 with AVX-512). Baseline x86-64 has no unsigned 32-bit max: SSE2 emulates it
/// with compares and masks, which made the scan compute-bound (8.6 % of an fp16 ResNet-18 step
/// at 32 px on an AVX-512 CPU; 3.5 ms of a 4 × 32 px step's 12 ms optimizer phase on an
/// AVX2-only Zen 3).
fn masked_max_fast<B: Bits>(block: &[B], magnitude: B) -> B {
    with_wide_vectors(
        #[inline(always)]
        || masked_max(block, magnitude),
    )
}

/// Whether any value of any of `grads` is inf or NaN (a read-only pass): one parallel scan
/// over pieces of every gradient, not a parallel job per tensor (ResNet-18 has 62, 40 of them
/// batch-norm vectors far too short to split). A max over blocks, not a short-circuiting `any`
/// per element, so the loop vectorizes (a memory-bound pass over a 47 MB gradient); stops at
/// the first block with a non-finite value.
fn any_non_finite(op: &'static str, grads: &[StorageRef]) -> Result<bool> {
    // Each buffer once (two parameters may share a gradient; a second read lock on the same
    // thread may deadlock).
    let mut seen = std::collections::HashSet::new();
    let guards = grads
        .iter()
        .filter(|g| seen.insert(Arc::as_ptr(g)))
        .map(|g| host(op, g))
        .collect::<Result<Vec<_>>>()?;
    /// A piece of one gradient's bit patterns, with its magnitude mask and inf's bits.
    enum Piece<'a> {
        Single(&'a [u32]),
        Half(&'a [u16], u16, u16),
    }
    let mut pieces = Vec::new();
    for h in &guards {
        match &**h {
            CpuStorage::F32(v) => pieces.extend(
                bytemuck::cast_slice::<f32, u32>(v)
                    .chunks(PAR_THRESHOLD)
                    .map(Piece::Single),
            ),
            CpuStorage::F16(v) => pieces.extend(
                bytemuck::cast_slice::<f16, u16>(v)
                    .chunks(PAR_THRESHOLD)
                    .map(|c| Piece::Half(c, 0x7fff, 0x7c00)),
            ),
            CpuStorage::BF16(v) => pieces.extend(
                bytemuck::cast_slice::<bf16, u16>(v)
                    .chunks(PAR_THRESHOLD)
                    .map(|c| Piece::Half(c, 0x7fff, 0x7f80)),
            ),
            CpuStorage::F64(v) => {
                if v.par_iter().any(|x| !x.is_finite()) {
                    return Ok(true);
                }
            }
            CpuStorage::I64(_) => return Err(Error::dtype(op, "gradients must be float tensors")),
        }
    }
    Ok(pieces.par_iter().any(|p| match *p {
        Piece::Single(c) => c
            .chunks(4096)
            .any(|b| masked_max_fast(b, 0x7fff_ffff) >= 0x7f80_0000),
        Piece::Half(c, magnitude, inf) => {
            c.chunks(4096).any(|b| masked_max_fast(b, magnitude) >= inf)
        }
    }))
}

/// Unscales `g` in place by `inv` and says whether any value was inf or NaN.
fn unscale_one(op: &'static str, g: &StorageRef, inv: f32) -> Result<bool> {
    let b = buffer(op, g)?;
    let mut h = b.write();
    Ok(match &mut *h {
        CpuStorage::F32(v) => unscale_slice(v, inv, |x| x, |x| x),
        CpuStorage::F16(v) => unscale_slice(v, inv, f16::to_f32, f16::from_f32),
        CpuStorage::BF16(v) => unscale_slice(v, inv, bf16::to_f32, bf16::from_f32),
        CpuStorage::F64(v) => {
            let inv = f64::from(inv);
            let bad = v.iter().any(|x| !x.is_finite());
            v.par_iter_mut().for_each(|x| *x *= inv);
            bad
        }
        CpuStorage::I64(_) => return Err(Error::dtype(op, "gradients must be float tensors")),
    })
}

impl AmpOps for CpuBackend {
    /// The scale is read in f32, as the CUDA kernel reads it.
    fn non_finite_check_and_unscale(
        &self,
        grads: &[StorageRef],
        found_inf: &StorageRef,
        inv_scale: &StorageRef,
    ) -> Result<()> {
        const OP: &str = "non_finite_check_and_unscale";
        check_one_f32(OP, "found_inf", found_inf)?;
        check_one_f32(OP, "inv_scale", inv_scale)?;
        if let Some(g) = grads
            .iter()
            .find(|g| Arc::ptr_eq(g, found_inf) || Arc::ptr_eq(g, inv_scale))
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "a {}-element gradient aliases found_inf or inv_scale",
                    g.len()
                ),
            ));
        }
        let inv = read_scalar(OP, inv_scale)? as f32;
        // A scale that underflowed to 0 (inverse inf) or is NaN counts as an overflow: the step
        // is skipped and nothing is written (unscaling would write inf/NaN everywhere).
        let mut found = !inv.is_finite();
        if !found && inv == 1.0 {
            // The check a fused optimizer's step needs: the values cannot change, only reads.
            found = any_non_finite(OP, grads)?;
        } else if !found {
            for g in grads {
                found |= unscale_one(OP, g, inv)?;
            }
        }
        if found {
            write_scalar(OP, found_inf, 1.0)?;
        }
        Ok(())
    }

    /// See [`ScaleUpdateSpec`]; the scale is kept in f32. As PyTorch's `_amp_update_scale_`,
    /// the f32 scale is multiplied by the (f64) factor in double precision and rounded to f32
    /// once; the min/max clamp happens in f64 before that rounding.
    fn update_scale(
        &self,
        state: &ScaleState,
        found_inf: &StorageRef,
        spec: &ScaleUpdateSpec,
    ) -> Result<()> {
        const OP: &str = "update_scale";
        let mut scale = read_scalar(OP, &state.scale)? as f32;
        let mut growth = read_scalar(OP, &state.growth_tracker)? as i64;
        let mut hyst = read_scalar(OP, &state.hysteresis_tracker)? as i64;
        if read_scalar(OP, found_inf)? != 0.0 {
            growth = 0;
            hyst -= 1;
            if hyst <= 0 {
                scale = (f64::from(scale) * spec.backoff_factor).max(spec.min_scale) as f32;
            }
        } else {
            growth += 1;
            if growth == spec.growth_interval {
                growth = 0;
                hyst = spec.hysteresis;
                let grown = f64::from(scale) * spec.growth_factor;
                if (grown as f32).is_finite() {
                    scale = grown.min(spec.max_scale) as f32;
                }
            }
        }
        write_scalar(OP, &state.scale, f64::from(scale))?;
        write_scalar(OP, &state.growth_tracker, growth as f64)?;
        write_scalar(OP, &state.hysteresis_tracker, hyst as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::wrap;
    use crate::DType;

    /// Finite values spanning every magnitude up to the dtype's largest, from a small LCG.
    fn finite(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                sign * (u * 2.0 - 1.0).exp2() * 10f64.powi((s % 9) as i32 - 4)
            })
            .collect()
    }

    fn storage(dtype: DType, v: &[f64]) -> StorageRef {
        wrap(match dtype {
            DType::F32 => CpuStorage::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F16 => CpuStorage::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            _ => CpuStorage::F64(v.to_vec()),
        })
    }

    /// The scan flags exactly the lists holding an inf or NaN — at the first, a middle and the
    /// last element of a multi-block tensor among short ones — and not the dtype's largest
    /// finite values.
    #[test]
    fn non_finite_scan_finds_every_inf_and_nan() {
        let n = 3 * PAR_THRESHOLD + 4099;
        for (dtype, max) in [
            (DType::F32, f64::from(f32::MAX)),
            (DType::F16, f16::MAX.to_f64()),
            (DType::BF16, bf16::MAX.to_f64()),
            (DType::F64, f64::MAX),
        ] {
            let mut v = finite(n, 7);
            v[n / 3] = max;
            v[n / 2] = -max;
            // Among other gradients (one of them listed twice: scanned once).
            let small = storage(dtype, &finite(37, 3));
            let clean = storage(dtype, &v);
            let list = |g: &StorageRef| [small.clone(), g.clone(), small.clone()];
            assert!(
                !any_non_finite("t", &list(&clean)).expect("scan"),
                "{dtype}"
            );
            for at in [0, n / 2 + 1, n - 1] {
                for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -f64::NAN] {
                    let mut w = v.clone();
                    w[at] = bad;
                    let g = storage(dtype, &w);
                    assert!(
                        any_non_finite("t", &list(&g)).expect("scan"),
                        "{dtype} {bad} at {at}"
                    );
                }
            }
        }
    }
}
