//! Softmax, log-softmax, cross-entropy and mse_loss against their formulas in f64, including
//! long rows and logits of any magnitude (README's cancellation-free bounds).

use super::support::*;
use hemi::*;
use proptest::prelude::*;

backend_test!(softmax_and_cross_entropy_match_formulas, |dev| {
    let mut g = Generator::new(12);
    let (n, c) = (7, 5);
    let (x, xv) = rand(&mut g, &[n, c], dev)?;
    let lse: Vec<f64> = (0..n)
        .map(|i| xv[i * c..][..c].iter().map(|v| v.exp()).sum::<f64>().ln())
        .collect();
    let logp: Vec<f64> = (0..n * c).map(|i| xv[i] - lse[i / c]).collect();
    close(&x.log_softmax(1)?.to_f64_vec()?, &logp, 1e-6, "log_softmax");
    close(
        &x.softmax(-1)?.to_f64_vec()?,
        &logp.iter().map(|v| v.exp()).collect::<Vec<_>>(),
        1e-6,
        "softmax",
    );
    let targets: Vec<i64> = vec![0, 4, -100, 2, 1, 3, -100];
    let t = Tensor::from_vec(targets.clone(), [n], dev)?;
    for eps in [0.0, 0.2] {
        let per: Vec<f64> = (0..n)
            .map(|i| {
                if targets[i] == -100 {
                    return 0.0;
                }
                let row = &logp[i * c..][..c];
                -(1.0 - eps) * row[targets[i] as usize] - eps / c as f64 * row.iter().sum::<f64>()
            })
            .collect();
        let spec = |reduction| CrossEntropySpec {
            reduction,
            label_smoothing: eps,
            ..Default::default()
        };
        let none = x.cross_entropy(&t, spec(Reduction::None))?;
        close(&none.to_f64_vec()?, &per, 1e-6, "ce none");
        let sum = x.cross_entropy(&t, spec(Reduction::Sum))?.item()?;
        close(&[sum], &[per.iter().sum()], 1e-6, "ce sum");
        let mean = x.cross_entropy(&t, spec(Reduction::Mean))?.item()?;
        close(
            &[mean],
            &[per.iter().sum::<f64>() / 5.0],
            1e-6,
            "ce mean over non-ignored",
        );
    }
    Ok(())
});

backend_test!(softmax_denominators_are_long_sums, |dev| {
    let mut gen = Generator::new(0x5eed_0012);

    for n in [7usize, 1000, 1 << 16] {
        // One logit 0, the rest with exp(x) below half an ulp of 1.
        let data: Vec<f32> = (0..2 * n)
            .map(|i| {
                if i % n == 0 {
                    0.0
                } else {
                    gen.uniform(-17.28, -16.69) as f32
                }
            })
            .collect();
        let (x, xs) = rounded(data, &[2, n], DType::F32)?;
        let x = x.to_device(dev)?;
        let p = x.softmax(1)?.to_f64_vec()?;
        let lp = x.log_softmax(1)?.to_f64_vec()?;
        for r in 0..2 {
            let row = &xs[r * n..][..n];
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = sum64(row.iter().map(|v| (v - m).exp())).ln();
            for (j, &v) in row.iter().enumerate() {
                let (ls64, i) = ((v - m) - lse, r * n + j);
                let k = (2.0 * clog2(n) + 6.0 + (v - m).abs()) * U;
                let bound = k * ls64.exp();
                assert!(
                    (p[i] - ls64.exp()).abs() <= bound,
                    "softmax[{r},{j}] of {n} on {dev}: {} vs {} (bound {bound:e})",
                    p[i],
                    ls64.exp()
                );
                let bound = k + U * ls64.abs();
                assert!(
                    (lp[i] - ls64).abs() <= bound,
                    "log_softmax[{r},{j}] of {n} on {dev}: {} vs {ls64} (bound {bound:e})",
                    lp[i]
                );
            }
        }
    }
    Ok(())
});

/// f64 cross-entropy of one row (from its rounded logits): (loss, softmax).
fn ce_row(row: &[f64], t: usize, eps: f64) -> (f64, Vec<f64>) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = sum64(row.iter().map(|v| (v - m).exp())).ln();
    let nll = lse - (row[t] - m);
    let smooth = lse - sum64(row.iter().map(|v| v - m)) / row.len() as f64;
    let p = row.iter().map(|v| ((v - m) - lse).exp()).collect();
    ((1.0 - eps) * nll + eps * smooth, p)
}

/// One cross-entropy case on `dev`: logits `magnitude + U(-spread, spread)` of `[n, c]`.
#[allow(clippy::too_many_arguments)]
fn check_cross_entropy(
    dev: Device,
    dt: DType,
    (n, c): (usize, usize),
    magnitude: f64,
    spread: f64,
    eps: f64,
    seed: u64,
) -> Result<()> {
    let mut gen = Generator::new(seed);
    let data = uniform(&mut gen, n * c, magnitude - spread, magnitude + spread);
    let (x, xs) = rounded(data, &[n, c], dt)?;
    let tv: Vec<i64> = (0..n)
        .map(|i| {
            if i % 5 == 3 {
                -100
            } else {
                gen.int(0, c as i64)
            }
        })
        .collect();
    let targets = Tensor::from_slice(&tv, [n], dev)?;
    let x = x.to_device(dev)?.requires_grad_(true)?;
    let spec = |reduction| CrossEntropySpec {
        label_smoothing: eps,
        reduction,
        ..Default::default()
    };
    let per = x
        .cross_entropy(&targets, spec(Reduction::None))?
        .to_f64_vec()?;
    let mean = x.cross_entropy(&targets, spec(Reduction::Mean))?;
    let sum = x
        .cross_entropy(&targets, spec(Reduction::Sum))?
        .to_f64_vec()?[0];
    mean.backward()?;
    let grad = x.grad().expect("logits grad").to_f64_vec()?;
    let mean = mean.to_f64_vec()?[0];
    let k = (2.0 * clog2(c) + 8.0) * U;
    let valid = tv.iter().filter(|&&t| t != -100).count();
    let (mut l64, mut err_sum) = (Vec::new(), 0.0);
    let case = format!("{n}x{c} {dt} logits ~{magnitude:e}±{spread} eps {eps} on {dev}");
    for i in 0..n {
        let row = &xs[i * c..][..c];
        let Ok(t) = usize::try_from(tv[i]) else {
            assert_eq!(per[i], 0.0, "{case}: ignored sample {i}");
            assert!(grad[i * c..][..c].iter().all(|&g| g == 0.0), "{case}");
            continue;
        };
        let (loss64, p) = ce_row(row, t, eps);
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let spread_m = row.iter().map(|v| (m - v).abs()).fold(0.0, f64::max);
        let bound = k * (1.0 + loss64.abs() + spread_m);
        err_sum += bound;
        let b = bound + u_out(dt) * loss64.abs();
        assert!(
            (per[i] - loss64).abs() <= b,
            "{case}: loss[{i}] {} vs {loss64} (error {:e} > {b:e})",
            per[i],
            (per[i] - loss64).abs()
        );
        l64.push(loss64);
        let w = 1.0 / valid as f64;
        for j in 0..c {
            let target = if j == t { 1.0 - eps } else { 0.0 } + eps / c as f64;
            let g64 = (p[j] - target) * w;
            // f32 exp underflows below 2^-126 (subnormal) and to 0 below 2^-149.
            let underflow = 2f64.powi(-126) * w;
            let bound = (k + U * spread_m) * (p[j] + target) * w
                + u_out(dt) * g64.abs()
                + tiny(dt)
                + underflow;
            assert!(
                (grad[i * c + j] - g64).abs() <= bound,
                "{case}: dlogits[{i},{j}] {} vs {g64} (bound {bound:e})",
                grad[i * c + j]
            );
        }
    }
    let s64 = sum64(l64.iter().copied());
    let abs = sum64(l64.iter().map(|v| v.abs()));
    let bound = err_sum + 2.0 * (clog2(valid) + 1.0) * U * abs + u_out(dt) * s64.abs();
    assert!((sum - s64).abs() <= bound, "{case}: sum {sum} vs {s64}");
    let m64 = s64 / valid as f64;
    let bound = bound / valid as f64 + u_out(dt) * m64.abs();
    assert!((mean - m64).abs() <= bound, "{case}: mean {mean} vs {m64}");
    Ok(())
}

backend_test!(cross_entropy_of_equal_large_logits_is_log_c, |dev| {
    // The reported case: four logits of 60000, target 2; ln 4 within a few f32 ulps.

    for dt in [DType::F32, DType::F16, DType::BF16] {
        let x = Tensor::full([1, 4], 60000.0, dt, dev)?;
        let t = Tensor::from_slice(&[2i64], [1], dev)?;
        let loss = x.cross_entropy(&t, CrossEntropySpec::default())?;
        let got = loss.to_f64_vec()?[0];
        let bound = 8.0 * U * 4f64.ln() + u_out(dt) * 4f64.ln();
        assert!(
            (got - 4f64.ln()).abs() <= bound,
            "{dt} on {dev}: {got} vs ln 4 = {}",
            4f64.ln()
        );
    }
    Ok(())
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Logit magnitudes from 1 to 1e5 (6e4 for f16), any class count, with and without
    /// label smoothing, some samples ignored: loss, mean, sum and the logit gradient.
    #[test]
    fn cross_entropy_is_accurate_at_any_logit_magnitude(
        exp10 in 0.0f64..5.0,
        spread in prop::sample::select(vec![0.0f64, 0.5, 4.0]),
        n in 1usize..9,
        c in prop::sample::select(vec![1usize, 2, 3, 4, 10, 37, 1000]),
        eps in prop::sample::select(vec![0.0f64, 0.1]),
        dt in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        seed in any::<u64>(),
    ) {
        let magnitude = 10f64.powf(exp10).min(if dt == DType::F16 { 6e4 } else { 1e5 });
        for dev in crate::common::devices() {
            check_cross_entropy(dev, dt, (n, c), magnitude, spread, eps, seed)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}

backend_test!(mse_loss_means_are_long_sums, |dev| {
    let mut gen = Generator::new(0x5eed_0015);
    let n = (1 << 20) + 11;
    let d: Vec<f32> = adversarial(&mut gen, n).iter().map(|v| v.sqrt()).collect();
    let (a, av) = rounded(d, &[n], DType::F32)?;
    let b = Tensor::zeros([n], DType::F32, Device::Cpu)?;
    let m64 = sum64(av.iter().map(|v| v * v)) / n as f64;

    let (a, b) = (a.to_device(dev)?, b.to_device(dev)?);
    let got = a.mse_loss(&b, Reduction::Mean)?.to_f64_vec()?[0];
    // Squares round once each (u), the mean as in README's reduction bound.
    let bound = (2.0 * clog2(n) + 2.0) * U * m64;
    assert!(
        (got - m64).abs() <= bound,
        "mse_loss on {dev}: {got} vs {m64}"
    );
    Ok(())
});
