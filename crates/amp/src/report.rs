//! `GradScaler::report`: per-parameter gradient health — non-finite values, the largest
//! magnitude, and how many nonzero values would flush to zero in fp16 at the current scale.

use crate::GradScaler;
use half::f16;
use hemi_engine::{Result, Tensor};

/// Gradient statistics of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamReport {
    /// Dotted parameter name.
    pub name: String,
    /// Number of gradient elements (0 when the parameter has no gradient).
    pub numel: usize,
    /// Count of inf/NaN values.
    pub non_finite: usize,
    /// Largest finite `|grad|` of the unscaled gradient.
    pub max_abs: f64,
    /// Fraction of the nonzero finite unscaled values `g` for which `fp16(g · scale)` is 0.
    pub fp16_underflow_fraction: f64,
}

/// [`GradScaler::report`]'s result.
#[derive(Debug, Clone, PartialEq)]
pub struct GradReport {
    /// The scale the underflow fractions were computed at.
    pub scale: f64,
    /// One entry per parameter, in the order given.
    pub params: Vec<ParamReport>,
}

fn param_report(name: &str, p: &Tensor, scale: f64, grads_scaled: bool) -> Result<ParamReport> {
    let Some(g) = p.grad() else {
        return Ok(ParamReport {
            name: name.to_string(),
            numel: 0,
            non_finite: 0,
            max_abs: 0.0,
            fp16_underflow_fraction: 0.0,
        });
    };
    let v = g.to_f64_vec()?;
    let unscale = if grads_scaled { 1.0 / scale } else { 1.0 };
    let (mut non_finite, mut max_abs, mut nonzero, mut flushed) = (0, 0f64, 0usize, 0usize);
    for &x in &v {
        if !x.is_finite() {
            non_finite += 1;
            continue;
        }
        let u = x * unscale;
        max_abs = max_abs.max(u.abs());
        if u != 0.0 {
            nonzero += 1;
            if f16::from_f64(u * scale) == f16::ZERO {
                flushed += 1;
            }
        }
    }
    Ok(ParamReport {
        name: name.to_string(),
        numel: v.len(),
        non_finite,
        max_abs,
        fp16_underflow_fraction: if nonzero == 0 {
            0.0
        } else {
            flushed as f64 / nonzero as f64
        },
    })
}

impl GradScaler {
    /// Gradient health of `params` (e.g. `model.named_parameters()`); `grads_scaled` says
    /// whether the gradients still carry the loss scale (after `backward`, before
    /// `unscale_`/`step`). Reads every gradient to the host: a diagnostic, not for every step.
    pub fn report(&self, params: &[(String, Tensor)], grads_scaled: bool) -> Result<GradReport> {
        let scale = self.get_scale()?;
        let params = params
            .iter()
            .map(|(n, p)| param_report(n, p, scale, grads_scaled))
            .collect::<Result<_>>()?;
        Ok(GradReport { scale, params })
    }
}
