//! Memory: a ResNet-18 training step under fp16 autocast needs at most 0.65× the activation
//! memory of the fp32 step, measured with the engine's allocator statistics (deterministic:
//! the counters see tensor storages only). One test in its own binary, because the counters
//! are process-wide.

use hemi::amp::autocast;
use hemi::nn::{resnet18, Module};
use hemi::{
    manual_seed, memory_stats, reset_peak_memory, CrossEntropySpec, DType, Device, Result, Tensor,
};

/// Peak bytes above the pre-step baseline (parameters, data; no gradients) during forward and
/// backward, and the bytes held at the end of the forward pass (the saved activations).
fn step_memory(amp: bool) -> Result<(usize, usize)> {
    manual_seed(0);
    let model = resnet18(100, Device::Cpu)?;
    let x = Tensor::randn([16, 3, 160, 160], DType::F32, Device::Cpu)?;
    let y = Tensor::randint(0, 100, [16], Device::Cpu)?;
    model.zero_grad();
    let base = memory_stats(Device::Cpu).current;
    reset_peak_memory(Device::Cpu);
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
    let after_forward = memory_stats(Device::Cpu).current - base;
    loss.backward()?;
    let peak = memory_stats(Device::Cpu).peak - base;
    Ok((peak, after_forward))
}

#[test]
fn fp16_autocast_step_needs_at_most_065_of_fp32_activation_memory() -> Result<()> {
    let (peak32, fwd32) = step_memory(false)?;
    let (peak16, fwd16) = step_memory(true)?;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "resnet18 step, batch 16x3x160x160: fp32 peak {:.1} MiB (after forward {:.1}), fp16 autocast peak {:.1} MiB (after forward {:.1}); ratio {:.3} / {:.3}",
        mib(peak32),
        mib(fwd32),
        mib(peak16),
        mib(fwd16),
        peak16 as f64 / peak32 as f64,
        fwd16 as f64 / fwd32 as f64
    );
    assert!(
        peak16 as f64 <= 0.65 * peak32 as f64,
        "peak {peak16} vs fp32 {peak32}"
    );
    Ok(())
}
