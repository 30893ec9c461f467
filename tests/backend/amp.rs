//! The AMP family: the loss-scale update against PyTorch's rule (f64 product, one rounding),
//! and the in-place unscale / skip of a fused step under a GradScaler.

use hemi::amp::{GradScaler, GradScalerConfig};
use hemi::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use hemi::*;

/// PyTorch's `_amp_update_scale_`, written out: the f32 scale times the factor in f64,
/// rounded to f32 once; growth only when that f32 is finite.
#[derive(Debug)]
struct ScaleModel {
    scale: f32,
    growth: i64,
    c: GradScalerConfig,
}

impl ScaleModel {
    fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.growth = 0;
            self.scale = (f64::from(self.scale) * self.c.backoff_factor) as f32;
        } else {
            self.growth += 1;
            if self.growth == self.c.growth_interval as i64 {
                self.growth = 0;
                let grown = (f64::from(self.scale) * self.c.growth_factor) as f32;
                if grown.is_finite() {
                    self.scale = grown;
                }
            }
        }
    }
}

fn scaler_run(dev: Device, c: GradScalerConfig, pattern: &str) -> Result<()> {
    let mut scaler = GradScaler::new(c)?;
    let mut model = ScaleModel {
        scale: c.init_scale as f32,
        growth: 0,
        c,
    };
    let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0], [3], dev)?.requires_grad_(true)?;
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(1e-3))?;
    for (i, ch) in pattern.chars().enumerate() {
        use hemi::optim::Optimizer;
        opt.zero_grad();
        let loss = w.mul_scalar(1e-3)?.sum_all()?;
        let loss = if ch == 'X' {
            loss.mul_scalar(f64::INFINITY)?
        } else {
            loss
        };
        scaler.scale(&loss)?.backward()?;
        scaler.step(&mut opt)?;
        scaler.update(None)?;
        model.update(ch == 'X');
        assert_eq!(
            scaler.get_scale()?,
            f64::from(model.scale),
            "{dev}, step {i} of {pattern} with {c:?}"
        );
        assert_eq!(
            scaler.get_growth_tracker()?,
            model.growth,
            "{dev}, step {i}"
        );
    }
    Ok(())
}

backend_test!(scale_updates_round_once_like_pytorch, |dev| {
    // PyTorch 2.15: init 3000, backoff 0.3, one overflow -> exactly 900.0.
    let c = GradScalerConfig {
        init_scale: 3000.0,
        backoff_factor: 0.3,
        ..Default::default()
    };
    scaler_run(dev, c, "X")?;
    let mut s = GradScaler::new(c)?;
    let w = Tensor::ones([2], DType::F32, dev)?.requires_grad_(true)?;
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.0))?;
    s.scale(&w.sum_all()?.mul_scalar(f64::INFINITY)?)?
        .backward()?;
    s.step(&mut opt)?;
    s.update(None)?;
    assert_eq!(s.get_scale()?, 900.0, "{dev}");
    // Non-power-of-two factors and intervals over long patterns.
    let patterns = [
        "X..X.X...XX.X....X..X.X..XXX...X.X....X.",
        "......X.......X.......X....X......X.....",
    ];
    for (gf, bf, gi) in [(3.0, 0.3, 2), (1.7, 0.55, 3), (2.0, 0.5, 1), (1.01, 0.9, 5)] {
        for p in patterns {
            let c = GradScalerConfig {
                init_scale: 3000.0,
                growth_factor: gf,
                backoff_factor: bf,
                growth_interval: gi,
                ..Default::default()
            };
            scaler_run(dev, c, p)?;
        }
    }
    Ok(())
});

backend_test!(fused_steps_skip_on_overflow_and_unscale_in_place, |dev| {
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
    Ok(())
});
