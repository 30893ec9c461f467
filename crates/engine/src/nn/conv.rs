//! 2-D convolution layer.

use super::{init, join, Module, Visitor};
use crate::{Conv2dParams, Device, Error, MemoryFormat, Result, Tensor};

/// Convolution with `weight [out, in/groups, kh, kw]` and optional `bias [out]`; PyTorch's
/// default init (`kaiming_uniform(a=√5)`, bias `U(±1/√fan_in)`).
#[derive(Debug)]
pub struct Conv2d {
    /// `[out_channels, in_channels / groups, kh, kw]`
    pub weight: Tensor,
    /// `[out_channels]`, if present.
    pub bias: Option<Tensor>,
    /// Stride, padding, dilation and groups.
    pub params: Conv2dParams,
    /// The memory format inputs are converted to (`None`: run in the input's own format); set
    /// by [`Module::to_memory_format`].
    pub memory_format: Option<MemoryFormat>,
}

impl Conv2d {
    /// A square-kernel convolution with the given stride and padding, one group.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        device: Device,
    ) -> Result<Self> {
        Conv2d::with_params(
            in_channels,
            out_channels,
            (kernel, kernel),
            Conv2dParams::new(stride, padding),
            bias,
            device,
        )
    }

    /// A convolution with full control over the geometry.
    pub fn with_params(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        params: Conv2dParams,
        bias: bool,
        device: Device,
    ) -> Result<Self> {
        let g = params.groups;
        if in_channels == 0 || out_channels == 0 || kernel.0 == 0 || kernel.1 == 0 || g == 0 {
            return Err(Error::invalid(
                "Conv2d",
                "channels, kernel and groups must be positive",
            ));
        }
        if !in_channels.is_multiple_of(g) || !out_channels.is_multiple_of(g) {
            return Err(Error::invalid(
                "Conv2d",
                format!("groups {g} must divide in {in_channels} and out {out_channels} channels"),
            ));
        }
        let shape = [out_channels, in_channels / g, kernel.0, kernel.1];
        let weight = init::kaiming_uniform(shape, 5f64.sqrt(), device)?;
        let bias = if bias {
            let (fan_in, _) = init::fans(&shape);
            Some(init::uniform(
                [out_channels],
                1.0 / (fan_in as f64).sqrt(),
                device,
            )?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            params,
            memory_format: None,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.memory_format {
            Some(f) if x.rank() == 4 => x.to_memory_format(f)?,
            _ => x.clone(),
        };
        x.conv2d(&self.weight, self.bias.as_ref(), self.params)
    }
    fn to_memory_format(&mut self, format: MemoryFormat) {
        self.memory_format = Some(format);
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        f(&join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
}
