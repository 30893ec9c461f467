//! Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

use super::{check_kind, check_params, ensure, flag, grad_of, hyper, load_param_states};
use super::{fusable, fused_grad, inplace_state};
use super::{Optimizer, OptimizerState, ParamState};
use crate::backend::SgdSpec;
use crate::SgdParam;
use crate::{no_grad, Result, Tensor};

const KIND: &str = "SGD";
const MOMENTUM_BUFFER: &str = "momentum_buffer";

/// Hyper-parameters of [`Sgd`], with `torch.optim.SGD`'s defaults except `lr`, which PyTorch
/// requires too. Set fields directly or chain the setters:
/// `SgdConfig::new(0.1).momentum(0.9).nesterov(true)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate, `>= 0`.
    pub lr: f64,
    /// Momentum factor, `>= 0` (default 0: no momentum buffer).
    pub momentum: f64,
    /// Dampening of the momentum (default 0).
    pub dampening: f64,
    /// L2 penalty added to the gradient, `>= 0` (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum; needs `momentum > 0` and `dampening == 0` (default false).
    pub nesterov: bool,
    /// Run each step as one in-place, multi-threaded backend call over all parameters
    /// (`OptimOps::sgd_step`); `false` selects the unfused reference implementation (tensor
    /// ops, allocating). Default true. Not part of the state dict.
    pub fused: bool,
}

impl SgdConfig {
    /// The defaults with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        SgdConfig {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            fused: true,
        }
    }
    /// Turns the fused in-place implementation on (the default) or off (the reference path).
    pub fn fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }
    /// Sets the momentum factor.
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
    /// Sets the dampening.
    pub fn dampening(mut self, dampening: f64) -> Self {
        self.dampening = dampening;
        self
    }
    /// Sets the weight decay (L2 penalty).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Turns Nesterov momentum on or off.
    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// PyTorch's checks, with its messages.
    fn validate(&self) -> Result<()> {
        // Finite and >= 0 (PyTorch also takes inf, which only trains to NaN).
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        ensure(KIND, non_negative(self.lr), || {
            format!("Invalid learning rate: {}", self.lr)
        })?;
        ensure(KIND, non_negative(self.momentum), || {
            format!("Invalid momentum value: {}", self.momentum)
        })?;
        ensure(KIND, non_negative(self.weight_decay), || {
            format!("Invalid weight_decay value: {}", self.weight_decay)
        })?;
        ensure(
            KIND,
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            || "Nesterov momentum requires a momentum and zero dampening".into(),
        )
    }
}

/// `torch.optim.SGD`. For each parameter `p` with gradient `grad`, with `μ` = momentum,
/// `τ` = dampening, `λ` = weight decay, `γ` = lr:
///
/// ```text
/// g = grad + λ·p
/// if μ ≠ 0:
///     buf = g                          on the parameter's first step
///     buf = μ·buf + (1 − τ)·g          afterwards
///     g = g + μ·buf   if nesterov,  else  g = buf
/// p ← p − γ·g
/// ```
///
/// The state holds `momentum_buffer` per parameter (only when `μ ≠ 0`).
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Tensor>,
    config: SgdConfig,
    state: Vec<ParamState>,
}

impl Sgd {
    /// An SGD optimizer over `params`. Errors on invalid hyper-parameters (PyTorch's
    /// messages) and on an empty, duplicated, non-leaf, non-float or non-contiguous parameter.
    pub fn new(params: Vec<Tensor>, config: SgdConfig) -> Result<Sgd> {
        config.validate()?;
        check_params(KIND, &params)?;
        let state = vec![ParamState::default(); params.len()];
        Ok(Sgd {
            params,
            config,
            state,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The update of one parameter; commits nothing until every op succeeded.
    fn update(&mut self, i: usize, grad: &Tensor) -> Result<()> {
        let c = self.config;
        let p = &self.params[i];
        let mut g = grad.clone();
        if c.weight_decay != 0.0 {
            g = g.add(&p.mul_scalar(c.weight_decay)?)?;
        }
        let mut buf = None;
        if c.momentum != 0.0 {
            let b = match self.state[i].buffers.get(MOMENTUM_BUFFER) {
                None => g.deep_copy()?,
                Some(b) => b
                    .mul_scalar(c.momentum)?
                    .add(&g.mul_scalar(1.0 - c.dampening)?)?,
            };
            g = if c.nesterov {
                g.add(&b.mul_scalar(c.momentum)?)?
            } else {
                b.clone()
            };
            buf = Some(b);
        }
        p.assign(&p.sub(&g.mul_scalar(c.lr)?)?)?;
        let st = &mut self.state[i];
        st.step += 1;
        if let Some(b) = buf {
            st.buffers.insert(MOMENTUM_BUFFER.to_string(), b);
        }
        Ok(())
    }
}

impl Sgd {
    /// One in-place backend call per group of parameters (those starting their momentum
    /// buffer, then the others); allocates only the momentum buffers of the first step.
    fn fused_step(&mut self) -> Result<()> {
        let _guard = no_grad();
        let c = self.config;
        // (param, grad, momentum buffer, buffer starts now) of every parameter with a gradient.
        let mut entries = Vec::new();
        for i in 0..self.params.len() {
            let p = self.params[i].clone();
            let Some(g) = fused_grad(&p)? else { continue };
            let (buf, first) = if c.momentum == 0.0 {
                (None, false)
            } else {
                let (b, created) = inplace_state(&mut self.state[i], MOMENTUM_BUFFER, &p)?;
                (Some(b), created)
            };
            entries.push((i, p, g, buf, first));
        }
        for first_step in [false, true] {
            let group: Vec<SgdParam<'_>> = entries
                .iter()
                .filter(|e| e.4 == first_step)
                .map(|(_, p, g, b, _)| SgdParam {
                    param: p,
                    grad: g,
                    momentum_buffer: b.as_ref(),
                })
                .collect();
            let spec = SgdSpec {
                lr: c.lr,
                momentum: c.momentum,
                dampening: c.dampening,
                weight_decay: c.weight_decay,
                nesterov: c.nesterov,
                first_step,
            };
            Tensor::sgd_step_(&group, &spec, None)?;
        }
        entries.iter().for_each(|(i, ..)| self.state[*i].step += 1);
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        if self.config.fused && fusable(&self.params) {
            return self.fused_step();
        }
        let _guard = no_grad();
        for i in 0..self.params.len() {
            if let Some(grad) = grad_of(&self.params[i])? {
                self.update(i, &grad)?;
            }
        }
        Ok(())
    }

    fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        super::check_lr("set_lr", lr)?;
        self.config.lr = lr;
        Ok(())
    }

    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn state_dict(&self) -> OptimizerState {
        let c = &self.config;
        let hyper_params = [
            ("lr", c.lr),
            ("momentum", c.momentum),
            ("dampening", c.dampening),
            ("weight_decay", c.weight_decay),
            ("nesterov", f64::from(u8::from(c.nesterov))),
        ];
        OptimizerState {
            kind: KIND.to_string(),
            hyper_params: hyper_params
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            params: self.state.iter().map(ParamState::snapshot).collect(),
        }
    }

    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        check_kind(KIND, state)?;
        let loaded = load_param_states(KIND, &self.params, state, &[MOMENTUM_BUFFER], &[])?;
        let config = SgdConfig {
            lr: hyper(state, "lr")?,
            momentum: hyper(state, "momentum")?,
            dampening: hyper(state, "dampening")?,
            weight_decay: hyper(state, "weight_decay")?,
            nesterov: flag(state, "nesterov")?,
            fused: self.config.fused,
        };
        config.validate()?;
        self.config = config;
        self.state = loaded;
        Ok(())
    }
}
