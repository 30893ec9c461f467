//! Batch norm: training statistics, running-stat updates and eval mode against f64.

use super::support::{close, rand};
use hemi::*;

backend_test!(batch_norm_normalizes_and_updates_running_stats, |dev| {
    let mut g = Generator::new(13);
    let (n, c, h, w) = (3, 4, 5, 3);
    let (x, xv) = rand(&mut g, &[n, c, h, w], dev)?;
    let (wt, wv) = rand(&mut g, &[c], dev)?;
    let (b, bv) = rand(&mut g, &[c], dev)?;
    let rm = Tensor::zeros([c], DType::F32, dev)?;
    let rv = Tensor::ones([c], DType::F32, dev)?;
    let y = x.batch_norm(
        Some(&rm),
        Some(&rv),
        Some(&wt),
        Some(&b),
        BatchNormParams::default(),
    )?;
    let m = (n * h * w) as f64;
    let idx = |i: usize, ch: usize, s: usize| (i * c + ch) * h * w + s;
    let mut want = vec![0.0; xv.len()];
    let (mut want_rm, mut want_rv) = (vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| (0..h * w).map(move |s| (i, s)))
            .map(|(i, s)| xv[idx(i, ch, s)])
            .collect();
        let mean = vals.iter().sum::<f64>() / m;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        for i in 0..n {
            for s in 0..h * w {
                want[idx(i, ch, s)] =
                    (xv[idx(i, ch, s)] - mean) / (var + 1e-5).sqrt() * wv[ch] + bv[ch];
            }
        }
        want_rm[ch] = 0.1 * mean;
        want_rv[ch] = 0.9 + 0.1 * var * m / (m - 1.0);
    }
    close(&y.to_f64_vec()?, &want, 1e-5, "batch_norm output");
    close(&rm.to_f64_vec()?, &want_rm, 1e-6, "running_mean");
    close(&rv.to_f64_vec()?, &want_rv, 1e-6, "running_var (unbiased)");
    let eval = BatchNormParams {
        training: false,
        ..Default::default()
    };
    let ye = x.batch_norm(Some(&rm), Some(&rv), Some(&wt), Some(&b), eval)?;
    let want_e: Vec<f64> = (0..xv.len())
        .map(|i| {
            let ch = (i / (h * w)) % c;
            (xv[i] - want_rm[ch]) / (want_rv[ch] + 1e-5).sqrt() * wv[ch] + bv[ch]
        })
        .collect();
    close(&ye.to_f64_vec()?, &want_e, 1e-5, "batch_norm eval");
    Ok(())
});

/// Output and x, weight and bias gradients of BN(+ReLU) for x in `format`.
fn bn_run(
    x0: &Tensor,
    w0: &Tensor,
    b0: &Tensor,
    fused: bool,
    format: MemoryFormat,
) -> Result<[Vec<f64>; 4]> {
    let x = x0.to_memory_format(format)?.detach().requires_grad_(true)?;
    let (w, b) = (
        w0.detach().requires_grad_(true)?,
        b0.detach().requires_grad_(true)?,
    );
    let p = BatchNormParams::default();
    let y = if fused {
        x.batch_norm_relu(None, None, Some(&w), Some(&b), p)?
    } else {
        x.batch_norm(None, None, Some(&w), Some(&b), p)?.relu()?
    };
    // A gradient with both signs and a few exact zeros where the output is positive.
    let dy = y.detach().mul_scalar(-3.0)?.add_scalar(0.25)?;
    y.mul(&dy)?.sum_all()?.backward()?;
    let grad = |t: &Tensor| t.grad().expect("gradient").to_f64_vec();
    Ok([y.to_f64_vec()?, grad(&x)?, grad(&w)?, grad(&b)?])
}

backend_test!(fused_batch_norm_relu_equals_batch_norm_then_relu, |dev| {
    let mut g = Generator::new(29);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let x = Tensor::uniform_with(&mut g, [3, 5, 6, 7], -1.0, 1.0, dt, dev)?;
        let w = Tensor::uniform_with(&mut g, [5], 0.5, 1.5, DType::F32, dev)?;
        let b = Tensor::uniform_with(&mut g, [5], -0.5, 0.5, DType::F32, dev)?;
        for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
            let fused = bn_run(&x, &w, &b, true, format)?;
            let two = bn_run(&x, &w, &b, false, format)?;
            for (what, (f, t)) in ["y", "dx", "dweight", "dbias"]
                .iter()
                .zip(fused.iter().zip(&two))
            {
                assert_eq!(
                    f, t,
                    "{what} {dt} {format:?} on {dev}: fused differs from BN then ReLU"
                );
            }
            assert!(fused[0].iter().any(|&v| v == 0.0) && fused[0].iter().any(|&v| v > 0.0));
        }
    }
    Ok(())
});
