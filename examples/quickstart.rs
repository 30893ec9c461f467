//! Trains a two-layer MLP on a synthetic 3-class task with hand-written SGD, printing the
//! loss and accuracy. Run: `cargo run --release --example quickstart`.

use hemi::{CrossEntropySpec, DType, Device, Generator, Result, Tensor};

fn main() -> Result<()> {
    let mut g = Generator::new(0);
    let (n, d, hidden, classes) = (1024, 16, 64, 3);
    let x = Tensor::randn_with(&mut g, [n, d], DType::F32, Device::Cpu)?;
    let teacher = Tensor::randn_with(&mut g, [d, classes], DType::F32, Device::Cpu)?;
    let scores = x.matmul(&teacher)?.to_vec::<f32>()?;
    let labels: Vec<i64> = scores
        .chunks(classes)
        .map(|r| {
            (0..classes)
                .max_by(|&a, &b| r[a].total_cmp(&r[b]))
                .unwrap_or(0) as i64
        })
        .collect();
    let y = Tensor::from_vec(labels.clone(), [n], Device::Cpu)?;
    let init = |g: &mut Generator, dims: [usize; 2]| {
        let b = 1.0 / (dims[1] as f64).sqrt();
        Tensor::uniform_with(g, dims, -b, b, DType::F32, Device::Cpu)?.requires_grad_(true)
    };
    let (w1, w2) = (init(&mut g, [hidden, d])?, init(&mut g, [classes, hidden])?);
    for step in 0..=200 {
        let logits = x.linear(&w1, None)?.relu()?.linear(&w2, None)?;
        let loss = logits.cross_entropy(&y, CrossEntropySpec::default())?;
        loss.backward()?;
        {
            let _g = hemi::no_grad();
            for w in [&w1, &w2] {
                if let Some(grad) = w.grad() {
                    w.assign(&w.sub(&grad.mul_scalar(0.5)?)?)?;
                }
                w.zero_grad();
            }
        }
        if step % 50 == 0 {
            let v = logits.to_vec::<f32>()?;
            let hits = v
                .chunks(classes)
                .zip(&labels)
                .filter(|(r, &l)| {
                    (0..classes).max_by(|&a, &b| r[a].total_cmp(&r[b])) == Some(l as usize)
                })
                .count();
            println!(
                "step {step}: loss = {:.4}, accuracy = {:.1}%",
                loss.item()?,
                100.0 * hits as f64 / n as f64
            );
        }
    }
    Ok(())
}
