//! Pooling and flatten layers.

use super::{Module, Visitor};
use crate::{MaxPool2dParams, Result, Tensor};

/// Max pooling (`torch.nn.MaxPool2d`).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d(pub MaxPool2dParams);

impl MaxPool2d {
    /// Square kernel, stride and padding.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d(MaxPool2dParams::new(kernel, stride, padding))
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.0)
    }
    fn visit_parameters(&self, _prefix: &str, _f: &mut Visitor<'_>) {}
}

/// Adaptive average pooling to a fixed `(h, w)`.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveAvgPool2d(pub (usize, usize));

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.adaptive_avg_pool2d(self.0)
    }
    fn visit_parameters(&self, _prefix: &str, _f: &mut Visitor<'_>) {}
}

/// Flattens dims `1..` into one (`torch.nn.Flatten()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten(1, -1)
    }
    fn visit_parameters(&self, _prefix: &str, _f: &mut Visitor<'_>) {}
}
