//! The CUDA optim family (`kernels-cu/optim.cu`): fused multi-tensor Adam/AdamW and SGD, in
//! place, reading the loss scale and the overflow flag on the device. Launches are typed and
//! crate-private; every record is built from checked buffers of this device.

use super::amp::multi_tensor;
use super::backend::CudaBackend;
use super::launch::{dtype_code, launch, THREADS};
use super::storage::CudaBuffer;
use crate::kernel_args;
use hemi_engine::backend::{
    check_distinct, AdamTensors, BackendDevice, FusedAdamSpec, OptimOps, SgdSpec, SgdTensors,
};
use hemi_engine::{BackendStorage, DType, Error, Result, StorageRef};

/// `struct AdamRef` of optim.cu (layout asserted on both sides).
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamRef {
    p: u64,
    g: u64,
    m: u64,
    v: u64,
    vmax: u64,
    step: u64,
    len: i64,
    grad_dtype: i32,
    pad: i32,
}

/// `struct AdamHyper` of optim.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdamHyper {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    amsgrad: i32,
    decoupled: i32,
    has_scale: i32,
}

/// `struct SgdRef` of optim.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SgdRef {
    p: u64,
    g: u64,
    buf: u64,
    len: i64,
    grad_dtype: i32,
    pad: i32,
}

/// `struct SgdHyper` of optim.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SgdHyper {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    nesterov: i32,
    first_step: i32,
    has_buf: i32,
    pad: i32,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<AdamRef>() == 64 && offset_of!(AdamRef, step) == 40);
    assert!(offset_of!(AdamRef, len) == 48 && offset_of!(AdamRef, grad_dtype) == 56);
    assert!(size_of::<AdamHyper>() == 32 && offset_of!(AdamHyper, amsgrad) == 20);
    assert!(size_of::<SgdRef>() == 40 && offset_of!(SgdRef, len) == 24);
    assert!(offset_of!(SgdRef, grad_dtype) == 32);
    assert!(size_of::<SgdHyper>() == 32 && offset_of!(SgdHyper, nesterov) == 16);
};

impl CudaBackend {
    /// A float32 buffer of `n` elements (optimizer state and master weights are f32 here).
    fn f32_state<'a>(
        &self,
        op: &'static str,
        what: &str,
        s: &'a StorageRef,
        n: usize,
    ) -> Result<&'a CudaBuffer> {
        let b = self.get(op, s)?;
        if b.dtype() != DType::F32 {
            return Err(Error::Unsupported {
                op,
                device: self.device(),
                msg: format!(
                    "{what} is {} (the CUDA optimizers keep float32 state)",
                    b.dtype()
                ),
            });
        }
        self.expect_len(op, b, n)?;
        Ok(b)
    }

    /// A gradient buffer of `n` F32/F16/BF16 elements and its dtype code.
    fn grad_ref<'a>(
        &self,
        op: &'static str,
        s: &'a StorageRef,
        n: usize,
    ) -> Result<(&'a CudaBuffer, i32)> {
        let g = self.get(op, s)?;
        self.expect_len(op, g, n)?;
        Ok((g, dtype_code(op, self.device(), g.dtype())?))
    }

    /// The optional flag's address (0 when absent), checked to be one f32.
    fn flag_ptr(&self, op: &'static str, s: Option<&StorageRef>) -> Result<u64> {
        let Some(s) = s else { return Ok(0) };
        let b = self.get(op, s)?;
        if b.dtype() != DType::F32 || b.len() != 1 {
            let msg = format!("flag must be one float32, got {} x{}", b.dtype(), b.len());
            return Err(Error::DTypeMismatch { op, msg });
        }
        Ok(b.ptr())
    }
}

impl OptimOps for CudaBackend {
    fn adam_step(
        &self,
        tensors: &[AdamTensors],
        spec: &FusedAdamSpec,
        grad_scale: Option<&StorageRef>,
        found_inf: Option<&StorageRef>,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        let mut refs = Vec::with_capacity(tensors.len());
        for t in tensors {
            let mut all = vec![&t.param, &t.grad, &t.exp_avg, &t.exp_avg_sq, &t.step];
            all.extend(t.max_exp_avg_sq.as_ref());
            check_distinct(OP, &all)?;
            let n = t.param.len();
            let p = self.f32_state(OP, "the parameter", &t.param, n)?;
            let (g, grad_dtype) = self.grad_ref(OP, &t.grad, n)?;
            let m = self.f32_state(OP, "exp_avg", &t.exp_avg, n)?;
            let v = self.f32_state(OP, "exp_avg_sq", &t.exp_avg_sq, n)?;
            let vmax = match &t.max_exp_avg_sq {
                Some(s) => self.f32_state(OP, "max_exp_avg_sq", s, n)?.ptr(),
                None => 0,
            };
            let step = self.f32_state(OP, "the step count", &t.step, 1)?;
            refs.push(AdamRef {
                p: p.ptr(),
                g: g.ptr(),
                m: m.ptr(),
                v: v.ptr(),
                vmax,
                step: step.ptr(),
                len: n as i64,
                grad_dtype,
                pad: 0,
            });
        }
        if refs.is_empty() {
            return Ok(());
        }
        let scale = self.flag_ptr(OP, grad_scale)?;
        let found = self.flag_ptr(OP, found_inf)?;
        let max_len = refs.iter().map(|r| r.len as usize).max().unwrap_or(0);
        let cfg = multi_tensor(OP, max_len, refs.len())?;
        let table = self.upload_table(&refs)?;
        let mut h = AdamHyper {
            lr: spec.lr as f32,
            beta1: spec.beta1 as f32,
            beta2: spec.beta2 as f32,
            eps: spec.eps as f32,
            weight_decay: spec.weight_decay as f32,
            amsgrad: i32::from(spec.amsgrad),
            decoupled: i32::from(spec.decoupled),
            has_scale: i32::from(grad_scale.is_some()),
        };
        let (mut r, mut s, mut f) = (table.ptr, scale, found);
        let mut a = kernel_args![r, h, s, f];
        // SAFETY: fused_adam(const AdamRef*, AdamHyper, const float*, const float*); every
        // record's buffers were checked above (f32 state of `len` elements, a grad of `len`
        // elements of its dtype code, a one-element step); null scale/flag are allowed.
        unsafe { launch(self.driver(), "fused_adam", cfg, &mut a) }?;
        let (mut r, mut count, mut f, mut s) = (table.ptr, refs.len() as i64, found, scale);
        let mut a = kernel_args![r, count, f, s];
        let cfg = super::driver::LaunchConfig::linear(refs.len(), THREADS, 64);
        // SAFETY: adam_step_counts(const AdamRef*, long long, const float*, const float*);
        // `count` records; null flag/scale allowed, else one f32 each (checked above).
        unsafe { launch(self.driver(), "adam_step_counts", cfg, &mut a) }
    }

    fn sgd_step(
        &self,
        tensors: &[SgdTensors],
        spec: &SgdSpec,
        found_inf: Option<&StorageRef>,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        let mut refs = Vec::with_capacity(tensors.len());
        let has_buf = tensors.iter().any(|t| t.momentum_buffer.is_some());
        for t in tensors {
            let mut all = vec![&t.param, &t.grad];
            all.extend(t.momentum_buffer.as_ref());
            check_distinct(OP, &all)?;
            if t.momentum_buffer.is_some() != has_buf {
                return Err(Error::InvalidArgument {
                    op: OP,
                    msg: "either every parameter of a call has a momentum buffer or none".into(),
                });
            }
            let n = t.param.len();
            let p = self.f32_state(OP, "the parameter", &t.param, n)?;
            let (g, grad_dtype) = self.grad_ref(OP, &t.grad, n)?;
            let buf = match &t.momentum_buffer {
                Some(s) => self.f32_state(OP, "momentum_buffer", s, n)?.ptr(),
                None => 0,
            };
            refs.push(SgdRef {
                p: p.ptr(),
                g: g.ptr(),
                buf,
                len: n as i64,
                grad_dtype,
                pad: 0,
            });
        }
        if refs.is_empty() {
            return Ok(());
        }
        let found = self.flag_ptr(OP, found_inf)?;
        let max_len = refs.iter().map(|r| r.len as usize).max().unwrap_or(0);
        let cfg = multi_tensor(OP, max_len, refs.len())?;
        let table = self.upload_table(&refs)?;
        let mut h = SgdHyper {
            lr: spec.lr as f32,
            momentum: spec.momentum as f32,
            one_minus_dampening: (1.0 - spec.dampening) as f32,
            weight_decay: spec.weight_decay as f32,
            nesterov: i32::from(spec.nesterov),
            first_step: i32::from(spec.first_step),
            has_buf: i32::from(has_buf),
            pad: 0,
        };
        let (mut r, mut f) = (table.ptr, found);
        let mut a = kernel_args![r, h, f];
        // SAFETY: fused_sgd(const SgdRef*, SgdHyper, const float*); every record's buffers
        // were checked above; a null flag is allowed.
        unsafe { launch(self.driver(), "fused_sgd", cfg, &mut a) }
    }
}
