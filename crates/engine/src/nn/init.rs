//! Parameter initialisation as PyTorch/torchvision do it. All draw from the thread's default
//! generator (see [`crate::manual_seed`]) and return F32 leaves that require grad.

use crate::{DType, Device, Result, Shape, Tensor};

/// `(fan_in, fan_out)` of a weight `[out, in, k...]`: `in·∏k` and `out·∏k`.
pub fn fans(dims: &[usize]) -> (usize, usize) {
    let receptive: usize = dims.iter().skip(2).product();
    let (out, inp) = (
        dims.first().copied().unwrap_or(1),
        dims.get(1).copied().unwrap_or(1),
    );
    (inp * receptive, out * receptive)
}

fn param(t: Tensor) -> Result<Tensor> {
    t.requires_grad_(true)
}

/// `U(-bound, bound)`.
pub fn uniform(shape: impl Into<Shape>, bound: f64, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    if bound == 0.0 {
        return param(Tensor::zeros(shape, DType::F32, device)?);
    }
    param(Tensor::uniform(shape, -bound, bound, DType::F32, device)?)
}

/// `kaiming_uniform_(a)` with fan_in and leaky-relu gain `√(2/(1+a²))`: bound
/// `gain·√(3/fan_in)`. With `a = √5` (the default of Linear and Conv2d) this is `1/√fan_in`.
pub fn kaiming_uniform(shape: impl Into<Shape>, a: f64, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (fan_in, _) = fans(shape.dims());
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    uniform(shape, gain * (3.0 / fan_in.max(1) as f64).sqrt(), device)
}

/// `kaiming_normal_(mode='fan_out', nonlinearity='relu')`: `N(0, 2/fan_out)` (torchvision's
/// ResNet convolutions).
pub fn kaiming_normal_fan_out(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (_, fan_out) = fans(shape.dims());
    let std = (2.0 / fan_out.max(1) as f64).sqrt();
    param(
        Tensor::randn(shape, DType::F32, device)?
            .mul_scalar(std)?
            .detach(),
    )
}

/// A constant F32 parameter.
pub fn constant(shape: impl Into<Shape>, value: f64, device: Device) -> Result<Tensor> {
    param(Tensor::full(shape, value, DType::F32, device)?)
}
