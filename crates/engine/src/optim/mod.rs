//! Optimizers with the update rules, defaults and state-dict buffer names of `torch.optim`:
//! [`Sgd`] (momentum, dampening, Nesterov, weight decay), [`Adam`] and [`AdamW`] (both with
//! AMSGrad).
//!
//! An optimizer holds one parameter group. [`Optimizer::step`] updates every parameter that has
//! a gradient (parameters whose `grad()` is `None` are skipped, as in PyTorch) under
//! [`no_grad`](crate::no_grad), in the parameter's dtype, and writes the result back with
//! [`Tensor::assign`]. State buffers have the parameter's dtype and device.
//!
//! The optimizers never write into their state tensors in place: each step stores new
//! tensors, so an [`OptimizerState`] taken earlier keeps its values while training goes on.
//! [`Optimizer::load_state_dict`] copies the tensors it is given.
//!
//! ```
//! use hemi_engine::optim::{Optimizer, Sgd, SgdConfig};
//! use hemi_engine::{DType, Device, Tensor};
//! let w = Tensor::from_vec(vec![1.0f32, -2.0], [2], Device::Cpu)?.requires_grad_(true)?;
//! let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.5).momentum(0.9))?;
//! w.square()?.sum_all()?.backward()?; // grad = 2w = [2, -4]
//! opt.step()?;
//! assert_eq!(w.to_vec::<f32>()?, vec![0.0, 0.0]); // w - 0.5 * grad
//! opt.zero_grad();
//! let saved = opt.state_dict();
//! assert_eq!(saved.kind, "SGD");
//! assert!(saved.params[0].buffers.contains_key("momentum_buffer"));
//! # Ok::<(), hemi_engine::Error>(())
//! ```

mod adam;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamConfig, AdamW};
pub use schedule::{LrScheduler, Schedule, SchedulerState};
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, Result, Tensor};
use std::collections::{BTreeMap, HashSet};

/// A first-order optimizer over a fixed list of parameters (object safe).
pub trait Optimizer {
    /// One update of every parameter that has a gradient; the others are left untouched.
    fn step(&mut self) -> Result<()>;
    /// Drops the gradients of all parameters (PyTorch's `zero_grad(set_to_none=True)`).
    fn zero_grad(&self);
    /// The learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate used by the following steps (for schedulers). A negative, NaN
    /// or infinite rate is an `Err(InvalidArgument)` and leaves the rate unchanged.
    fn set_lr(&mut self, lr: f64) -> Result<()>;
    /// The parameters, in the order they were given.
    fn params(&self) -> &[Tensor];
    /// The hyper-parameters and per-parameter state. The tensors are shared with the
    /// optimizer, which never writes into them, so later steps leave the snapshot as it is.
    fn state_dict(&self) -> OptimizerState;
    /// Whether [`Optimizer::step_amp`] is implemented: the step divides gradients by the loss
    /// scale and skips on overflow on the device, with no host synchronization (PyTorch's
    /// `_step_supports_amp_scaling`, true for fused Adam/AdamW).
    fn supports_amp_scaling(&self) -> bool {
        false
    }
    /// One step for a gradient scaler: gradients are divided by `grad_scale` (when given)
    /// inside the step, and when `found_inf` (F32 `[1]`) is nonzero nothing changes — not the
    /// parameters, not the state, not the step counts. Only optimizers whose
    /// [`Optimizer::supports_amp_scaling`] is true implement it.
    fn step_amp(&mut self, grad_scale: Option<&Tensor>, found_inf: &Tensor) -> Result<()> {
        let _ = (grad_scale, found_inf);
        Err(Error::InvalidArgument {
            op: "step_amp",
            msg: "this optimizer has no fused AMP step; use step() after unscaling".into(),
        })
    }
    /// Replaces hyper-parameters and per-parameter state with deep copies of `state` (buffers
    /// cast to each parameter's dtype and device). Errors, leaving the optimizer unchanged,
    /// when `state` is from another kind of optimizer, has another number of parameters,
    /// an unknown buffer, a buffer whose shape differs from its parameter's, misses a
    /// buffer a started parameter needs, or has an invalid or missing hyper-parameter.
    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()>;
}

/// An optimizer's state dict: what `torch.optim.Optimizer.state_dict()` holds for one
/// parameter group. `Optimizer::state_dict` returns a snapshot (the buffers are copied, since
/// the optimizer updates its live buffers in place); a clone of an `OptimizerState` shares
/// the snapshot's data.
#[derive(Debug, Clone, Default)]
pub struct OptimizerState {
    /// The optimizer kind, PyTorch's class name: `"SGD"`, `"Adam"` or `"AdamW"`.
    pub kind: String,
    /// Hyper-parameters by PyTorch's names (`lr`, `momentum`, `betas` as `beta1`/`beta2`,
    /// ...); booleans are `0.0` / `1.0`.
    pub hyper_params: BTreeMap<String, f64>,
    /// Per-parameter state, in parameter order.
    pub params: Vec<ParamState>,
}

/// The state of one parameter.
#[derive(Debug, Clone, Default)]
pub struct ParamState {
    /// How many updates this parameter has received.
    pub step: u64,
    /// Named buffers with PyTorch's names: `momentum_buffer` (SGD); `exp_avg`, `exp_avg_sq`
    /// and, with AMSGrad, `max_exp_avg_sq` (Adam, AdamW). Absent until first needed.
    pub buffers: BTreeMap<String, Tensor>,
}

impl ParamState {
    /// A copy whose buffers own their data (the live buffers are updated in place by later
    /// steps). A buffer that cannot be copied (out of device memory) is shared instead.
    pub(crate) fn snapshot(&self) -> ParamState {
        ParamState {
            step: self.step,
            buffers: self
                .buffers
                .iter()
                .map(|(k, t)| (k.clone(), t.deep_copy().unwrap_or_else(|_| t.clone())))
                .collect(),
        }
    }
}

/// Checks the parameter list like PyTorch: not empty, leaf float tensors, no duplicates;
/// and contiguous, as [`Tensor::assign`] requires.
fn check_params(op: &'static str, params: &[Tensor]) -> Result<()> {
    if params.is_empty() {
        return Err(Error::invalid(op, "optimizer got an empty parameter list"));
    }
    let mut seen = HashSet::new();
    for (i, p) in params.iter().enumerate() {
        let bad = if !p.is_leaf() {
            "can't optimize a non-leaf Tensor"
        } else if !p.dtype().is_float() {
            "needs a float tensor"
        } else if !p.layout().is_contiguous() || p.layout().offset() != 0 {
            "needs a contiguous tensor"
        } else if !seen.insert(p.id()) {
            "appears more than once in the parameter list"
        } else {
            continue;
        };
        return Err(Error::invalid(
            op,
            format!("parameter {i} ({}, {:?}): {bad}", p.dtype(), p.shape()),
        ));
    }
    Ok(())
}

/// `Err(InvalidArgument)` with PyTorch's message when `ok` is false.
/// Errs unless `lr` is finite and non-negative (PyTorch's message).
fn check_lr(op: &'static str, lr: f64) -> Result<()> {
    ensure(op, lr.is_finite() && lr >= 0.0, || {
        format!("Invalid learning rate: {lr}")
    })
}

fn ensure(op: &'static str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(op, msg()))
    }
}

/// Whether the fused in-place steps take these parameters: all F32 or F64 (full-precision
/// master weights); F16/BF16 parameters take the unfused tensor-op path.
fn fusable(params: &[Tensor]) -> bool {
    params
        .iter()
        .all(|p| matches!(p.dtype(), crate::DType::F32 | crate::DType::F64))
}

/// The gradient of `p` as the fused in-place kernels take it — a contiguous tensor owning its
/// buffer, F64 only for F64 parameters — converted or copied once when it is not, and then
/// stored back as `p`'s gradient; `None` when `p` has none.
fn fused_grad(p: &Tensor) -> Result<Option<Tensor>> {
    let Some(mut g) = p.grad() else {
        return Ok(None);
    };
    let mut replaced = false;
    if g.dtype() == crate::DType::F64 && p.dtype() != crate::DType::F64 {
        g = g.to_dtype(p.dtype())?;
        replaced = true;
    }
    if !g.owns_whole_buffer() {
        g = g.deep_copy()?;
        replaced = true;
    }
    if replaced {
        p.set_grad(Some(g.clone()))?;
    }
    Ok(Some(g))
}

/// The state buffer `name` of parameter `p` that fused steps write in place: reused when it
/// owns its whole buffer in `p`'s dtype, copied once otherwise (e.g. after
/// `load_state_dict`), created as zeros when absent — and kept in `state`. The flag says
/// whether it was created now.
fn inplace_state(state: &mut ParamState, name: &str, p: &Tensor) -> Result<(Tensor, bool)> {
    let (b, created) = match state.buffers.get(name) {
        Some(b) if b.owns_whole_buffer() && b.dtype() == p.dtype() => {
            return Ok((b.clone(), false))
        }
        Some(b) => (b.to_dtype(p.dtype())?.deep_copy()?, false),
        None => (p.zeros_like()?, true),
    };
    state.buffers.insert(name.to_string(), b.clone());
    Ok((b, created))
}

/// The gradient of `p` in `p`'s dtype, or `None` when it has none.
fn grad_of(p: &Tensor) -> Result<Option<Tensor>> {
    p.grad().map(|g| g.to_dtype(p.dtype())).transpose()
}

/// A hyper-parameter of a loaded state; an error names the missing key.
fn hyper(state: &OptimizerState, key: &str) -> Result<f64> {
    state.hyper_params.get(key).copied().ok_or_else(|| {
        Error::invalid(
            "load_state_dict",
            format!("{} state has no hyper-parameter `{key}`", state.kind),
        )
    })
}

/// A boolean hyper-parameter stored as `0.0` / `1.0`.
fn flag(state: &OptimizerState, key: &str) -> Result<bool> {
    let v = hyper(state, key)?;
    ensure("load_state_dict", v == 0.0 || v == 1.0, || {
        format!("hyper-parameter `{key}` must be 0 or 1, got {v}")
    })?;
    Ok(v == 1.0)
}

/// Checks that `state` is from an optimizer of this `kind` (before its hyper-parameters).
fn check_kind(kind: &'static str, state: &OptimizerState) -> Result<()> {
    ensure("load_state_dict", state.kind == kind, || {
        format!(
            "the state is from a `{}` optimizer, this is `{kind}`",
            state.kind
        )
    })
}

/// Checks `state` against this optimizer's `params` and returns deep copies of its
/// per-parameter states, cast to each parameter's dtype and device. `allowed` are the buffer
/// names of this `kind`; `required` those a parameter with `step > 0` must have.
fn load_param_states(
    kind: &'static str,
    params: &[Tensor],
    state: &OptimizerState,
    allowed: &[&str],
    required: &[&str],
) -> Result<Vec<ParamState>> {
    const OP: &str = "load_state_dict";
    if state.params.len() != params.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "the state has {} parameters, this {kind} optimizer has {}",
                state.params.len(),
                params.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(params.len());
    for (i, (p, ps)) in params.iter().zip(&state.params).enumerate() {
        if let Some(name) = ps.buffers.keys().find(|n| !allowed.contains(&n.as_str())) {
            return Err(Error::invalid(
                OP,
                format!("parameter {i}: unknown {kind} buffer `{name}`"),
            ));
        }
        if ps.step > 0 {
            if let Some(name) = required.iter().find(|n| !ps.buffers.contains_key(**n)) {
                return Err(Error::invalid(
                    OP,
                    format!("parameter {i}: step {} but no buffer `{name}`", ps.step),
                ));
            }
        }
        let mut buffers = BTreeMap::new();
        for (name, b) in &ps.buffers {
            if b.shape() != p.shape() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "parameter {i}: buffer `{name}` has shape {:?}, the parameter {:?}",
                        b.shape(),
                        p.shape()
                    ),
                ));
            }
            let b = b.to_dtype(p.dtype())?.to_device(p.device())?.deep_copy()?;
            buffers.insert(name.clone(), b);
        }
        out.push(ParamState {
            step: ps.step,
            buffers,
        });
    }
    Ok(out)
}
