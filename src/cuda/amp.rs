//! The CUDA amp family (`kernels-cu/amp.cu`): the multi-tensor non-finite check + unscale and
//! the device-side loss-scale update, both in place. Launches are typed and crate-private.

use super::backend::CudaBackend;
use super::driver::LaunchConfig;
use super::launch::{dtype_code, launch, THREADS};
use crate::kernel_args;
use hemi_engine::backend::{check_one_f32, AmpOps, BackendDevice, ScaleState, ScaleUpdateSpec};
use hemi_engine::{BackendStorage, DType, Error, Result, StorageRef};

/// `struct TensorRef` of amp.cu (layout asserted on both sides).
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TensorRef {
    ptr: u64,
    len: i64,
    dtype: i32,
    pad: i32,
}
const _: () = {
    assert!(std::mem::size_of::<TensorRef>() == 24);
    assert!(std::mem::offset_of!(TensorRef, len) == 8);
    assert!(std::mem::offset_of!(TensorRef, dtype) == 16);
};

/// Grid of a multi-tensor launch: x blocks cover the largest tensor (at most 1024), one y
/// per tensor (at most 65535, checked by the callers).
pub(crate) fn multi_tensor(
    op: &'static str,
    max_len: usize,
    tensors: usize,
) -> Result<LaunchConfig> {
    if tensors > 65535 {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("{tensors} tensors exceed one launch's 65535"),
        });
    }
    let x = max_len.div_ceil(THREADS as usize).clamp(1, 1024) as u32;
    Ok(LaunchConfig {
        grid: [x, tensors as u32, 1],
        block: [THREADS, 1, 1],
        smem: 0,
    })
}

impl AmpOps for CudaBackend {
    fn non_finite_check_and_unscale(
        &self,
        grads: &[StorageRef],
        found_inf: &StorageRef,
        inv_scale: &StorageRef,
    ) -> Result<()> {
        const OP: &str = "non_finite_check_and_unscale";
        check_one_f32(OP, "found_inf", found_inf)?;
        check_one_f32(OP, "inv_scale", inv_scale)?;
        let (f, inv) = (self.get(OP, found_inf)?, self.get(OP, inv_scale)?);
        let refs = grads
            .iter()
            .map(|g| {
                let gb = self.get(OP, g)?;
                Ok(TensorRef {
                    ptr: gb.ptr(),
                    len: gb.len() as i64,
                    dtype: dtype_code(OP, self.device(), gb.dtype())?,
                    pad: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if refs.is_empty() {
            return Ok(());
        }
        let max_len = refs.iter().map(|r| r.len as usize).max().unwrap_or(0);
        let cfg = multi_tensor(OP, max_len, refs.len())?;
        let table = self.upload_table(&refs)?;
        let (mut r, mut fp, mut s) = (table.ptr, f.ptr(), inv.ptr());
        let mut a = kernel_args![r, fp, s];
        // SAFETY: non_finite_check_and_unscale(const TensorRef*, float*, const float*); every
        // record is a live buffer of this device holding `len` elements of its dtype, and the
        // flag and scale were checked to be one f32 each.
        unsafe { launch(self.driver(), "non_finite_check_and_unscale", cfg, &mut a) }
    }

    fn update_scale(
        &self,
        state: &ScaleState,
        found_inf: &StorageRef,
        spec: &ScaleUpdateSpec,
    ) -> Result<()> {
        const OP: &str = "update_scale";
        let scale = self.get(OP, &state.scale)?;
        let growth = self.get(OP, &state.growth_tracker)?;
        let hyst = self.get(OP, &state.hysteresis_tracker)?;
        let found = self.get(OP, found_inf)?;
        check_one_f32(OP, "scale", &state.scale)?;
        check_one_f32(OP, "found_inf", found_inf)?;
        for (b, what) in [(growth, "growth_tracker"), (hyst, "hysteresis_tracker")] {
            if b.dtype() != DType::I64 || b.len() != 1 {
                let msg = format!("{what} must be one int64, got {} x{}", b.dtype(), b.len());
                return Err(Error::DTypeMismatch { op: OP, msg });
            }
        }
        let (mut s, mut g, mut h, mut f) = (scale.ptr(), growth.ptr(), hyst.ptr(), found.ptr());
        // Factors and bounds stay f64: the kernel multiplies in double and rounds once.
        let (mut gf, mut bf, mut gi) = (
            spec.growth_factor,
            spec.backoff_factor,
            spec.growth_interval,
        );
        let (mut lo, mut hi, mut hy) = (spec.min_scale, spec.max_scale, spec.hysteresis);
        let mut a = kernel_args![s, g, h, f, gf, bf, gi, lo, hi, hy];
        let cfg = LaunchConfig {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            smem: 0,
        };
        // SAFETY: update_scale(float*, long long*, long long*, const float*, double, double,
        // long long, double, double, long long); the four buffers were checked above.
        unsafe { launch(self.driver(), "update_scale", cfg, &mut a) }
    }
}
