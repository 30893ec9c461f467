//! Adam and AdamW (decoupled weight decay), both with the AMSGrad variant.

use super::{check_kind, check_params, ensure, flag, grad_of, hyper, load_param_states};
use super::{fusable, fused_grad, inplace_state};
use super::{Optimizer, OptimizerState, ParamState};
use crate::backend::FusedAdamSpec;
use crate::AdamParam;
use crate::{no_grad, DType, Result, Tensor};

const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const MAX_EXP_AVG_SQ: &str = "max_exp_avg_sq";
const BUFFERS: [&str; 3] = [EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ];

/// Hyper-parameters of [`Adam`] and [`AdamW`]. [`AdamConfig::adam`] (also `Default`) has
/// `torch.optim.Adam`'s defaults, [`AdamConfig::adamw`] those of `torch.optim.AdamW`, which
/// differ only in `weight_decay`. Set fields directly or chain the setters:
/// `AdamConfig::adamw().lr(3e-4).amsgrad(true)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate, `>= 0` (default 1e-3).
    pub lr: f64,
    /// Decay rates `(β1, β2)` of the moment estimates, each in `[0, 1)` (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator, `>= 0` (default 1e-8).
    pub eps: f64,
    /// Weight decay, `>= 0`: an L2 penalty for Adam (default 0), decoupled for AdamW
    /// (default 1e-2).
    pub weight_decay: f64,
    /// Use the maximum of past second moments (AMSGrad; default false).
    pub amsgrad: bool,
    /// Run each step as one in-place, multi-threaded backend call over all parameters
    /// (`OptimOps::adam_step`), with the step counts on the device; enables the sync-free
    /// [`Optimizer::step_amp`] that a `GradScaler` uses. Default **true**; `false` selects the
    /// unfused reference implementation (tensor ops, allocating). Not part of the state dict.
    pub fused: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig::adam()
    }
}

impl AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn adam() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            fused: true,
        }
    }
    /// `torch.optim.AdamW`'s defaults: those of Adam with weight decay 1e-2.
    pub fn adamw() -> Self {
        AdamConfig::adam().weight_decay(1e-2)
    }
    /// Sets the learning rate.
    pub fn lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }
    /// Sets `(β1, β2)`.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }
    /// Sets epsilon.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Sets the weight decay.
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Turns AMSGrad on or off.
    pub fn amsgrad(mut self, amsgrad: bool) -> Self {
        self.amsgrad = amsgrad;
        self
    }
    /// Turns the fused implementation on (the default) or off (the reference path).
    pub fn fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// PyTorch's checks, with its messages.
    fn validate(&self, kind: &'static str) -> Result<()> {
        // Finite and >= 0 (PyTorch also takes inf, which only trains to NaN).
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        let (b1, b2) = self.betas;
        ensure(kind, non_negative(self.lr), || {
            format!("Invalid learning rate: {}", self.lr)
        })?;
        ensure(kind, non_negative(self.eps), || {
            format!("Invalid epsilon value: {}", self.eps)
        })?;
        ensure(kind, (0.0..1.0).contains(&b1), || {
            format!("Invalid beta parameter at index 0: {b1}")
        })?;
        ensure(kind, (0.0..1.0).contains(&b2), || {
            format!("Invalid beta parameter at index 1: {b2}")
        })?;
        ensure(kind, non_negative(self.weight_decay), || {
            format!("Invalid weight_decay value: {}", self.weight_decay)
        })
    }
}

/// What Adam and AdamW share; `decoupled` selects AdamW's weight decay.
#[derive(Debug)]
struct AdamCore {
    kind: &'static str,
    decoupled: bool,
    params: Vec<Tensor>,
    config: AdamConfig,
    state: Vec<ParamState>,
    /// Fused mode: each parameter's step count as an F32 `[1]` device tensor (authoritative
    /// over `state[i].step`, which `state_dict` refreshes from it).
    device_steps: Vec<Option<Tensor>>,
}

impl AdamCore {
    fn new(
        kind: &'static str,
        decoupled: bool,
        params: Vec<Tensor>,
        config: AdamConfig,
    ) -> Result<Self> {
        config.validate(kind)?;
        check_params(kind, &params)?;
        let state = vec![ParamState::default(); params.len()];
        let device_steps = vec![None; params.len()];
        Ok(AdamCore {
            kind,
            decoupled,
            params,
            config,
            state,
            device_steps,
        })
    }

    /// The buffer `name` of parameter `i`, zeros when it has none yet.
    fn buffer(&self, i: usize, name: &str) -> Result<Tensor> {
        match self.state[i].buffers.get(name) {
            Some(b) => Ok(b.clone()),
            None => self.params[i].zeros_like(),
        }
    }

    /// The update of one parameter; commits nothing until every op succeeded.
    fn update(&mut self, i: usize, grad: &Tensor) -> Result<()> {
        let c = self.config;
        let (b1, b2) = c.betas;
        let p = &self.params[i];
        let mut p_new = p.clone();
        let mut g = grad.clone();
        if c.weight_decay != 0.0 {
            if self.decoupled {
                p_new = p.mul_scalar(1.0 - c.lr * c.weight_decay)?;
            } else {
                g = g.add(&p.mul_scalar(c.weight_decay)?)?;
            }
        }
        let t = self.state[i].step + 1;
        let m = self
            .buffer(i, EXP_AVG)?
            .mul_scalar(b1)?
            .add(&g.mul_scalar(1.0 - b1)?)?;
        let v = self
            .buffer(i, EXP_AVG_SQ)?
            .mul_scalar(b2)?
            .add(&g.square()?.mul_scalar(1.0 - b2)?)?;
        let v_max = if c.amsgrad {
            Some(self.buffer(i, MAX_EXP_AVG_SQ)?.maximum(&v)?)
        } else {
            None
        };
        let bc1 = 1.0 - b1.powf(t as f64);
        let bc2 = 1.0 - b2.powf(t as f64);
        let denom = v_max
            .as_ref()
            .unwrap_or(&v)
            .sqrt()?
            .affine(1.0 / bc2.sqrt(), c.eps)?;
        let p_new = p_new.sub(&m.div(&denom)?.mul_scalar(c.lr / bc1)?)?;
        p.assign(&p_new)?;
        let st = &mut self.state[i];
        st.step = t;
        st.buffers.insert(EXP_AVG.to_string(), m);
        st.buffers.insert(EXP_AVG_SQ.to_string(), v);
        if let Some(v_max) = v_max {
            st.buffers.insert(MAX_EXP_AVG_SQ.to_string(), v_max);
        }
        Ok(())
    }

    fn step(&mut self) -> Result<()> {
        if self.runs_fused() {
            return self.fused_step(None, None);
        }
        let _guard = no_grad();
        for i in 0..self.params.len() {
            if let Some(grad) = grad_of(&self.params[i])? {
                self.update(i, &grad)?;
            }
        }
        Ok(())
    }

    /// Whether steps take the fused path: configured so, and every parameter F32 or F64.
    fn runs_fused(&self) -> bool {
        self.config.fused && fusable(&self.params)
    }

    /// One backend call over every parameter with a gradient, writing parameters, moments,
    /// step counts (and, with `grad_scale`, the unscaled gradients) in place (see
    /// `OptimOps::adam_step`). After the first step it allocates nothing.
    fn fused_step(
        &mut self,
        grad_scale: Option<&Tensor>,
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        let _guard = no_grad();
        struct Entry {
            p: Tensor,
            g: Tensor,
            m: Tensor,
            v: Tensor,
            vmax: Option<Tensor>,
            step: Tensor,
        }
        let mut entries = Vec::new();
        for i in 0..self.params.len() {
            let p = self.params[i].clone();
            let Some(g) = fused_grad(&p)? else { continue };
            let st = &mut self.state[i];
            let (m, _) = inplace_state(st, EXP_AVG, &p)?;
            let (v, _) = inplace_state(st, EXP_AVG_SQ, &p)?;
            let vmax = match self.config.amsgrad {
                true => Some(inplace_state(st, MAX_EXP_AVG_SQ, &p)?.0),
                false => None,
            };
            let step = match &self.device_steps[i] {
                Some(s) => s.clone(),
                None => {
                    let s = Tensor::full([1], self.state[i].step as f64, DType::F32, p.device())?;
                    self.device_steps[i] = Some(s.clone());
                    s
                }
            };
            entries.push(Entry {
                p,
                g,
                m,
                v,
                vmax,
                step,
            });
        }
        let c = self.config;
        let spec = FusedAdamSpec {
            lr: c.lr,
            beta1: c.betas.0,
            beta2: c.betas.1,
            eps: c.eps,
            weight_decay: c.weight_decay,
            amsgrad: c.amsgrad,
            decoupled: self.decoupled,
        };
        let params: Vec<AdamParam<'_>> = entries
            .iter()
            .map(|e| AdamParam {
                param: &e.p,
                grad: &e.g,
                exp_avg: &e.m,
                exp_avg_sq: &e.v,
                max_exp_avg_sq: e.vmax.as_ref(),
                step: &e.step,
            })
            .collect();
        Tensor::adam_step_(&params, &spec, grad_scale, found_inf)
    }

    fn state_dict(&self) -> OptimizerState {
        let c = &self.config;
        let hyper_params = [
            ("lr", c.lr),
            ("beta1", c.betas.0),
            ("beta2", c.betas.1),
            ("eps", c.eps),
            ("weight_decay", c.weight_decay),
            ("amsgrad", f64::from(u8::from(c.amsgrad))),
        ];
        OptimizerState {
            kind: self.kind.to_string(),
            hyper_params: hyper_params
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            params: self
                .state
                .iter()
                .zip(&self.device_steps)
                .map(|(st, dev)| {
                    // Fused mode: the one host read of the step count (documented sync).
                    let step = dev
                        .as_ref()
                        .and_then(|t| t.item().ok())
                        .map_or(st.step, |s| s as u64);
                    ParamState {
                        step,
                        ..st.snapshot()
                    }
                })
                .collect(),
        }
    }

    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        check_kind(self.kind, state)?;
        let config = AdamConfig {
            lr: hyper(state, "lr")?,
            betas: (hyper(state, "beta1")?, hyper(state, "beta2")?),
            eps: hyper(state, "eps")?,
            weight_decay: hyper(state, "weight_decay")?,
            amsgrad: flag(state, "amsgrad")?,
            fused: self.config.fused,
        };
        let required: &[&str] = if config.amsgrad {
            &BUFFERS
        } else {
            &BUFFERS[..2]
        };
        let loaded = load_param_states(self.kind, &self.params, state, &BUFFERS, required)?;
        config.validate(self.kind)?;
        self.config = config;
        self.state = loaded;
        self.device_steps = vec![None; self.params.len()];
        Ok(())
    }
}

/// Implements [`Optimizer`] for a newtype over [`AdamCore`].
macro_rules! adam_optimizer {
    ($name:ident) => {
        impl Optimizer for $name {
            fn step(&mut self) -> Result<()> {
                self.0.step()
            }
            fn zero_grad(&self) {
                self.0.params.iter().for_each(Tensor::zero_grad);
            }
            fn lr(&self) -> f64 {
                self.0.config.lr
            }
            fn set_lr(&mut self, lr: f64) -> Result<()> {
                super::check_lr("set_lr", lr)?;
                self.0.config.lr = lr;
                Ok(())
            }
            fn params(&self) -> &[Tensor] {
                &self.0.params
            }
            fn state_dict(&self) -> OptimizerState {
                self.0.state_dict()
            }
            fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
                self.0.load_state_dict(state)
            }
            fn supports_amp_scaling(&self) -> bool {
                self.0.runs_fused()
            }
            fn step_amp(&mut self, grad_scale: Option<&Tensor>, found_inf: &Tensor) -> Result<()> {
                if !self.0.runs_fused() {
                    return Err(crate::Error::InvalidArgument {
                        op: "step_amp",
                        msg: "needs AdamConfig::fused(true) and float32/float64 parameters".into(),
                    });
                }
                self.0.fused_step(grad_scale, Some(found_inf))
            }
        }

        impl $name {
            /// The hyper-parameters.
            pub fn config(&self) -> &AdamConfig {
                &self.0.config
            }
        }
    };
}

/// `torch.optim.Adam`. For each parameter `p` with gradient `grad`, at its step `t` (from 1),
/// with `γ` = lr, `λ` = weight decay, `ε` = eps, and `m`, `v` (and `v̂max`) starting at 0:
///
/// ```text
/// g = grad + λ·p
/// m = β1·m + (1 − β1)·g                         exp_avg
/// v = β2·v + (1 − β2)·g²                        exp_avg_sq
/// bc1 = 1 − β1^t,  bc2 = 1 − β2^t
/// amsgrad: v̂max = max(v̂max, v), used below in place of v   max_exp_avg_sq
/// denom = sqrt(v) / sqrt(bc2) + ε
/// p ← p − (γ / bc1)·m / denom
/// ```
#[derive(Debug)]
pub struct Adam(AdamCore);

impl Adam {
    /// Adam over `params` (use [`AdamConfig::default()`] for PyTorch's defaults). Errors on
    /// invalid hyper-parameters (PyTorch's messages) and on an empty, duplicated, non-leaf,
    /// non-float or non-contiguous parameter.
    pub fn new(params: Vec<Tensor>, config: AdamConfig) -> Result<Adam> {
        AdamCore::new("Adam", false, params, config).map(Adam)
    }
}

adam_optimizer!(Adam);

/// `torch.optim.AdamW`: Adam with decoupled weight decay. For each parameter with a
/// gradient, first `p ← p·(1 − γ·λ)`, then the [`Adam`] update with `g = grad` (no `λ·p`
/// term). Buffers and their names are those of Adam.
#[derive(Debug)]
pub struct AdamW(AdamCore);

impl AdamW {
    /// AdamW over `params` (use [`AdamConfig::adamw()`] for PyTorch's defaults: weight decay
    /// 1e-2). Errors like [`Adam::new`].
    pub fn new(params: Vec<Tensor>, config: AdamConfig) -> Result<AdamW> {
        AdamCore::new("AdamW", true, params, config).map(AdamW)
    }
}

adam_optimizer!(AdamW);
