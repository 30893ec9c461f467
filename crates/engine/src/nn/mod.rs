//! Neural-network layers with PyTorch's names, shapes and initialisation.
//!
//! A [`Module`] has a forward pass, named parameters (tensors that require grad) and named
//! buffers (e.g. batch-norm running statistics), and a training flag. Names are the dotted
//! paths of torchvision (`layer1.0.conv1.weight`), so state dicts exchange with PyTorch.
//!
//! ```
//! use hemi_engine::nn::{Linear, Module, ReLU, Sequential};
//! use hemi_engine::{DType, Device, Tensor};
//! let mlp = Sequential::new()
//!     .push(Linear::new(4, 8, true, Device::Cpu)?)
//!     .push(ReLU)
//!     .push(Linear::new(8, 2, true, Device::Cpu)?);
//! let y = mlp.forward(&Tensor::randn([3, 4], DType::F32, Device::Cpu)?)?;
//! assert_eq!(y.dims(), &[3, 2]);
//! let names: Vec<String> = mlp.named_parameters().into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
//! # Ok::<(), hemi_engine::Error>(())
//! ```

mod activation;
mod clip;
mod container;
mod conv;
pub mod init;
mod linear;
mod norm;
mod pool;
mod resnet;

pub use activation::{Dropout, ReLU};
pub use clip::clip_grad_norm_;
pub use container::Sequential;
pub use conv::Conv2d;
pub use linear::Linear;
pub use norm::{BatchNorm2d, BatchStatsReducer};
pub use pool::{AdaptiveAvgPool2d, Flatten, MaxPool2d};
pub use resnet::{resnet18, resnet34, BasicBlock, ResNet};

use crate::{MemoryFormat, Result, Tensor};

/// Callback receiving a dotted name and a tensor.
pub type Visitor<'a> = dyn FnMut(&str, &Tensor) + 'a;

/// Joins a module path prefix and a member name with a dot.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A layer or a model. Object safe; containers hold `Box<dyn Module>`.
pub trait Module: Send + Sync + std::fmt::Debug {
    /// The forward pass.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Calls `f` for each parameter with its dotted name under `prefix`, in registration order.
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>);

    /// Calls `f` for each buffer (state that is saved but not trained) under `prefix`.
    fn visit_buffers(&self, _prefix: &str, _f: &mut Visitor<'_>) {}

    /// Switches training mode (batch norm statistics, dropout) for this module and children.
    fn set_training(&mut self, _on: bool) {}

    /// Whether the module is in training mode (true for stateless layers).
    fn is_training(&self) -> bool {
        true
    }

    /// Parameters in registration order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Parameters with their dotted names.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_parameters("", &mut |n, t| out.push((n.to_string(), t.clone())));
        out
    }

    /// Buffers with their dotted names.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_buffers("", &mut |n, t| out.push((n.to_string(), t.clone())));
        out
    }

    /// Parameters and buffers by name: what a checkpoint holds (PyTorch's `state_dict()`).
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = self.named_parameters();
        out.extend(self.named_buffers());
        out
    }

    /// Total number of parameter elements.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(Tensor::elem_count).sum()
    }

    /// Training mode (`model.train()`).
    fn train(&mut self) {
        self.set_training(true)
    }

    /// Evaluation mode (`model.eval()`).
    fn eval(&mut self) {
        self.set_training(false)
    }

    /// Runs this module's convolutions in `format` (`model.to(memory_format=...)`): with
    /// `ChannelsLast`, the first convolution converts an NCHW input once and every later
    /// layer keeps NHWC activations (and gradients), the Tensor-Core layout; with
    /// `Contiguous`, convolutions take NCHW. Shapes and results are unchanged. Parameters keep
    /// their row-major layout (the optimizers' fused kernels update whole contiguous buffers):
    /// a convolution reads its weight as KRSC through one copy per call, which is small next
    /// to the activations. The default does nothing (a module without convolutions);
    /// containers forward it to their children.
    fn to_memory_format(&mut self, format: MemoryFormat) {
        let _ = format;
    }

    /// Calls `f` on every [`BatchNorm2d`] in this module and its children (e.g. to make them
    /// synchronized across ranks). The default does nothing (a module without batch norm);
    /// containers forward it to their children.
    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        let _ = f;
    }

    /// Drops the gradients of every parameter.
    fn zero_grad(&self) {
        self.parameters().iter().for_each(Tensor::zero_grad)
    }
}

/// A boxed module is a module (so wrappers generic over `M: Module` take `Box<dyn Module>`).
impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        (**self).visit_parameters(prefix, f)
    }
    fn visit_buffers(&self, prefix: &str, f: &mut Visitor<'_>) {
        (**self).visit_buffers(prefix, f)
    }
    fn set_training(&mut self, on: bool) {
        (**self).set_training(on)
    }
    fn is_training(&self) -> bool {
        (**self).is_training()
    }
    fn to_memory_format(&mut self, format: MemoryFormat) {
        (**self).to_memory_format(format)
    }
    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        (**self).for_each_batch_norm(f)
    }
}
