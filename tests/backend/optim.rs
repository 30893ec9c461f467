//! The optim family: the fused in-place Adam/AdamW/SGD steps match the unfused reference.

use hemi::optim::{Adam, AdamConfig, AdamW, Optimizer, Sgd, SgdConfig};
use hemi::*;

fn params(gen: &mut Generator, dev: Device) -> Result<Vec<Tensor>> {
    [vec![7, 3], vec![5], vec![1]]
        .iter()
        .map(|d| super::memory::rand(gen, d, dev)?.requires_grad_(true))
        .collect()
}

/// Runs `steps` steps of `make(params)` with the same random gradients; returns the params.
fn run(
    make: &dyn Fn(Vec<Tensor>) -> Result<Box<dyn Optimizer>>,
    dev: Device,
    steps: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut gen = Generator::new(4);
    let ps = params(&mut gen, dev)?;
    let mut opt = make(ps.clone())?;
    for s in 0..steps {
        for p in &ps {
            // Parameter 2 skips step 1: its state starts later than the others'.
            if s == 1 && p.elem_count() == 1 {
                p.zero_grad();
                let _ = super::memory::rand(&mut gen, &[1], dev)?;
                continue;
            }
            p.set_grad(Some(super::memory::rand(&mut gen, p.dims(), dev)?))?;
        }
        opt.step()?;
    }
    ps.iter().map(|p| p.to_vec::<f32>()).collect()
}

backend_test!(
    fused_in_place_optimizers_match_the_unfused_reference,
    |dev| {
        type Make = Box<dyn Fn(Vec<Tensor>, bool) -> Result<Box<dyn Optimizer>>>;
        let kinds: Vec<(&str, Make)> = vec![
            (
                "adam amsgrad wd",
                Box::new(|p, f| {
                    let c = AdamConfig::adam().weight_decay(0.1).amsgrad(true).fused(f);
                    Ok(Box::new(Adam::new(p, c)?) as Box<dyn Optimizer>)
                }),
            ),
            (
                "adamw",
                Box::new(|p, f| {
                    Ok(Box::new(AdamW::new(p, AdamConfig::adamw().lr(0.01).fused(f))?) as _)
                }),
            ),
            (
                "sgd momentum dampening wd",
                Box::new(|p, f| {
                    let c = SgdConfig::new(0.1)
                        .momentum(0.9)
                        .dampening(0.2)
                        .weight_decay(0.01);
                    Ok(Box::new(Sgd::new(p, c.fused(f))?) as _)
                }),
            ),
            (
                "sgd nesterov",
                Box::new(|p, f| {
                    let c = SgdConfig::new(0.05).momentum(0.8).nesterov(true);
                    Ok(Box::new(Sgd::new(p, c.fused(f))?) as _)
                }),
            ),
            (
                "sgd plain",
                Box::new(|p, f| Ok(Box::new(Sgd::new(p, SgdConfig::new(0.3).fused(f))?) as _)),
            ),
        ];

        for (name, make) in &kinds {
            let reference = run(&|p| make(p, false), Device::Cpu, 4)?;
            let fused = run(&|p| make(p, true), dev, 4)?;
            for (r, f) in reference.iter().zip(&fused) {
                for (x, y) in r.iter().zip(f) {
                    assert!(
                        (x - y).abs() <= 2e-6 * x.abs().max(1.0),
                        "{name} fused on {dev}: {y} vs unfused {x}"
                    );
                }
            }
        }
        Ok(())
    }
);

backend_test!(half_precision_parameters_take_the_unfused_path, |dev| {
    for dt in [DType::F16, DType::BF16] {
        let w = Tensor::full([4], 1.0, dt, dev)?.requires_grad_(true)?;
        let mut adam = Adam::new(vec![w.clone()], AdamConfig::adam().lr(0.25))?;
        w.set_grad(Some(Tensor::full([4], 2.0, dt, dev)?))?;
        adam.step()?;
        // First Adam step: p − lr·sign(g) up to eps.
        assert_eq!(w.to_f64_vec()?, vec![0.75; 4], "adam {dt} on {dev}");
        assert!(
            !adam.supports_amp_scaling(),
            "{dt} parameters cannot take the fused AMP step"
        );
        let mut sgd = Sgd::new(vec![w.clone()], SgdConfig::new(0.125).momentum(0.5))?;
        sgd.step()?;
        assert_eq!(w.to_f64_vec()?, vec![0.5; 4], "sgd {dt} on {dev}");
    }
    Ok(())
});
