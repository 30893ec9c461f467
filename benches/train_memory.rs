//! Memory of ResNet-18 training steps on the CPU, fp32 against fp16 autocast + GradScaler,
//! both with the default fused in-place Adam: the peak bytes held by tensor storages over a
//! whole step (parameters, gradients, optimizer state, activations, temporaries), measured
//! with the engine's memory statistics after a warm-up step, and the storages one
//! `scaler.step` + `update` (or `opt.step`) creates after the first step.
//!
//! Targets (issue "Backend v2"): AMP peak ≤ 0.65× fp32 at 16×3×160×160 and ≤ 1.0× at
//! 8×3×64×64; zero allocations per optimizer step. Two ratios are printed: of the total peak,
//! and of the step memory above what persists between steps (parameters, Adam moments, the
//! batch — identical f32 buffers in both runs, 134 MiB for ResNet-18/1000). Run with
//! `cargo bench --bench train_memory` (a plain binary: it prints one table).

use hemi::amp::{autocast, GradScaler, GradScalerConfig};
use hemi::nn::{resnet18, Module};
use hemi::optim::{Adam, AdamConfig, Optimizer};
use hemi::{
    manual_seed, memory_stats, reset_peak_memory, CrossEntropySpec, DType, Device, Result, Tensor,
};

struct Measured {
    peak: usize,
    /// Bytes held before the step: parameters, optimizer state, the batch.
    persistent: usize,
    after_forward: usize,
    step_allocations: u64,
}

fn measure(batch: usize, size: usize, amp: bool) -> Result<Measured> {
    manual_seed(0);
    let cpu = Device::Cpu;
    let model = resnet18(1000, cpu)?;
    let mut opt = Adam::new(model.parameters(), AdamConfig::adam())?;
    let mut scaler = GradScaler::new(GradScalerConfig {
        enabled: amp,
        ..Default::default()
    })?;
    let x = Tensor::randn([batch, 3, size, size], DType::F32, cpu)?;
    let y = Tensor::randint(0, 1000, [batch], cpu)?;
    let mut m = Measured {
        peak: 0,
        persistent: 0,
        after_forward: 0,
        step_allocations: 0,
    };
    for it in 0..3 {
        opt.zero_grad();
        reset_peak_memory(cpu);
        m.persistent = memory_stats(cpu).current;
        let loss = {
            let _ac = if amp {
                Some(autocast(DType::F16)?)
            } else {
                None
            };
            model
                .forward(&x)?
                .cross_entropy(&y, CrossEntropySpec::default())?
        };
        m.after_forward = memory_stats(cpu).current;
        scaler.scale(&loss)?.backward()?;
        drop(loss);
        let before = memory_stats(cpu).allocations;
        scaler.step(&mut opt)?;
        scaler.update(None)?;
        if it > 0 {
            m.step_allocations = m
                .step_allocations
                .max(memory_stats(cpu).allocations - before);
            m.peak = m.peak.max(memory_stats(cpu).peak);
        }
    }
    Ok(m)
}

fn main() -> Result<()> {
    let mib = |b: usize| b as f64 / f64::from(1 << 20);
    println!("| batch | fp32 peak MiB | AMP peak MiB | ratio | step memory above persistent (fp32 / AMP MiB) | step ratio | target | held after forward (fp32 / AMP MiB) | allocations per step (fp32 / AMP) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (batch, size, target) in [(8, 64, 1.0), (16, 160, 0.65)] {
        let f = measure(batch, size, false)?;
        let a = measure(batch, size, true)?;
        let ratio = a.peak as f64 / f.peak as f64;
        let (fs, as_) = (f.peak - f.persistent, a.peak - a.persistent);
        let step_ratio = as_ as f64 / fs as f64;
        println!(
            "| {batch}x3x{size}x{size} | {:.1} | {:.1} | {ratio:.3} | {:.1} / {:.1} | {step_ratio:.3} | <= {target} (total {}, step {}) | {:.1} / {:.1} | {} / {} |",
            mib(f.peak),
            mib(a.peak),
            mib(fs),
            mib(as_),
            if ratio <= target { "met" } else { "missed" },
            if step_ratio <= target { "met" } else { "missed" },
            mib(f.after_forward),
            mib(a.after_forward),
            f.step_allocations,
            a.step_allocations
        );
    }
    Ok(())
}
