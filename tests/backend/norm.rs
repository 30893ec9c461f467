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
            assert!(fused[0].contains(&0.0) && fused[0].iter().any(|&v| v > 0.0));
        }
    }
    Ok(())
});

backend_test!(
    channels_last_batch_norm_matches_f64_with_split_rows,
    |dev| {
        // 40 channels (two blocks of 32, the second ragged) over 3·9·7 = 189 rows (two row
        // splits on the CUDA side's channels-last kernels).
        let mut g = Generator::new(17);
        let (n, c, h, w) = (3, 40, 9, 7);
        let x = Tensor::uniform_with(&mut g, [n, c, h, w], -2.0, 3.0, DType::F32, dev)?
            .to_memory_format(MemoryFormat::ChannelsLast)?
            .detach()
            .requires_grad_(true)?;
        let wt =
            Tensor::uniform_with(&mut g, [c], 0.5, 1.5, DType::F32, dev)?.requires_grad_(true)?;
        let b =
            Tensor::uniform_with(&mut g, [c], -0.5, 0.5, DType::F32, dev)?.requires_grad_(true)?;
        let y = x.batch_norm(None, None, Some(&wt), Some(&b), BatchNormParams::default())?;
        assert!(y.is_contiguous_for(MemoryFormat::ChannelsLast));
        let dy = Tensor::uniform_with(&mut g, [n, c, h, w], -1.0, 1.0, DType::F32, dev)?;
        y.mul(&dy)?.sum_all()?.backward()?;
        let (xv, wv, bv, gv) = (
            x.to_f64_vec()?,
            wt.to_f64_vec()?,
            b.to_f64_vec()?,
            dy.to_f64_vec()?,
        );
        let (m, hw) = ((n * h * w) as f64, h * w);
        let at = |i: usize, ch: usize, s: usize| (i * c + ch) * hw + s;
        let (mut want_y, mut want_dx) = (vec![0.0; xv.len()], vec![0.0; xv.len()]);
        let (mut want_dw, mut want_db) = (vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|i| (0..hw).map(move |s| at(i, ch, s)))
                .collect();
            let mean = idx.iter().map(|&i| xv[i]).sum::<f64>() / m;
            let var = idx.iter().map(|&i| (xv[i] - mean).powi(2)).sum::<f64>() / m;
            let is = 1.0 / (var + 1e-5).sqrt();
            let (sd, sdx) = idx.iter().fold((0.0, 0.0), |(a, b), &i| {
                (a + gv[i], b + gv[i] * (xv[i] - mean) * is)
            });
            want_dw[ch] = sdx;
            want_db[ch] = sd;
            for &i in &idx {
                let xhat = (xv[i] - mean) * is;
                want_y[i] = xhat * wv[ch] + bv[ch];
                want_dx[i] = wv[ch] * is / m * (m * gv[i] - sd - xhat * sdx);
            }
        }
        close(
            &y.to_f64_vec()?,
            &want_y,
            1e-5,
            "channels-last batch_norm output",
        );
        let gx = x.grad().expect("dx");
        assert!(
            gx.is_contiguous_for(MemoryFormat::ChannelsLast),
            "dx stays channels-last"
        );
        close(
            &gx.to_f64_vec()?,
            &want_dx,
            1e-4,
            "channels-last batch_norm dx",
        );
        close(
            &wt.grad().expect("dw").to_f64_vec()?,
            &want_dw,
            1e-5,
            "dweight",
        );
        close(
            &b.grad().expect("db").to_f64_vec()?,
            &want_db,
            1e-5,
            "dbias",
        );
        Ok(())
    }
);
