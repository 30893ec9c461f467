//! A small CNN trained with fp16 AMP (autocast + GradScaler) reaches the accuracy of the same
//! network trained in fp32 (within 1 point), from the same initialisation and data.

mod common;

use common::{accuracy, pattern_images};
use hemi::amp::{autocast, GradScaler, GradScalerConfig};
use hemi::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential,
};
use hemi::optim::{Optimizer, Sgd, SgdConfig};
use hemi::{manual_seed, CrossEntropySpec, DType, Device, Generator, Result, Tensor};

fn cnn() -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Conv2d::new(1, 8, 3, 1, 1, true, Device::Cpu)?)
        .push(BatchNorm2d::new(8, Device::Cpu)?)
        .push(ReLU)
        .push(MaxPool2d::new(2, 2, 0))
        .push(Conv2d::new(8, 16, 3, 1, 1, true, Device::Cpu)?)
        .push(ReLU)
        .push(AdaptiveAvgPool2d((1, 1)))
        .push(Flatten)
        .push(Linear::new(16, 3, true, Device::Cpu)?))
}

fn train(amp: bool) -> Result<f64> {
    let mut g = Generator::new(31);
    let (n, batch) = (384, 64);
    let (data, labels) = pattern_images(&mut g, n);
    manual_seed(32);
    let mut model = cnn()?;
    let mut opt = Sgd::new(model.parameters(), SgdConfig::new(0.05).momentum(0.9))?;
    let mut scaler = GradScaler::new(GradScalerConfig {
        enabled: amp,
        ..Default::default()
    })?;
    for _epoch in 0..30 {
        for s in (0..n).step_by(batch) {
            let xb = Tensor::from_slice(
                &data[s * 64..(s + batch) * 64],
                [batch, 1, 8, 8],
                Device::Cpu,
            )?;
            let yb = Tensor::from_slice(&labels[s..s + batch], [batch], Device::Cpu)?;
            opt.zero_grad();
            let loss = {
                let _ac = if amp {
                    Some(autocast(DType::F16)?)
                } else {
                    None
                };
                model
                    .forward(&xb)?
                    .cross_entropy(&yb, CrossEntropySpec::default())?
            };
            assert_eq!(
                loss.dtype(),
                DType::F32,
                "cross_entropy runs in fp32 under autocast"
            );
            scaler.scale(&loss)?.backward()?;
            scaler.step(&mut opt)?;
            scaler.update(None)?;
        }
    }
    model.eval();
    let x = Tensor::from_slice(&data, [n, 1, 8, 8], Device::Cpu)?;
    let logits = {
        let _g = hemi::no_grad();
        let _ac = if amp {
            Some(autocast(DType::F16)?)
        } else {
            None
        };
        model.forward(&x)?.to_dtype(DType::F32)?
    };
    Ok(accuracy(&logits, &labels))
}

#[test]
fn fp16_amp_matches_fp32_accuracy() -> Result<()> {
    let fp32 = train(false)?;
    let amp = train(true)?;
    eprintln!("accuracy: fp32 {fp32:.4}, fp16 AMP {amp:.4}");
    assert!(fp32 > 0.9, "fp32 baseline learns ({fp32})");
    assert!((fp32 - amp).abs() <= 0.01, "fp32 {fp32} vs AMP {amp}");
    Ok(())
}
