//! After the first step, a fused optimizer step (plain, and under a GradScaler with its update)
//! creates no tensor storage on the CPU: parameters, gradients, moments, step counts and the
//! scaler's flags are all updated in place. Counted with the memory statistics, in its own
//! binary because the counters are process-wide.

use hemi::amp::{GradScaler, GradScalerConfig};
use hemi::nn::{resnet18, Module};
use hemi::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use hemi::{manual_seed, memory_stats, DType, Device, Result, Tensor};

fn allocations() -> u64 {
    memory_stats(Device::Cpu).allocations
}

fn fill_grads(params: &[Tensor]) -> Result<()> {
    for p in params {
        p.set_grad(Some(Tensor::randn(
            p.shape().clone(),
            DType::F32,
            Device::Cpu,
        )?))?;
    }
    Ok(())
}

#[test]
fn fused_optimizer_steps_allocate_nothing_after_the_first() -> Result<()> {
    manual_seed(0);
    let model = resnet18(10, Device::Cpu)?;
    let params = model.parameters();
    let optimizers: Vec<(&str, Box<dyn Optimizer>)> = vec![
        (
            "adam",
            Box::new(Adam::new(params.clone(), AdamConfig::adam())?),
        ),
        (
            "adamw amsgrad",
            Box::new(Adam::new(
                params.clone(),
                AdamConfig::adamw().amsgrad(true),
            )?),
        ),
        (
            "sgd momentum",
            Box::new(Sgd::new(params.clone(), SgdConfig::new(0.1).momentum(0.9))?),
        ),
    ];
    for (name, mut opt) in optimizers {
        fill_grads(&params)?;
        opt.step()?; // creates the state
        for _ in 0..3 {
            fill_grads(&params)?;
            let before = allocations();
            opt.step()?;
            assert_eq!(
                allocations(),
                before,
                "{name}: a step after the first allocated"
            );
        }
    }
    // Under a GradScaler: scale (the loss), step and update.
    let mut opt = Adam::new(params.clone(), AdamConfig::adam())?;
    let mut scaler = GradScaler::new(GradScalerConfig::default())?;
    let x = Tensor::randn([2, 3, 32, 32], DType::F32, Device::Cpu)?;
    for i in 0..3 {
        opt.zero_grad();
        scaler.scale(&model.forward(&x)?.sum_all()?)?.backward()?;
        let before = allocations();
        scaler.step(&mut opt)?;
        scaler.update(None)?;
        if i > 0 {
            assert_eq!(allocations(), before, "scaler.step + update, iteration {i}");
        }
    }
    Ok(())
}

/// The same on the emulated CUDA device: the fused Adam step reads its record table from a
/// reused buffer and writes everything in place.
#[cfg(feature = "cuda")]
#[test]
fn fused_adam_on_cuda_sim_allocates_nothing_after_the_first_step() -> Result<()> {
    hemi::cuda::init();
    let dev = Device::CudaSim;
    let params: Vec<Tensor> = [vec![33, 7], vec![129], vec![1]]
        .iter()
        .map(|d| Tensor::randn(d.clone(), DType::F32, dev)?.requires_grad_(true))
        .collect::<Result<_>>()?;
    let mut opt = Adam::new(params.clone(), AdamConfig::adamw())?;
    for i in 0..4 {
        for p in &params {
            p.set_grad(Some(Tensor::randn(p.shape().clone(), DType::F32, dev)?))?;
        }
        let before = memory_stats(dev).allocations;
        opt.step()?;
        if i > 0 {
            assert_eq!(
                memory_stats(dev).allocations,
                before,
                "step {i} on cuda-sim"
            );
        }
    }
    Ok(())
}
