//! One ResNet-18 training step on the CPU for `scripts/compare-torch-cpu.sh`: the same work as
//! `scripts/torch_cpu_step.py` (torchvision's resnet18 with 1000 classes, Adam, cross-entropy
//! on a random batch; `--amp bf16|fp16` runs the forward under autocast, fp16 with a
//! GradScaler). Prints `RESULT hemi BxS AMP img_per_s`, the median of `--steps` timed steps
//! after one warm-up step. Threads: `RAYON_NUM_THREADS` in all, this one among them
//! ([`hemi::cpu::init_threads`]).
//!
//! `cargo bench --bench train_step_compare -- --batch 8 --image 64 --steps 6 --amp off`

use hemi::amp::{autocast, GradScaler, GradScalerConfig};
use hemi::nn::{resnet18, Module};
use hemi::optim::{Adam, AdamConfig, Optimizer};
use hemi::{manual_seed, CrossEntropySpec, DType, Device, Result, Tensor};
use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<()> {
    // This thread is one of the pool's (RAYON_NUM_THREADS in all), as PyTorch's caller is
    // OpenMP's thread 0: ops are not handed to a worker and back.
    hemi::cpu::init_threads(None)?;
    let batch: usize = arg("--batch", "8").parse().unwrap_or(8);
    let image: usize = arg("--image", "64").parse().unwrap_or(64);
    let steps: usize = arg("--steps", "6").parse().unwrap_or(6);
    let amp = arg("--amp", "off");
    let dtype = match amp.as_str() {
        "bf16" => Some(DType::BF16),
        "fp16" => Some(DType::F16),
        _ => None,
    };
    manual_seed(0);
    let model = resnet18(1000, Device::Cpu)?;
    let mut opt = Adam::new(model.parameters(), AdamConfig::adam())?;
    let mut scaler = GradScaler::new(GradScalerConfig {
        enabled: dtype == Some(DType::F16),
        ..Default::default()
    })?;
    let x = Tensor::randn([batch, 3, image, image], DType::F32, Device::Cpu)?;
    let y = Tensor::randint(0, 1000, [batch], Device::Cpu)?;
    let mut times = Vec::new();
    // Per-phase medians (forward, backward, optimizer step) with `--phases`.
    let mut phases: [Vec<f64>; 3] = Default::default();
    for i in 0..=steps {
        let t0 = Instant::now();
        opt.zero_grad();
        let loss = {
            let _region = dtype.map(autocast).transpose()?;
            model
                .forward(&x)?
                .cross_entropy(&y, CrossEntropySpec::default())?
        };
        let t1 = Instant::now();
        scaler.scale(&loss)?.backward()?;
        let t2 = Instant::now();
        scaler.step(&mut opt)?;
        scaler.update(None)?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
            phases[0].push((t1 - t0).as_secs_f64());
            phases[1].push((t2 - t1).as_secs_f64());
            phases[2].push(t2.elapsed().as_secs_f64());
        }
    }
    if std::env::args().any(|a| a == "--phases") {
        for (name, v) in ["forward", "backward", "step"].iter().zip(&mut phases) {
            v.sort_by(f64::total_cmp);
            eprintln!("{name}: {:.1} ms", 1e3 * v[v.len() / 2]);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "RESULT hemi {batch}x{image} {amp} {:.3}",
        batch as f64 / median
    );
    Ok(())
}
