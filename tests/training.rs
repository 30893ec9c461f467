//! End-to-end learning: a small MLP and a small CNN reach > 95% accuracy on synthetic
//! separable tasks, trained with plain SGD written inline.

mod common;

use common::{accuracy, pattern_images};
use hemi::{
    BatchNormParams, Conv2dParams, CrossEntropySpec, DType, Device, Generator, MaxPool2dParams,
    Result, Tensor,
};

fn param(g: &mut Generator, dims: &[usize], fan_in: usize) -> Tensor {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Tensor::uniform_with(g, dims.to_vec(), -bound, bound, DType::F32, Device::Cpu)
        .and_then(|t| t.requires_grad_(true))
        .expect("param")
}

fn sgd(params: &[Tensor], lr: f64) -> Result<()> {
    let _g = hemi::no_grad();
    for p in params {
        if let Some(grad) = p.grad() {
            p.assign(&p.sub(&grad.mul_scalar(lr)?)?)?;
        }
        p.zero_grad();
    }
    Ok(())
}

#[test]
fn mlp_learns_a_linearly_separable_task() -> Result<()> {
    let mut g = Generator::new(21);
    let (n, d, classes, hidden) = (512, 8, 3, 32);
    // Labels from a random linear teacher: argmax(x · T).
    let x = Tensor::randn_with(&mut g, [n, d], DType::F32, Device::Cpu)?;
    let teacher = Tensor::randn_with(&mut g, [d, classes], DType::F32, Device::Cpu)?;
    let scores = x.matmul(&teacher)?.to_vec::<f32>()?;
    let labels: Vec<i64> = (0..n)
        .map(|i| {
            (0..classes)
                .max_by(|&a, &b| scores[i * classes + a].total_cmp(&scores[i * classes + b]))
                .unwrap_or(0) as i64
        })
        .collect();
    let y = Tensor::from_vec(labels.clone(), [n], Device::Cpu)?;
    let (w1, b1) = (param(&mut g, &[hidden, d], d), param(&mut g, &[hidden], d));
    let (w2, b2) = (
        param(&mut g, &[classes, hidden], hidden),
        param(&mut g, &[classes], hidden),
    );
    let params = [w1.clone(), b1.clone(), w2.clone(), b2.clone()];
    let forward = |x: &Tensor| x.linear(&w1, Some(&b1))?.relu()?.linear(&w2, Some(&b2));
    let first = forward(&x)?
        .cross_entropy(&y, CrossEntropySpec::default())?
        .item()?;
    for _ in 0..300 {
        forward(&x)?
            .cross_entropy(&y, CrossEntropySpec::default())?
            .backward()?;
        sgd(&params, 0.5)?;
    }
    let logits = forward(&x)?;
    let last = logits
        .cross_entropy(&y, CrossEntropySpec::default())?
        .item()?;
    let acc = accuracy(&logits, &labels);
    assert!(last < first, "loss went from {first} to {last}");
    assert!(acc > 0.95, "MLP accuracy {acc}");
    Ok(())
}

#[test]
fn cnn_learns_oriented_bars() -> Result<()> {
    let mut g = Generator::new(22);
    let (n, classes) = (384, 3);
    let (data, labels) = pattern_images(&mut g, n);
    let x = Tensor::from_vec(data, [n, 1, 8, 8], Device::Cpu)?;
    let c1 = param(&mut g, &[8, 1, 3, 3], 9);
    let bn_w = Tensor::ones([8], DType::F32, Device::Cpu)?.requires_grad_(true)?;
    let bn_b = Tensor::zeros([8], DType::F32, Device::Cpu)?.requires_grad_(true)?;
    let (rm, rv) = (
        Tensor::zeros([8], DType::F32, Device::Cpu)?,
        Tensor::ones([8], DType::F32, Device::Cpu)?,
    );
    let c2 = param(&mut g, &[16, 8, 3, 3], 72);
    let (fw, fb) = (
        param(&mut g, &[classes, 16], 16),
        param(&mut g, &[classes], 16),
    );
    let params = [
        c1.clone(),
        bn_w.clone(),
        bn_b.clone(),
        c2.clone(),
        fw.clone(),
        fb.clone(),
    ];
    let forward = |x: &Tensor, training: bool| -> Result<Tensor> {
        let bn = BatchNormParams {
            training,
            ..Default::default()
        };
        x.conv2d(&c1, None, Conv2dParams::new(1, 1))?
            .batch_norm(Some(&rm), Some(&rv), Some(&bn_w), Some(&bn_b), bn)?
            .relu()?
            .max_pool2d(MaxPool2dParams::new(2, 2, 0))?
            .conv2d(&c2, None, Conv2dParams::new(1, 1))?
            .relu()?
            .adaptive_avg_pool2d((1, 1))?
            .flatten(1, -1)?
            .linear(&fw, Some(&fb))
    };
    let batch = 64;
    let (xv, batches) = (x.to_vec::<f32>()?, n.div_ceil(batch));
    let batches: Vec<(Tensor, Tensor)> = (0..batches)
        .map(|b| {
            let (s, e) = (b * batch, ((b + 1) * batch).min(n));
            Ok((
                Tensor::from_slice(&xv[s * 64..e * 64], [e - s, 1, 8, 8], Device::Cpu)?,
                Tensor::from_slice(&labels[s..e], [e - s], Device::Cpu)?,
            ))
        })
        .collect::<Result<_>>()?;
    for _epoch in 0..60 {
        for (xb, yb) in &batches {
            forward(xb, true)?
                .cross_entropy(yb, CrossEntropySpec::default())?
                .backward()?;
            sgd(&params, 0.1)?;
        }
    }
    let logits = {
        let _g = hemi::no_grad();
        forward(&x, false)?
    };
    let acc = accuracy(&logits, &labels);
    assert!(
        acc > 0.95,
        "CNN accuracy {acc} (eval mode, running statistics)"
    );
    Ok(())
}
