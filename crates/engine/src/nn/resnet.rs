//! ResNet-18/34 exactly as torchvision builds them (BasicBlock, 1×1 conv + BN downsample),
//! with torchvision's parameter names and initialisation.

use super::{init, join, BatchNorm2d, Conv2d, Linear, MaxPool2d, Module, Visitor};
use crate::{Device, Error, Result, Tensor};

/// A convolution without bias, initialised as torchvision's ResNet does
/// (`kaiming_normal_(mode='fan_out', nonlinearity='relu')`).
fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: Device,
) -> Result<Conv2d> {
    let mut c = Conv2d::new(cin, cout, k, stride, pad, false, device)?;
    c.weight = init::kaiming_normal_fan_out([cout, cin, k, k], device)?;
    Ok(c)
}

/// Two 3×3 conv-BN pairs with a residual connection; `downsample` (1×1 conv + BN) adapts the
/// identity when the stride or width changes.
#[derive(Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: Device) -> Result<Self> {
        let downsample = if stride != 1 || cin != cout {
            Some((
                conv(cin, cout, 1, stride, 0, device)?,
                BatchNorm2d::new(cout, device)?,
            ))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv(cin, cout, 3, stride, 1, device)?,
            bn1: BatchNorm2d::new(cout, device)?,
            conv2: conv(cout, cout, 3, 1, 1, device)?,
            bn2: BatchNorm2d::new(cout, device)?,
            downsample,
        })
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.bn1.forward_relu(&self.conv1.forward(x)?)?;
        let out = self.bn2.forward(&self.conv2.forward(&out)?)?;
        let identity = match &self.downsample {
            Some((c, b)) => b.forward(&c.forward(x)?)?,
            None => x.clone(),
        };
        out.add(&identity)?.relu()
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        self.conv1.visit_parameters(&join(prefix, "conv1"), f);
        self.bn1.visit_parameters(&join(prefix, "bn1"), f);
        self.conv2.visit_parameters(&join(prefix, "conv2"), f);
        self.bn2.visit_parameters(&join(prefix, "bn2"), f);
        if let Some((c, b)) = &self.downsample {
            c.visit_parameters(&join(prefix, "downsample.0"), f);
            b.visit_parameters(&join(prefix, "downsample.1"), f);
        }
    }
    fn visit_buffers(&self, prefix: &str, f: &mut Visitor<'_>) {
        self.bn1.visit_buffers(&join(prefix, "bn1"), f);
        self.bn2.visit_buffers(&join(prefix, "bn2"), f);
        if let Some((_, b)) = &self.downsample {
            b.visit_buffers(&join(prefix, "downsample.1"), f);
        }
    }
    fn set_training(&mut self, on: bool) {
        self.bn1.set_training(on);
        self.bn2.set_training(on);
        if let Some((_, b)) = &mut self.downsample {
            b.set_training(on);
        }
    }
    fn is_training(&self) -> bool {
        self.bn1.is_training()
    }
    fn to_memory_format(&mut self, format: crate::MemoryFormat) {
        self.conv1.to_memory_format(format);
        self.conv2.to_memory_format(format);
        if let Some((c, _)) = &mut self.downsample {
            c.to_memory_format(format);
        }
    }
    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        f(&mut self.bn1);
        f(&mut self.bn2);
        if let Some((_, b)) = &mut self.downsample {
            f(b);
        }
    }
}

/// torchvision's ResNet with BasicBlocks: stem (7×7/2 conv, BN, ReLU, 3×3/2 max pool), four
/// stages of widths 64, 128, 256, 512, global average pool and a fully connected classifier.
/// Input `[N, 3, H, W]` (H, W ≥ 32 for every stage to keep a spatial extent), output
/// `[N, num_classes]`.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    maxpool: MaxPool2d,
    layers: [Vec<BasicBlock>; 4],
    fc: Linear,
}

impl ResNet {
    /// A ResNet with `blocks[i]` BasicBlocks in stage `i`.
    pub fn new(blocks: [usize; 4], num_classes: usize, device: Device) -> Result<Self> {
        if num_classes == 0 {
            return Err(Error::invalid("resnet", "num_classes must be positive"));
        }
        let widths = [64, 128, 256, 512];
        let mut cin = 64;
        let mut layers: [Vec<BasicBlock>; 4] = Default::default();
        for (stage, (&n, &w)) in blocks.iter().zip(&widths).enumerate() {
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                layers[stage].push(BasicBlock::new(cin, w, stride, device)?);
                cin = w;
            }
        }
        Ok(ResNet {
            conv1: conv(3, 64, 7, 2, 3, device)?,
            bn1: BatchNorm2d::new(64, device)?,
            maxpool: MaxPool2d::new(3, 2, 1),
            layers,
            fc: Linear::new(512, num_classes, true, device)?,
        })
    }

    fn stage_name(i: usize) -> String {
        format!("layer{}", i + 1)
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != 3 {
            return Err(Error::shape(
                "resnet",
                format!("expected input [N, 3, H, W], got {:?}", x.shape()),
            ));
        }
        let mut h = self
            .maxpool
            .forward(&self.bn1.forward_relu(&self.conv1.forward(x)?)?)?;
        for block in self.layers.iter().flatten() {
            h = block.forward(&h)?;
        }
        self.fc
            .forward(&h.adaptive_avg_pool2d((1, 1))?.flatten(1, -1)?)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        self.conv1.visit_parameters(&join(prefix, "conv1"), f);
        self.bn1.visit_parameters(&join(prefix, "bn1"), f);
        for (s, blocks) in self.layers.iter().enumerate() {
            for (i, b) in blocks.iter().enumerate() {
                b.visit_parameters(&join(prefix, &format!("{}.{i}", Self::stage_name(s))), f);
            }
        }
        self.fc.visit_parameters(&join(prefix, "fc"), f);
    }
    fn visit_buffers(&self, prefix: &str, f: &mut Visitor<'_>) {
        self.bn1.visit_buffers(&join(prefix, "bn1"), f);
        for (s, blocks) in self.layers.iter().enumerate() {
            for (i, b) in blocks.iter().enumerate() {
                b.visit_buffers(&join(prefix, &format!("{}.{i}", Self::stage_name(s))), f);
            }
        }
    }
    fn set_training(&mut self, on: bool) {
        self.bn1.set_training(on);
        self.layers
            .iter_mut()
            .flatten()
            .for_each(|b| b.set_training(on));
    }
    fn is_training(&self) -> bool {
        self.bn1.is_training()
    }
    fn to_memory_format(&mut self, format: crate::MemoryFormat) {
        self.conv1.to_memory_format(format);
        self.layers
            .iter_mut()
            .flatten()
            .for_each(|b| b.to_memory_format(format));
    }
    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        f(&mut self.bn1);
        self.layers
            .iter_mut()
            .flatten()
            .for_each(|b| b.for_each_batch_norm(f));
    }
}

/// ResNet-18 (`[2, 2, 2, 2]` blocks); 11,689,512 parameters for 1000 classes.
pub fn resnet18(num_classes: usize, device: Device) -> Result<ResNet> {
    ResNet::new([2, 2, 2, 2], num_classes, device)
}

/// ResNet-34 (`[3, 4, 6, 3]` blocks); 21,797,672 parameters for 1000 classes.
pub fn resnet34(num_classes: usize, device: Device) -> Result<ResNet> {
    ResNet::new([3, 4, 6, 3], num_classes, device)
}
