//! `GradScaler`: PyTorch's dynamic loss scaler, with its defaults, state machine, misuse
//! errors and state dict, plus optional min/max scale, hysteresis, an overflow log line and a
//! per-parameter gradient report.
//!
//! **State machine.** Per optimizer, READY → (`unscale_`) UNSCALED → (`step`) STEPPED →
//! (`update`) READY. Errors, with PyTorch's messages: `unscale_` twice, `unscale_` after
//! `step`, `step` twice, and `step`/`update` with no inf checks recorded.
//!
//! **Device residency.** `scale`, the growth and hysteresis trackers, `found_inf` and the
//! skipped-step count are one-element tensors on the loss's device; unscaling is one backend
//! call over all gradients and the scale update is one backend call.
//!
//! **Host synchronizations** (every one there is):
//! - `step` with an optimizer that does not support AMP scaling reads `found_inf` to decide
//!   whether to call `step()` (PyTorch does the same). Fused Adam/AdamW
//!   (`AdamConfig::fused(true)`) skip on the device instead: no sync in `step` or `update`.
//! - `update` reads `found_inf` only when parameter names were registered with
//!   [`GradScaler::set_param_names`], to log the overflow line.
//! - `get_scale`, `skipped_steps`, `state_dict` and `report` read device values by design.
//!
//! **Hysteresis** (Megatron-LM's `DynamicGradScaler`): with `hysteresis = H`, the scale backs
//! off only on the H-th overflow since the last growth; each overflow resets the growth count;
//! a growth re-arms the tolerance to H. `H = 1` (the default) is PyTorch's behaviour. The
//! update rule is spelled out in `hemi_engine::backend::ScaleUpdateSpec`.

use hemi_engine::backend::ScaleUpdateSpec;
use hemi_engine::optim::Optimizer;
use hemi_engine::{no_grad, DType, Device, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// Options of [`GradScaler`]; `Default` is PyTorch's `GradScaler()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradScalerConfig {
    /// Initial scale (65536).
    pub init_scale: f64,
    /// Multiplier after `growth_interval` clean steps (2.0).
    pub growth_factor: f64,
    /// Multiplier on overflow (0.5).
    pub backoff_factor: f64,
    /// Clean steps between growths (2000).
    pub growth_interval: u64,
    /// When false every method is a pass-through (`scale` returns the loss unchanged).
    pub enabled: bool,
    /// Lower bound of the scale after a backoff (none by default, as PyTorch). Without it, a
    /// long overflow storm halves the scale to a subnormal after about 143 consecutive
    /// overflows and to exactly 0 after about 166; from then on every step is skipped (a scale
    /// whose inverse is not finite counts as an overflow, so nothing is written) and the scale
    /// never recovers. Set e.g. `Some(1.0)` to keep training through such storms.
    pub min_scale: Option<f64>,
    /// Upper bound of the scale after a growth (none by default).
    pub max_scale: Option<f64>,
    /// Overflows tolerated before a backoff (1: back off on every overflow, as PyTorch).
    pub hysteresis: u32,
}

impl Default for GradScalerConfig {
    fn default() -> Self {
        GradScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            enabled: true,
            min_scale: None,
            max_scale: None,
            hysteresis: 1,
        }
    }
}

/// The five keys of PyTorch's `GradScaler.state_dict()` (`scale`, `growth_factor`,
/// `backoff_factor`, `growth_interval`, `_growth_tracker`), plus `_hysteresis_tracker` when
/// hysteresis is on. Empty for a disabled scaler.
pub type ScalerStateDict = BTreeMap<String, f64>;

/// A skipped step: the first parameter with a non-finite gradient and the scale change.
#[derive(Debug, Clone, PartialEq)]
pub struct OverflowEvent {
    /// Dotted name of the parameter.
    pub param: String,
    /// Scale before the update.
    pub old_scale: f64,
    /// Scale after the update.
    pub new_scale: f64,
}

impl fmt::Display for OverflowEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "overflow in {}.grad: scale {} -> {}",
            self.param, self.old_scale, self.new_scale
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Ready,
    Unscaled,
    Stepped,
}

#[derive(Debug)]
struct OptRecord {
    stage: Stage,
    found_inf: Option<Tensor>,
}

/// Device-resident scaler state, created on the device of the first scaled loss.
#[derive(Debug)]
struct DeviceState {
    scale: Tensor,
    growth_tracker: Tensor,
    hysteresis_tracker: Tensor,
    skipped: Tensor,
    /// F32 `[]` constants, kept so that a step allocates nothing.
    zero: Tensor,
    one: Tensor,
}

/// The dynamic loss scaler (see the module docs).
#[derive(Debug)]
pub struct GradScaler {
    config: GradScalerConfig,
    init_growth_tracker: i64,
    init_hysteresis_tracker: i64,
    state: Option<DeviceState>,
    per_optimizer: HashMap<usize, OptRecord>,
    names: Vec<(String, Tensor)>,
    last_overflow: Option<OverflowEvent>,
    found_inf_sync: Option<FoundInfSync>,
}

/// Combines an optimizer's `found_inf` flag (an f32 scalar, 0 or 1) across processes in
/// place, e.g. an all-reduce with max, so that every rank skips the same steps
/// (`hemi::distributed::found_inf_sync` makes one from a communicator).
#[derive(Clone)]
pub struct FoundInfSync(pub Arc<FoundInfSyncFn>);

/// The function inside a [`FoundInfSync`].
pub type FoundInfSyncFn = dyn Fn(&Tensor) -> Result<()> + Send + Sync;

impl std::fmt::Debug for FoundInfSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FoundInfSync")
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op: "GradScaler",
        msg: msg.into(),
    }
}

fn key(opt: &dyn Optimizer) -> usize {
    (opt as *const dyn Optimizer).cast::<()>() as usize
}

impl GradScaler {
    /// A scaler with the given options (checked like PyTorch's constructor).
    pub fn new(config: GradScalerConfig) -> Result<Self> {
        let c = &config;
        if !(c.init_scale.is_finite() && c.init_scale > 0.0) {
            return Err(invalid(format!(
                "init_scale must be finite and positive, got {}",
                c.init_scale
            )));
        }
        if !(c.growth_factor > 1.0 && c.growth_factor.is_finite()) {
            return Err(invalid("The growth factor must be > 1.0."));
        }
        if !(c.backoff_factor > 0.0 && c.backoff_factor < 1.0) {
            return Err(invalid("The backoff factor must be < 1.0 (and > 0)."));
        }
        if c.growth_interval == 0 || c.hysteresis == 0 {
            return Err(invalid("growth_interval and hysteresis must be at least 1"));
        }
        for (what, v) in [("min_scale", c.min_scale), ("max_scale", c.max_scale)] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(invalid(format!(
                    "{what} must be finite and positive, got {v}"
                )));
            }
        }
        if let (Some(lo), Some(hi)) = (c.min_scale, c.max_scale) {
            if lo > hi {
                return Err(invalid(format!("min_scale {lo} exceeds max_scale {hi}")));
            }
        }
        Ok(GradScaler {
            config,
            init_growth_tracker: 0,
            init_hysteresis_tracker: i64::from(c.hysteresis),
            state: None,
            per_optimizer: HashMap::new(),
            names: Vec::new(),
            last_overflow: None,
            found_inf_sync: None,
        })
    }

    /// Whether the scaler does anything.
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// The options.
    pub fn config(&self) -> &GradScalerConfig {
        &self.config
    }

    /// Registers parameter names (e.g. `model.named_parameters()`) so that a skipped step logs
    /// `overflow in <name>.grad: scale A -> B` through the `log` crate (target `hemi_amp`).
    /// Costs one host read of `found_inf` per `update`.
    pub fn set_param_names(&mut self, named: Vec<(String, Tensor)>) {
        self.names = named;
    }

    /// Makes every inf/NaN check combine its `found_inf` flag through `sync` right after the
    /// check (before the optimizer step decides to skip). Data-parallel training whose
    /// gradients are averaged before unscaling already sees the same flag on every rank; this
    /// is for gradients that were not reduced (or reduced only in part). `None` removes it.
    pub fn set_found_inf_sync(&mut self, sync: Option<FoundInfSync>) {
        self.found_inf_sync = sync;
    }

    /// The last overflow seen by `update` while names were registered.
    pub fn last_overflow(&self) -> Option<&OverflowEvent> {
        self.last_overflow.as_ref()
    }

    fn device_state(&mut self, device: Device) -> Result<&DeviceState> {
        if self.state.is_none() {
            self.state = Some(DeviceState {
                scale: Tensor::full((), self.config.init_scale, DType::F32, device)?,
                growth_tracker: Tensor::full(
                    (),
                    self.init_growth_tracker as f64,
                    DType::I64,
                    device,
                )?,
                hysteresis_tracker: Tensor::full(
                    (),
                    self.init_hysteresis_tracker as f64,
                    DType::I64,
                    device,
                )?,
                skipped: Tensor::zeros((), DType::F32, device)?,
                zero: Tensor::zeros((), DType::F32, device)?,
                one: Tensor::ones((), DType::F32, device)?,
            });
        }
        self.state
            .as_ref()
            .ok_or_else(|| invalid("scaler state missing"))
    }

    fn existing_state(&self, what: &str) -> Result<&DeviceState> {
        self.state.as_ref().ok_or_else(|| {
            invalid(format!(
                "Attempted {what} but _scale is None. This may indicate your script did not use \
                 scaler.scale(loss or outputs) earlier in the iteration."
            ))
        })
    }

    /// `loss · scale` (differentiable). A pass-through when disabled.
    pub fn scale(&mut self, loss: &Tensor) -> Result<Tensor> {
        if !self.config.enabled {
            return Ok(loss.clone());
        }
        let scale = self.device_state(loss.device())?.scale.clone();
        loss.mul(&scale)
    }

    fn record(&mut self, opt: &dyn Optimizer) -> &mut OptRecord {
        self.per_optimizer.entry(key(opt)).or_insert(OptRecord {
            stage: Stage::Ready,
            found_inf: None,
        })
    }

    /// Runs the multi-tensor check (and, with `write_back`, the in-place unscale by
    /// `inv_scale`) over the optimizer's gradients; returns the optimizer's `found_inf` flag
    /// (one persistent buffer per optimizer, reset here), or `None` when no parameter has a
    /// gradient.
    fn check_grads(
        &mut self,
        opt: &dyn Optimizer,
        inv_scale: &Tensor,
        write_back: bool,
    ) -> Result<Option<Tensor>> {
        let params: Vec<&Tensor> = opt.params().iter().filter(|p| p.grad().is_some()).collect();
        let mut grads: Vec<Tensor> = params.iter().filter_map(|p| p.grad()).collect();
        if grads.is_empty() {
            if let Some(sync) = &self.found_inf_sync {
                // The other ranks' checks still combine with this one's (nothing found).
                (sync.0)(&Tensor::zeros((), DType::F32, inv_scale.device())?)?;
            }
            return Ok(None);
        }
        if write_back && grads.iter().any(|g| g.dtype() == DType::F16) {
            return Err(invalid("Attempting to unscale FP16 gradients."));
        }
        let device = inv_scale.device();
        if let Some(g) = grads.iter().find(|g| g.device() != device) {
            return Err(Error::DeviceMismatch {
                op: "unscale_",
                lhs: device,
                rhs: g.device(),
            });
        }
        if write_back {
            // The unscale writes in place: gradients that are views get their own buffer.
            for (p, g) in params.iter().zip(grads.iter_mut()) {
                if !g.owns_whole_buffer() {
                    *g = g.deep_copy()?;
                    p.set_grad(Some(g.clone()))?;
                }
            }
        }
        // Only checking (the fused optimizer unscales itself): views are checked on copies.
        let checked = grads
            .iter()
            .map(|g| match g.owns_whole_buffer() {
                true => Ok(g.clone()),
                false => g.deep_copy(),
            })
            .collect::<Result<Vec<_>>>()?;
        let zero = self.existing_state("unscale_")?.zero.clone();
        let found = match self.record(opt).found_inf.clone() {
            Some(f) if f.device() == device => f,
            _ => Tensor::zeros((), DType::F32, device)?,
        };
        found.assign(&zero)?;
        Tensor::non_finite_check_and_unscale_(&checked, &found, inv_scale)?;
        if let Some(sync) = &self.found_inf_sync {
            (sync.0)(&found)?;
        }
        Ok(Some(found))
    }

    /// Divides the optimizer's gradients by the scale in place (one backend call) and records
    /// whether any was inf/NaN. Errors on a second call before `update`, after `step`, or on
    /// fp16 gradients (keep fp32 master parameters, as PyTorch requires).
    pub fn unscale_(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        match self.record(opt).stage {
            Stage::Unscaled => {
                return Err(invalid(
                    "unscale_() has already been called on this optimizer since the last update().",
                ))
            }
            Stage::Stepped => return Err(invalid("unscale_() is being called after step().")),
            Stage::Ready => {}
        }
        let scale = self.existing_state("unscale_")?.scale.clone();
        // 1/scale rounded once to f32 (IEEE division is correctly rounded; PyTorch's
        // double-then-float path can only round twice).
        let inv = {
            let _g = no_grad();
            scale.recip()?
        };
        let found = self.check_grads(opt, &inv, true)?;
        let rec = self.record(opt);
        rec.found_inf = found;
        rec.stage = Stage::Unscaled;
        Ok(())
    }

    /// Steps the optimizer unless a gradient overflowed. Unscales first if `unscale_` was not
    /// called. Fused optimizers receive the scale and `found_inf` and decide on the device.
    pub fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        if !self.config.enabled {
            return opt.step();
        }
        let stage = self.record(opt).stage;
        if stage == Stage::Stepped {
            return Err(invalid(
                "step() has already been called since the last update().",
            ));
        }
        let scale = self.existing_state("step")?.scale.clone();
        if opt.supports_amp_scaling() {
            let found = match stage {
                Stage::Ready => {
                    let one = self.existing_state("step")?.one.clone();
                    self.check_grads(opt, &one, false)?
                }
                _ => self.record(opt).found_inf.clone(),
            };
            let found =
                found.ok_or_else(|| invalid("No inf checks were recorded for this optimizer."))?;
            let grad_scale = (stage == Stage::Ready).then_some(&scale);
            opt.step_amp(grad_scale, &found)?;
            let rec = self.record(opt);
            rec.found_inf = Some(found);
            rec.stage = Stage::Stepped;
            return Ok(());
        }
        if stage == Stage::Ready {
            self.unscale_(opt)?;
        }
        let found = self.record(opt).found_inf.clone();
        let found =
            found.ok_or_else(|| invalid("No inf checks were recorded for this optimizer."))?;
        // Host sync (documented): a non-fused optimizer cannot skip on the device.
        if found.item()? == 0.0 {
            opt.step()?;
        }
        self.record(opt).stage = Stage::Stepped;
        Ok(())
    }

    fn spec(&self) -> ScaleUpdateSpec {
        let c = &self.config;
        ScaleUpdateSpec {
            growth_factor: c.growth_factor,
            backoff_factor: c.backoff_factor,
            growth_interval: c.growth_interval as i64,
            min_scale: c.min_scale.unwrap_or(0.0),
            max_scale: c.max_scale.unwrap_or(f64::INFINITY),
            hysteresis: i64::from(c.hysteresis),
        }
    }

    /// Updates the scale from this iteration's overflow checks (or sets it to `new_scale`)
    /// and resets every optimizer to READY.
    pub fn update(&mut self, new_scale: Option<f64>) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let st = self.existing_state("update")?;
        let device = st.scale.device();
        if let Some(v) = new_scale {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(format!(
                    "new_scale must be finite and positive, got {v}"
                )));
            }
            st.scale.assign(&Tensor::full((), v, DType::F32, device)?)?;
            self.per_optimizer.clear();
            return Ok(());
        }
        // Records stay (their found_inf buffers are reused); only those checked in this
        // iteration count.
        let founds: Vec<Tensor> = self
            .per_optimizer
            .values()
            .filter(|r| r.stage != Stage::Ready)
            .filter_map(|r| r.found_inf.clone())
            .collect();
        let Some(first) = founds.first() else {
            return Err(invalid("No inf checks were recorded prior to update."));
        };
        let _g = no_grad();
        // One optimizer (the usual case): its flag is the total, and the skip counter grows
        // in place, so an update allocates nothing.
        let total = match founds.len() {
            1 => first.clone(),
            _ => founds[1..]
                .iter()
                .try_fold(first.clone(), |a, f| a.add(f))?
                .minimum(&st.one)?,
        };
        let old_scale = match self.names.is_empty() {
            true => None,
            false => Some(st.scale.item()?),
        };
        Tensor::update_scale_(
            &st.scale,
            &st.growth_tracker,
            &st.hysteresis_tracker,
            &total,
            &self.spec(),
        )?;
        st.skipped.add_(&total)?;
        self.per_optimizer
            .values_mut()
            .for_each(|r| r.stage = Stage::Ready);
        if let Some(old) = old_scale {
            if total.item()? != 0.0 {
                self.log_overflow(old)?;
            }
        }
        Ok(())
    }

    fn log_overflow(&mut self, old_scale: f64) -> Result<()> {
        let param = self
            .names
            .iter()
            .find(|(_, p)| {
                p.grad()
                    .and_then(|g| g.to_f64_vec().ok())
                    .is_some_and(|v| v.iter().any(|x| !x.is_finite()))
            })
            .map_or_else(|| "<unnamed>".to_string(), |(n, _)| n.clone());
        let event = OverflowEvent {
            param,
            old_scale,
            new_scale: self.get_scale()?,
        };
        log::warn!(target: "hemi_amp", "{event}");
        self.last_overflow = Some(event);
        Ok(())
    }

    /// The current scale (host read). 1.0 when disabled; `init_scale` before the first `scale`.
    pub fn get_scale(&self) -> Result<f64> {
        if !self.config.enabled {
            return Ok(1.0);
        }
        match &self.state {
            Some(s) => s.scale.item(),
            None => Ok(self.config.init_scale),
        }
    }

    /// The growth tracker: clean steps since the last growth or backoff (host read).
    pub fn get_growth_tracker(&self) -> Result<i64> {
        match &self.state {
            Some(s) => Ok(s.growth_tracker.item()? as i64),
            None => Ok(self.init_growth_tracker),
        }
    }

    /// Overflows still tolerated before the next backoff (host read).
    pub fn get_hysteresis_tracker(&self) -> Result<i64> {
        match &self.state {
            Some(s) => Ok(s.hysteresis_tracker.item()? as i64),
            None => Ok(self.init_hysteresis_tracker),
        }
    }

    /// How many `update`s saw an overflow, i.e. skipped steps (host read).
    pub fn skipped_steps(&self) -> Result<u64> {
        match &self.state {
            Some(s) => Ok(s.skipped.item()? as u64),
            None => Ok(0),
        }
    }

    /// PyTorch's five keys (see [`ScalerStateDict`]); empty when disabled.
    pub fn state_dict(&self) -> Result<ScalerStateDict> {
        if !self.config.enabled {
            return Ok(ScalerStateDict::new());
        }
        let c = &self.config;
        let mut d = ScalerStateDict::new();
        d.insert("scale".into(), self.get_scale()?);
        d.insert("growth_factor".into(), c.growth_factor);
        d.insert("backoff_factor".into(), c.backoff_factor);
        d.insert("growth_interval".into(), c.growth_interval as f64);
        d.insert("_growth_tracker".into(), self.get_growth_tracker()? as f64);
        if c.hysteresis > 1 {
            d.insert(
                "_hysteresis_tracker".into(),
                self.get_hysteresis_tracker()? as f64,
            );
        }
        Ok(d)
    }

    /// Restores a [`GradScaler::state_dict`]. An empty dict is an error (PyTorch's message).
    pub fn load_state_dict(&mut self, d: &ScalerStateDict) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        if d.is_empty() {
            return Err(invalid(
                "The source state dict is empty, possibly because it was saved from a disabled instance of GradScaler.",
            ));
        }
        let get = |k: &str| {
            d.get(k)
                .copied()
                .ok_or_else(|| invalid(format!("state dict lacks `{k}`")))
        };
        let mut config = self.config;
        config.init_scale = get("scale")?;
        config.growth_factor = get("growth_factor")?;
        config.backoff_factor = get("backoff_factor")?;
        config.growth_interval = get("growth_interval")? as u64;
        let fresh = GradScaler::new(config)?;
        self.config = fresh.config;
        self.init_growth_tracker = get("_growth_tracker")? as i64;
        self.init_hysteresis_tracker = d
            .get("_hysteresis_tracker")
            .map_or(i64::from(config.hysteresis), |&v| v as i64);
        if let Some(st) = self.state.take() {
            let device = st.scale.device();
            self.device_state(device)?;
            if let Some(new) = self.state.as_mut() {
                new.skipped = st.skipped;
            }
        }
        Ok(())
    }
}
