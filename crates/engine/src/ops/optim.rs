//! Tensor-level fused optimizer steps (the optim family): one in-place backend call over many
//! parameters, with the checks and version bumps of any in-place write. The optimizers in
//! `optim/` are built on these.

use super::amp::{expect_scalar, expect_whole};
use super::same_device;
use crate::backend::{AdamTensors, FusedAdamSpec, SgdSpec, SgdTensors};
use crate::{DType, Result, Tensor};

/// One parameter's tensors for [`Tensor::adam_step_`]: contiguous, each owning its buffer,
/// all on one device; moments in the parameter's dtype; `step` one F32 value.
#[derive(Debug, Clone, Copy)]
pub struct AdamParam<'a> {
    /// The parameter (F32, or F64 on the CPU).
    pub param: &'a Tensor,
    /// Its gradient (F16/BF16/F32, F64 with F64 parameters); unscaled in place with a scale.
    pub grad: &'a Tensor,
    /// First moment.
    pub exp_avg: &'a Tensor,
    /// Second moment.
    pub exp_avg_sq: &'a Tensor,
    /// AMSGrad's running maximum of the second moment.
    pub max_exp_avg_sq: Option<&'a Tensor>,
    /// The step count (incremented in place).
    pub step: &'a Tensor,
}

/// One parameter's tensors for [`Tensor::sgd_step_`] (same requirements as [`AdamParam`]).
#[derive(Debug, Clone, Copy)]
pub struct SgdParam<'a> {
    /// The parameter.
    pub param: &'a Tensor,
    /// Its gradient.
    pub grad: &'a Tensor,
    /// The momentum buffer, when momentum is on.
    pub momentum_buffer: Option<&'a Tensor>,
}

impl Tensor {
    /// Fused Adam/AdamW over many parameters, in place (`OptimOps::adam_step`): divides each
    /// gradient by `grad_scale` when given (writing the unscaled gradient back), updates
    /// parameter and moments and increments the step; when `found_inf` is nonzero nothing
    /// changes — decided on the device, no host sync.
    pub fn adam_step_(
        params: &[AdamParam<'_>],
        spec: &FusedAdamSpec,
        grad_scale: Option<&Tensor>,
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        const OP: &str = "adam_step_";
        let Some(first) = params.first() else {
            return Ok(());
        };
        let mut written: Vec<&Tensor> = Vec::new();
        for p in params {
            let mut ts = vec![p.param, p.grad, p.exp_avg, p.exp_avg_sq, p.step];
            ts.extend(p.max_exp_avg_sq);
            expect_whole(OP, "tensor", &ts)?;
            expect_scalar(OP, "step", p.step, DType::F32)?;
            written.extend(ts);
        }
        let mut all = written.clone();
        all.extend(grad_scale.into_iter().chain(found_inf));
        same_device(OP, &all)?;
        for (what, t) in [("grad_scale", grad_scale), ("found_inf", found_inf)] {
            if let Some(t) = t {
                expect_scalar(OP, what, t, DType::F32)?;
            }
        }
        let tensors: Vec<AdamTensors> = params
            .iter()
            .map(|p| AdamTensors {
                param: p.param.storage(),
                grad: p.grad.storage(),
                exp_avg: p.exp_avg.storage(),
                exp_avg_sq: p.exp_avg_sq.storage(),
                max_exp_avg_sq: p.max_exp_avg_sq.map(Tensor::storage),
                step: p.step.storage(),
            })
            .collect();
        first.param.backend()?.adam_step(
            &tensors,
            spec,
            grad_scale.map(Tensor::storage).as_ref(),
            found_inf.map(Tensor::storage).as_ref(),
        )?;
        // The gradient is written only when it is unscaled.
        for p in params {
            for t in [p.param, p.exp_avg, p.exp_avg_sq, p.step] {
                t.mark_modified();
            }
            p.max_exp_avg_sq.iter().for_each(|t| t.mark_modified());
            if grad_scale.is_some() {
                p.grad.mark_modified();
            }
        }
        Ok(())
    }

    /// Fused SGD over many parameters, in place (`OptimOps::sgd_step`; see [`SgdSpec`] for
    /// the update and `first_step`). Skipped entirely when `found_inf` is nonzero.
    pub fn sgd_step_(
        params: &[SgdParam<'_>],
        spec: &SgdSpec,
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        const OP: &str = "sgd_step_";
        let Some(first) = params.first() else {
            return Ok(());
        };
        let mut all: Vec<&Tensor> = Vec::new();
        for p in params {
            let mut ts = vec![p.param, p.grad];
            ts.extend(p.momentum_buffer);
            expect_whole(OP, "tensor", &ts)?;
            all.extend(ts);
        }
        if let Some(f) = found_inf {
            expect_scalar(OP, "found_inf", f, DType::F32)?;
            all.push(f);
        }
        same_device(OP, &all)?;
        let tensors: Vec<SgdTensors> = params
            .iter()
            .map(|p| SgdTensors {
                param: p.param.storage(),
                grad: p.grad.storage(),
                momentum_buffer: p.momentum_buffer.map(Tensor::storage),
            })
            .collect();
        first
            .param
            .backend()?
            .sgd_step(&tensors, spec, found_inf.map(Tensor::storage).as_ref())?;
        for p in params {
            p.param.mark_modified();
            p.momentum_buffer.iter().for_each(|t| t.mark_modified());
        }
        Ok(())
    }
}
