//! Stateless activations and dropout.

use super::{Module, Visitor};
use crate::{Result, Tensor};

/// `max(x, 0)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReLU;

impl Module for ReLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.relu()
    }
    fn visit_parameters(&self, _prefix: &str, _f: &mut Visitor<'_>) {}
}

/// Zeroes each element with probability `p` in training and scales the rest by `1/(1−p)`;
/// the identity in evaluation mode.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// Drop probability in `[0, 1]`.
    pub p: f64,
    training: bool,
}

impl Dropout {
    /// A dropout layer (training mode).
    pub fn new(p: f64) -> Self {
        Dropout { p, training: true }
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.dropout(self.p, self.training)
    }
    fn visit_parameters(&self, _prefix: &str, _f: &mut Visitor<'_>) {}
    fn set_training(&mut self, on: bool) {
        self.training = on;
    }
    fn is_training(&self) -> bool {
        self.training
    }
}
