//! In-place semantics on every device: writes are visible through views and detached
//! handles, version counters make a stale backward fail, gradients accumulate in place without
//! clobbering shared buffers, and the fused in-place optimizers match the unfused reference.

mod common;

use common::devices;
use hemi::amp::{GradScaler, GradScalerConfig};
use hemi::optim::{Adam, AdamConfig, AdamW, Optimizer, Sgd, SgdConfig};
use hemi::{DType, Device, Error, Generator, Result, Tensor};

fn rand(gen: &mut Generator, dims: &[usize], dev: Device) -> Result<Tensor> {
    Tensor::uniform_with(gen, dims.to_vec(), -1.0, 1.0, DType::F32, Device::Cpu)?.to_device(dev)
}

#[test]
fn assign_is_visible_through_views_and_detached_handles() -> Result<()> {
    let mut gen = Generator::new(1);
    for dev in devices() {
        let w = rand(&mut gen, &[3, 5], dev)?;
        let (view, handle) = (w.narrow(0, 1, 2)?, w.detach());
        let new = rand(&mut gen, &[3, 5], dev)?;
        let v0 = w.version();
        w.assign(&new)?;
        assert_eq!(w.version(), v0 + 1, "{dev}: assign bumps the version");
        assert_eq!(
            handle.version(),
            w.version(),
            "{dev}: one counter per storage"
        );
        assert_eq!(handle.to_vec::<f32>()?, new.to_vec::<f32>()?, "{dev}");
        assert_eq!(
            view.to_vec::<f32>()?,
            new.narrow(0, 1, 2)?.to_vec::<f32>()?,
            "{dev}: the view sees the write"
        );
        // A contiguous view as the destination writes into the middle of the storage.
        let row = w.narrow(0, 2, 1)?;
        row.assign(&Tensor::full([1, 5], 7.0, DType::F16, dev)?)?;
        let all = w.to_vec::<f32>()?;
        assert_eq!(
            &all[10..],
            &[7.0; 5],
            "{dev}: rounded and written at the offset"
        );
        assert_eq!(
            &all[..10],
            &new.to_vec::<f32>()?[..10],
            "{dev}: the rest untouched"
        );
        // The source may be the destination's own storage (overlapping rows).
        let top = w.narrow(0, 0, 2)?;
        let expect = w.narrow(0, 1, 2)?.to_vec::<f32>()?;
        top.assign(&w.narrow(0, 1, 2)?)?;
        assert_eq!(top.to_vec::<f32>()?, expect, "{dev}: overlapping assign");
    }
    Ok(())
}

#[test]
fn backward_fails_when_a_saved_tensor_was_modified_in_place() -> Result<()> {
    let mut gen = Generator::new(2);
    for dev in devices() {
        let w = rand(&mut gen, &[4, 3], dev)?.requires_grad_(true)?;
        let x = rand(&mut gen, &[2, 4], dev)?;
        let loss = x.matmul(&w)?.sum_all()?; // matmul saves x and w
        x.assign(&rand(&mut gen, &[2, 4], dev)?)?;
        let err = loss.backward().expect_err("x changed after it was saved");
        let Error::Autograd(msg) = &err else {
            panic!("{dev}: expected an autograd error, got {err:?}")
        };
        for want in [
            "matmul",
            "modified by an in-place operation",
            "version 1",
            "version 0",
        ] {
            assert!(msg.contains(want), "{dev}: `{want}` missing from: {msg}");
        }
        // An op that saves nothing of a tensor does not care (as in PyTorch: add saves no input).
        let a = rand(&mut gen, &[3], dev)?.requires_grad_(true)?;
        let b = rand(&mut gen, &[3], dev)?;
        let y = a.add(&b)?.sum_all()?;
        b.assign(&rand(&mut gen, &[3], dev)?)?;
        y.backward()?;
        assert_eq!(
            a.grad().expect("grad").to_vec::<f32>()?,
            vec![1.0; 3],
            "{dev}"
        );
    }
    Ok(())
}

#[test]
fn gradients_accumulate_in_place_without_touching_shared_buffers() -> Result<()> {
    let mut gen = Generator::new(3);
    for dev in devices() {
        let a = rand(&mut gen, &[5], dev)?.requires_grad_(true)?;
        let b = rand(&mut gen, &[5], dev)?.requires_grad_(true)?;
        // add's backward hands the same gradient tensor to both inputs.
        a.add(&b)?.sum_all()?.backward()?;
        let ga = a.grad().expect("a.grad");
        let v = ga.version();
        a.mul_scalar(3.0)?.sum_all()?.backward()?;
        let ga2 = a.grad().expect("a.grad");
        assert_eq!(ga2.to_vec::<f32>()?, vec![4.0; 5], "{dev}: 1 + 3");
        assert_eq!(ga.version(), v + 1, "{dev}: accumulated in place");
        assert_eq!(ga.to_vec::<f32>()?, vec![4.0; 5], "{dev}: same buffer");
        assert_eq!(
            b.grad().expect("b.grad").to_vec::<f32>()?,
            vec![1.0; 5],
            "{dev}: b's gradient was not the buffer a accumulated into"
        );
    }
    Ok(())
}

fn params(gen: &mut Generator, dev: Device) -> Result<Vec<Tensor>> {
    [vec![7, 3], vec![5], vec![1]]
        .iter()
        .map(|d| rand(gen, d, dev)?.requires_grad_(true))
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
                let _ = rand(&mut gen, &[1], dev)?;
                continue;
            }
            p.set_grad(Some(rand(&mut gen, p.dims(), dev)?))?;
        }
        opt.step()?;
    }
    ps.iter().map(|p| p.to_vec::<f32>()).collect()
}

#[test]
fn fused_in_place_optimizers_match_the_unfused_reference() -> Result<()> {
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
    for dev in devices() {
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
    }
    Ok(())
}

#[test]
fn fused_steps_skip_on_overflow_and_unscale_in_place() -> Result<()> {
    for dev in devices() {
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0], [3], dev)?.requires_grad_(true)?;
        let mut opt = Adam::new(vec![w.clone()], AdamConfig::adam().lr(0.1))?;
        let mut scaler = GradScaler::new(GradScalerConfig {
            init_scale: 1024.0,
            ..Default::default()
        })?;
        scaler.scale(&w.sum_all()?)?.backward()?;
        let g = w.grad().expect("grad");
        scaler.step(&mut opt)?;
        scaler.update(None)?;
        assert_eq!(g.to_vec::<f32>()?, vec![1.0; 3], "{dev}: unscaled in place");
        let after_one = w.to_vec::<f32>()?;
        assert!(after_one
            .iter()
            .zip([1.0, 2.0, 3.0])
            .all(|(a, b)| (a - (b - 0.1)).abs() < 1e-5));
        opt.zero_grad();
        scaler
            .scale(&w.sum_all()?.mul_scalar(f64::INFINITY)?)?
            .backward()?;
        scaler.step(&mut opt)?;
        scaler.update(None)?;
        assert_eq!(w.to_vec::<f32>()?, after_one, "{dev}: skipped");
        assert_eq!(scaler.get_scale()?, 512.0, "{dev}");
        assert_eq!(scaler.skipped_steps()?, 1, "{dev}");
    }
    Ok(())
}
