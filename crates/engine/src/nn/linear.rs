//! Fully connected layer.

use super::{init, join, Module, Visitor};
use crate::{Device, Error, Result, Tensor};

/// `y = x·Wᵀ + b` with `W [out, in]`, `b [out]`; PyTorch's init: `kaiming_uniform(a=√5)` for
/// W and `U(±1/√in)` for b.
#[derive(Debug)]
pub struct Linear {
    /// `[out_features, in_features]`
    pub weight: Tensor,
    /// `[out_features]`, if the layer has a bias.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A new layer on `device` (F32 parameters).
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        device: Device,
    ) -> Result<Self> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::invalid(
                "Linear",
                format!("features must be positive, got in {in_features}, out {out_features}"),
            ));
        }
        let weight = init::kaiming_uniform([out_features, in_features], 5f64.sqrt(), device)?;
        let bias = if bias {
            Some(init::uniform(
                [out_features],
                1.0 / (in_features as f64).sqrt(),
                device,
            )?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        f(&join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
}
