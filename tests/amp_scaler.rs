//! GradScaler: trajectory against an independent model of the algorithm, skipping on
//! overflow (unfused and fused optimizers), misuse errors, state dicts, fp16 underflow,
//! clipping, gradient accumulation, the report and the overflow line.

use hemi::amp::{GradScaler, GradScalerConfig};
use hemi::nn::clip_grad_norm_;
use hemi::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use hemi::{DType, Device, Result, Tensor};

mod common;

/// The scale-update algorithm written out independently (f64; every value is a power of two
/// times small integers, exact in f32 as well).
#[derive(Debug, Clone)]
struct Model {
    scale: f64,
    growth: i64,
    hyst: i64,
    c: GradScalerConfig,
}

impl Model {
    fn new(c: GradScalerConfig) -> Self {
        Model {
            scale: c.init_scale,
            growth: 0,
            hyst: c.hysteresis as i64,
            c,
        }
    }
    fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.growth = 0;
            self.hyst -= 1;
            if self.hyst <= 0 {
                self.scale =
                    (self.scale * self.c.backoff_factor).max(self.c.min_scale.unwrap_or(0.0));
            }
        } else {
            self.growth += 1;
            if self.growth == self.c.growth_interval as i64 {
                self.growth = 0;
                self.hyst = self.c.hysteresis as i64;
                let grown = self.scale * self.c.growth_factor;
                if (grown as f32).is_finite() {
                    self.scale = grown.min(self.c.max_scale.unwrap_or(f64::INFINITY));
                }
            }
        }
    }
}

fn param(v: &[f32]) -> Tensor {
    param_on(v, Device::Cpu)
}

fn param_on(v: &[f32], dev: Device) -> Tensor {
    Tensor::from_slice(v, [v.len()], dev)
        .and_then(|t| t.requires_grad_(true))
        .expect("param")
}

/// One iteration: backward of a scaled loss, then optionally poison one gradient value.
fn iteration(
    scaler: &mut GradScaler,
    opt: &mut dyn Optimizer,
    w: &Tensor,
    poison: Option<f32>,
) -> Result<()> {
    opt.zero_grad();
    let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0], [3], w.device())?;
    scaler.scale(&w.mul(&x)?.sum_all()?)?.backward()?;
    if let Some(bad) = poison {
        let mut g = w.grad().expect("grad").to_vec::<f32>()?;
        g[1] = bad;
        w.set_grad(Some(Tensor::from_vec(g, [3], w.device())?))?;
    }
    scaler.step(opt)?;
    scaler.update(None)
}

/// The scaler against the model over `pattern` ('X' = an overflowing step), on every device
/// (with a plain SGD and with the fused Adam, which skips on the device).
fn follow_pattern(c: GradScalerConfig, pattern: &str) -> Result<()> {
    for dev in common::devices() {
        for fused in [false, true] {
            let mut scaler = GradScaler::new(c)?;
            let mut model = Model::new(c);
            let w = param_on(&[1.0, 2.0, 3.0], dev);
            let mut opt: Box<dyn Optimizer> = if fused {
                Box::new(Adam::new(vec![w.clone()], AdamConfig::adam())?)
            } else {
                Box::new(Sgd::new(vec![w.clone()], SgdConfig::new(1e-3))?)
            };
            let what = |i: usize| format!("step {i} of {pattern} on {dev} (fused {fused})");
            for (i, ch) in pattern.chars().enumerate() {
                let inf = ch == 'X';
                iteration(&mut scaler, opt.as_mut(), &w, inf.then_some(f32::INFINITY))?;
                model.update(inf);
                assert_eq!(scaler.get_scale()?, model.scale, "{}: scale", what(i));
                assert_eq!(
                    scaler.get_growth_tracker()?,
                    model.growth,
                    "{}: growth",
                    what(i)
                );
                assert_eq!(
                    scaler.get_hysteresis_tracker()?,
                    model.hyst,
                    "{}: hysteresis",
                    what(i)
                );
            }
            let overflows = pattern.chars().filter(|&c| c == 'X').count() as u64;
            assert_eq!(scaler.skipped_steps()?, overflows, "{pattern} on {dev}");
        }
    }
    Ok(())
}

#[test]
fn trajectory_matches_the_model() -> Result<()> {
    let base = GradScalerConfig {
        growth_interval: 3,
        ..Default::default()
    };
    follow_pattern(base, "...X..X...X...XX....")?;
    follow_pattern(
        GradScalerConfig {
            min_scale: Some(16384.0),
            ..base
        },
        "XXXX...X",
    )?;
    follow_pattern(
        GradScalerConfig {
            max_scale: Some(131072.0),
            ..base
        },
        "..........X...",
    )?;
    follow_pattern(
        GradScalerConfig {
            hysteresis: 2,
            ..base
        },
        "X.X...XXX.....XX",
    )?;
    // The inf guard: growing 2^127 by 2 would overflow f32, so the scale stays (and the
    // growth tracker resets), with gradients that stay finite at that scale.
    let edge = GradScalerConfig {
        init_scale: 2f64.powi(127),
        growth_interval: 1,
        ..Default::default()
    };
    let mut s = GradScaler::new(edge)?;
    let w = param(&[1.0, 1.0, 1.0]);
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.0))?;
    for _ in 0..3 {
        opt.zero_grad();
        s.scale(&w.sum_all()?.mul_scalar(1e-3)?)?.backward()?;
        s.step(&mut opt)?;
        s.update(None)?;
        assert_eq!(s.get_scale()?, 2f64.powi(127), "scale never grows to inf");
        assert_eq!(s.get_growth_tracker()?, 0);
    }
    Ok(())
}

#[test]
fn defaults_are_pytorchs() -> Result<()> {
    let c = GradScalerConfig::default();
    assert_eq!(
        (
            c.init_scale,
            c.growth_factor,
            c.backoff_factor,
            c.growth_interval,
            c.enabled
        ),
        (65536.0, 2.0, 0.5, 2000, true)
    );
    assert!(GradScaler::new(GradScalerConfig {
        growth_factor: 1.0,
        ..c
    })
    .is_err());
    assert!(GradScaler::new(GradScalerConfig {
        backoff_factor: 1.0,
        ..c
    })
    .is_err());
    Ok(())
}

fn snapshot(params: &[Tensor], opt: &dyn Optimizer) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = params
        .iter()
        .map(|p| {
            p.to_vec::<f32>()
                .expect("p")
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    for ps in opt.state_dict().params {
        out.push(vec![ps.step as u32]);
        for b in ps.buffers.values() {
            out.push(
                b.to_vec::<f32>()
                    .expect("buffer")
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            );
        }
    }
    out
}

#[test]
fn an_overflow_skips_the_step_bit_for_bit_and_halves_the_scale() -> Result<()> {
    for fused in [false, true] {
        for bad in [f32::INFINITY, f32::NAN] {
            let w = param(&[1.0, -2.0, 0.5]);
            let mut opt = Adam::new(vec![w.clone()], AdamConfig::adam().lr(0.1).fused(fused))?;
            let mut scaler = GradScaler::new(GradScalerConfig::default())?;
            iteration(&mut scaler, &mut opt, &w, None)?; // one clean step so state exists
            let before = snapshot(std::slice::from_ref(&w), &opt);
            let scale = scaler.get_scale()?;
            iteration(&mut scaler, &mut opt, &w, Some(bad))?;
            assert_eq!(
                snapshot(std::slice::from_ref(&w), &opt),
                before,
                "fused={fused} {bad}: nothing changes"
            );
            assert_eq!(
                scaler.get_scale()?,
                scale / 2.0,
                "fused={fused}: scale halves"
            );
            iteration(&mut scaler, &mut opt, &w, None)?;
            assert_ne!(
                snapshot(std::slice::from_ref(&w), &opt),
                before,
                "fused={fused}: training resumes"
            );
            assert_eq!(
                opt.state_dict().params[0].step,
                2,
                "fused={fused}: the skipped step is not counted"
            );
        }
    }
    Ok(())
}

#[test]
fn fused_and_unfused_adam_agree() -> Result<()> {
    for (cfg, name) in [
        (AdamConfig::adam(), "adam"),
        (AdamConfig::adamw().amsgrad(true), "adamw+amsgrad"),
    ] {
        let (a, b) = (param(&[0.3, -1.2, 2.0]), param(&[0.3, -1.2, 2.0]));
        let mut plain = Adam::new(vec![a.clone()], cfg.lr(0.05))?;
        let mut fused = Adam::new(vec![b.clone()], cfg.lr(0.05).fused(true))?;
        let (mut s1, mut s2) = (
            GradScaler::new(Default::default())?,
            GradScaler::new(Default::default())?,
        );
        for _ in 0..4 {
            iteration(&mut s1, &mut plain, &a, None)?;
            iteration(&mut s2, &mut fused, &b, None)?;
        }
        for (x, y) in a.to_vec::<f32>()?.iter().zip(b.to_vec::<f32>()?) {
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                "{name}: {x} vs {y}"
            );
        }
        assert_eq!(
            b.grad().expect("grad").to_vec::<f32>()?,
            vec![0.5, -1.0, 2.0],
            "{name}: the fused step leaves unscaled gradients"
        );
    }
    Ok(())
}

#[test]
fn misuse_errors_have_pytorchs_messages() -> Result<()> {
    let w = param(&[1.0, 2.0, 3.0]);
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.1))?;
    let mut s = GradScaler::new(GradScalerConfig::default())?;
    let err = |r: Result<()>| r.expect_err("misuse").to_string();
    assert!(err(s.update(None)).contains("_scale is None"));
    s.scale(&w.sum_all()?)?.backward()?;
    s.unscale_(&mut opt)?;
    assert!(err(s.unscale_(&mut opt))
        .contains("unscale_() has already been called on this optimizer since the last update()"));
    s.step(&mut opt)?;
    assert!(err(s.unscale_(&mut opt)).contains("unscale_() is being called after step()"));
    assert!(
        err(s.step(&mut opt)).contains("step() has already been called since the last update()")
    );
    s.update(None)?;
    opt.zero_grad();
    assert!(err(s.step(&mut opt)).contains("No inf checks were recorded for this optimizer"));
    let mut fresh = GradScaler::new(GradScalerConfig::default())?;
    fresh.scale(&w.sum_all()?)?;
    assert!(err(fresh.update(None)).contains("No inf checks were recorded prior to update"));
    // fp16 gradients are rejected by unscale_.
    let h = Tensor::ones([2], DType::F16, Device::Cpu)?.requires_grad_(true)?;
    let mut hopt = Sgd::new(vec![h.clone()], SgdConfig::new(0.1))?;
    fresh.scale(&h.sum_all()?)?.backward()?;
    assert!(err(fresh.unscale_(&mut hopt)).contains("Attempting to unscale FP16 gradients"));
    Ok(())
}

#[test]
fn state_dict_round_trip_continues_the_same_trajectory() -> Result<()> {
    let c = GradScalerConfig {
        growth_interval: 2,
        hysteresis: 2,
        ..Default::default()
    };
    let w = param(&[1.0, 2.0, 3.0]);
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.0))?;
    let mut a = GradScaler::new(c)?;
    for p in [None, Some(f32::NAN), None, None, Some(f32::INFINITY)] {
        iteration(&mut a, &mut opt, &w, p)?;
    }
    let sd = a.state_dict()?;
    let keys: Vec<&str> = sd.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "_growth_tracker",
            "_hysteresis_tracker",
            "backoff_factor",
            "growth_factor",
            "growth_interval",
            "scale"
        ]
    );
    let mut b = GradScaler::new(c)?;
    b.load_state_dict(&sd)?;
    for p in [
        Some(f32::INFINITY),
        None,
        None,
        Some(f32::NAN),
        None,
        None,
        None,
    ] {
        iteration(&mut a, &mut opt, &w, p)?;
        iteration(&mut b, &mut opt, &w, p)?;
        assert_eq!(
            (
                a.get_scale()?,
                a.get_growth_tracker()?,
                a.get_hysteresis_tracker()?
            ),
            (
                b.get_scale()?,
                b.get_growth_tracker()?,
                b.get_hysteresis_tracker()?
            )
        );
    }
    let plain = GradScaler::new(GradScalerConfig::default())?.state_dict()?;
    assert_eq!(plain.len(), 5, "PyTorch's five keys");
    assert!(b
        .load_state_dict(&Default::default())
        .expect_err("empty")
        .to_string()
        .contains("state dict is empty"));
    let mut off = GradScaler::new(GradScalerConfig {
        enabled: false,
        ..Default::default()
    })?;
    assert!(off.state_dict()?.is_empty());
    let loss = w.sum_all()?;
    assert_eq!(
        off.scale(&loss)?.id(),
        loss.id(),
        "disabled: scale is a pass-through"
    );
    assert_eq!(off.get_scale()?, 1.0);
    Ok(())
}

/// y = x·w with tiny targets: the loss gradient reaching the fp16 matmul output is ~1e-9,
/// below fp16's smallest subnormal, so without scaling every gradient is exactly 0.
fn underflow_run(use_scaler: bool) -> Result<(Vec<f32>, f64, f64)> {
    let w = Tensor::from_vec(vec![0.5f32; 4], [4, 1], Device::Cpu)?.requires_grad_(true)?;
    let x = Tensor::uniform([16, 4], -1.0, 1.0, DType::F32, Device::Cpu)?;
    let target = x.matmul(&Tensor::from_vec(
        vec![1.0f32, -1.0, 2.0, 0.0],
        [4, 1],
        Device::Cpu,
    )?)?;
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(2e8))?;
    let mut scaler = GradScaler::new(GradScalerConfig {
        enabled: use_scaler,
        ..Default::default()
    })?;
    let loss_at =
        |w: &Tensor| -> Result<f64> { x.matmul(w)?.sub(&target)?.square()?.mean_all()?.item() };
    let first = loss_at(&w)?;
    for _ in 0..30 {
        opt.zero_grad();
        let loss = {
            let _ac = hemi::amp::autocast(DType::F16)?;
            x.matmul(&w)?
                .mse_loss(&target, hemi::Reduction::Mean)?
                .mul_scalar(1e-9)?
        };
        scaler.scale(&loss)?.backward()?;
        scaler.step(&mut opt)?;
        scaler.update(None)?;
    }
    Ok((w.to_vec::<f32>()?, first, loss_at(&w)?))
}

#[test]
fn the_scaler_rescues_gradients_that_underflow_in_fp16() -> Result<()> {
    hemi::manual_seed(4);
    let (w_plain, first, last_plain) = underflow_run(false)?;
    assert_eq!(
        w_plain,
        vec![0.5; 4],
        "without scaling every fp16 gradient flushed to zero"
    );
    assert_eq!(first, last_plain);
    hemi::manual_seed(4);
    let (_, first, last_scaled) = underflow_run(true)?;
    assert!(
        last_scaled < 0.1 * first,
        "with the scaler it learns: {first} -> {last_scaled}"
    );
    Ok(())
}

#[test]
fn clipping_after_unscale_sees_true_gradients() -> Result<()> {
    let w = param(&[3.0, 4.0, 0.0]);
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.0))?;
    let mut s = GradScaler::new(GradScalerConfig {
        init_scale: 1024.0,
        ..Default::default()
    })?;
    // grad of 0.5·|w|² is w = (3, 4, 0): norm 5.
    s.scale(&w.square()?.sum_all()?.mul_scalar(0.5)?)?
        .backward()?;
    s.unscale_(&mut opt)?;
    let norm = clip_grad_norm_(std::slice::from_ref(&w), 1.0, 2.0)?;
    assert!(
        (norm.item()? - 5.0).abs() < 1e-5,
        "norm of the unscaled gradient"
    );
    let g = w.grad().expect("grad").to_vec::<f32>()?;
    assert!(
        (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
        "clipped to norm 1: {g:?}"
    );
    s.step(&mut opt)?;
    s.update(None)?;
    Ok(())
}

#[test]
fn gradient_accumulation_matches_one_big_batch() -> Result<()> {
    // Pattern: scale(loss / accum).backward() per micro-batch, then one step and one update.
    let data: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    let x = Tensor::from_vec(data, [4, 2], Device::Cpu)?;
    let run = |micro: usize| -> Result<Vec<f32>> {
        let w = param(&[0.5, -0.5]);
        let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.1))?;
        let mut s = GradScaler::new(GradScalerConfig::default())?;
        let rows = 4 / micro;
        for m in 0..micro {
            let xb = x.narrow(0, m * rows, rows)?;
            let loss = xb
                .matmul(&w.reshape([2, 1])?)?
                .square()?
                .mean_all()?
                .div_scalar(micro as f64)?;
            s.scale(&loss)?.backward()?;
        }
        s.step(&mut opt)?;
        s.update(None)?;
        w.to_vec::<f32>()
    };
    let (one, two) = (run(1)?, run(2)?);
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() < 1e-6, "{one:?} vs {two:?}");
    }
    Ok(())
}

#[test]
fn report_and_overflow_line_name_the_parameter() -> Result<()> {
    let a = param(&[1.0, 1.0, 1.0, 1.0]);
    let b = param(&[1.0, 1.0, 1.0]);
    let mut opt = Sgd::new(vec![a.clone(), b.clone()], SgdConfig::new(0.1))?;
    let mut s = GradScaler::new(GradScalerConfig::default())?;
    let named = vec![
        ("layer3.1.conv2.weight".to_string(), b.clone()),
        ("fc.weight".to_string(), a.clone()),
    ];
    s.set_param_names(named.clone());
    s.scale(&a.sum_all()?.add(&b.sum_all()?)?)?.backward()?;
    a.set_grad(Some(Tensor::from_vec(
        vec![1e-13f32, 1.0, 0.0, -1e-3],
        [4],
        Device::Cpu,
    )?))?;
    b.set_grad(Some(Tensor::from_vec(
        vec![2.0f32, f32::INFINITY, 0.5],
        [3],
        Device::Cpu,
    )?))?;
    let r = s.report(&named, false)?;
    assert_eq!(r.scale, 65536.0);
    let (rb, ra) = (&r.params[0], &r.params[1]);
    assert_eq!((rb.non_finite, rb.max_abs), (1, 2.0));
    assert_eq!((ra.non_finite, ra.numel), (0, 4));
    assert!(
        (ra.fp16_underflow_fraction - 1.0 / 3.0).abs() < 1e-12,
        "1e-13·65536 flushes in fp16, 1 and 1e-3 do not"
    );
    s.step(&mut opt)?;
    s.update(None)?;
    let ev = s.last_overflow().expect("an overflow was logged");
    assert_eq!(
        ev.to_string(),
        "overflow in layer3.1.conv2.weight.grad: scale 65536 -> 32768"
    );
    Ok(())
}

#[test]
fn bf16_autocast_trains_without_a_scaler() -> Result<()> {
    hemi::manual_seed(8);
    let w = Tensor::uniform([4, 3], -0.5, 0.5, DType::F32, Device::Cpu)?.requires_grad_(true)?;
    let x = Tensor::randn([32, 4], DType::F32, Device::Cpu)?;
    let teacher = Tensor::randn([4, 3], DType::F32, Device::Cpu)?;
    let scores = x.matmul(&teacher)?.to_vec::<f32>()?;
    let labels: Vec<i64> = scores
        .chunks(3)
        .map(|r| (0..3).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0) as i64)
        .collect();
    let y = Tensor::from_vec(labels, [32], Device::Cpu)?;
    let mut opt = Adam::new(vec![w.clone()], AdamConfig::adam().lr(0.05))?;
    let mut losses = vec![];
    for _ in 0..40 {
        opt.zero_grad();
        let loss = {
            let _ac = hemi::amp::autocast(DType::BF16)?;
            x.matmul(&w)?.cross_entropy(&y, Default::default())?
        };
        losses.push(loss.item()?);
        loss.backward()?;
        opt.step()?;
    }
    assert!(
        losses[39] < losses[0] * 0.5,
        "{} -> {}",
        losses[0],
        losses[39]
    );
    Ok(())
}
