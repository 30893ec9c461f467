//! Max, average and adaptive average pooling against window loops in f64.

use super::support::*;
use hemi::*;

backend_test!(pooling_matches_window_loops, |dev| {
    let mut g = Generator::new(14);
    let (n, c, h, w) = (2, 3, 7, 6);
    let (x, xv) = rand(&mut g, &[n, c, h, w], dev)?;
    // max pool k3 s2 p1 (ResNet stem)
    let y = x.max_pool2d(MaxPool2dParams::new(3, 2, 1))?;
    let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    assert_eq!(y.dims(), &[n, c, oh, ow]);
    let window = |p: usize, oy: usize, ox: usize, k: usize, s: usize, pad: usize| {
        let mut v = vec![];
        for i in 0..k {
            for j in 0..k {
                let (iy, ix) = (
                    (oy * s + i) as isize - pad as isize,
                    (ox * s + j) as isize - pad as isize,
                );
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    v.push(xv[p * h * w + iy as usize * w + ix as usize]);
                }
            }
        }
        v
    };
    let want: Vec<f64> = (0..n * c * oh * ow)
        .map(|i| {
            window(i / (oh * ow), (i / ow) % oh, i % ow, 3, 2, 1)
                .into_iter()
                .fold(f64::MIN, f64::max)
        })
        .collect();
    close(&y.to_f64_vec()?, &want, 0.0, "max_pool2d");
    // avg pool k3 s2 p1, padding counted in the divisor (9 per window)
    let a = x.avg_pool2d(AvgPool2dParams::new(3, 2, 1))?;
    let want: Vec<f64> = (0..n * c * oh * ow)
        .map(|i| {
            window(i / (oh * ow), (i / ow) % oh, i % ow, 3, 2, 1)
                .iter()
                .sum::<f64>()
                / 9.0
        })
        .collect();
    close(&a.to_f64_vec()?, &want, 1e-6, "avg_pool2d");
    // adaptive to 3x4: PyTorch windows floor(i*H/o)..ceil((i+1)*H/o)
    let ad = x.adaptive_avg_pool2d((3, 4))?;
    let mut want = vec![];
    for p in 0..n * c {
        for oy in 0..3 {
            for ox in 0..4 {
                let (y0, y1) = (oy * h / 3, ((oy + 1) * h).div_ceil(3));
                let (x0, x1) = (ox * w / 4, ((ox + 1) * w).div_ceil(4));
                let vals: Vec<f64> = (y0..y1)
                    .flat_map(|yy| (x0..x1).map(move |xx| (yy, xx)))
                    .map(|(yy, xx)| xv[p * h * w + yy * w + xx])
                    .collect();
                want.push(vals.iter().sum::<f64>() / vals.len() as f64);
            }
        }
    }
    close(&ad.to_f64_vec()?, &want, 1e-6, "adaptive_avg_pool2d");
    Ok(())
});

#[test]
fn average_pooling_sums_large_windows_pairwise() -> Result<()> {
    // No CUDA pooling kernels yet: the CPU backend only (the CUDA issue adds them).
    let mut gen = Generator::new(0x5eed_0013);
    let (h, w) = (1024, 1031);
    let (x, xs) = rounded(adversarial(&mut gen, h * w), &[1, 1, h, w], DType::F32)?;
    let got = x.adaptive_avg_pool2d((1, 1))?.to_f64_vec()?[0];
    let m64 = sum64(xs.iter().copied()) / (h * w) as f64;
    let bound = (2.0 * clog2(h * w) + 1.0) * U * sum64(xs.iter().map(|v| v.abs())) / (h * w) as f64;
    assert!(
        (got - m64).abs() <= bound,
        "adaptive_avg_pool2d {got} vs {m64}"
    );
    Ok(())
}

backend_test!(
    max_pool_ties_and_nans_pick_the_argmax_pytorch_picks,
    |dev| {
        // PyTorch's `val > maxval || isnan(val)`: a tie keeps the first maximum in window order,
        // and every NaN replaces the best, so the window's last NaN is the argmax.
        let nan = f32::NAN;
        #[rustfmt::skip]
    let v = [
        1.0, nan, 3.0, 3.0,
        nan, 2.0, 5.0, 5.0,
        0.0, 1.0, 5.0, 4.0,
    ];
        for dt in [DType::F32, DType::BF16] {
            let x = Tensor::from_slice(&v, [1, 1, 3, 4], dev)?
                .to_dtype(dt)?
                .requires_grad_(true)?;
            let y = x.max_pool2d(MaxPool2dParams::new(2, 1, 0))?;
            let got = y.to_dtype(DType::F32)?.to_vec::<f32>()?;
            let want = [nan, nan, 5.0, nan, 5.0, 5.0];
            for (g, w) in got.iter().zip(want) {
                assert!(
                    g == &w || (g.is_nan() && w.is_nan()),
                    "{dt} on {dev}: {got:?}"
                );
            }
            y.sum_all()?.backward()?;
            let dx = x
                .grad()
                .expect("dx")
                .to_dtype(DType::F32)?
                .to_vec::<f32>()?;
            // Windows' argmaxes: 4 (last NaN), 1, 6 (first 5), 4, 6, 6.
            let mut want = [0.0f32; 12];
            for i in [4, 1, 6, 4, 6, 6] {
                want[i] += 1.0;
            }
            assert_eq!(dx, want, "{dt} on {dev}");
        }
        Ok(())
    }
);

backend_test!(
    max_pool_with_dilation_and_uneven_windows_matches_window_loop,
    |dev| {
        // Asymmetric kernel, stride, padding and dilation at odd sizes; values on a coarse grid
        // so windows hold ties: the output and the argmax (through the gradient) must be the
        // window loop's, the first maximum in window order (rows, then columns).
        let mut g = Generator::new(0x5eed_0021);
        let (n, c, h, w) = (2, 3, 11, 13);
        let (_, xv) = rand(&mut g, &[n, c, h, w], dev)?;
        let vals: Vec<f32> = xv.iter().map(|v| (v * 3.0).round() as f32).collect();
        let x = Tensor::from_slice(&vals, [n, c, h, w], dev)?.requires_grad_(true)?;
        let p = MaxPool2dParams {
            kernel: (3, 2),
            stride: (2, 3),
            padding: (1, 1),
            dilation: (2, 1),
        };
        let y = x.max_pool2d(p)?;
        let (oh, ow) = ((h + 2 - 2 * 2 - 1) / 2 + 1, (w + 2 - 1 - 1) / 3 + 1);
        assert_eq!(y.dims(), &[n, c, oh, ow]);
        let mut want = vec![];
        let mut dx = vec![0.0f32; n * c * h * w];
        for pl in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best: Option<(f32, usize)> = None;
                    for i in 0..3 {
                        for j in 0..2 {
                            let iy = (oy * 2 + i * 2) as isize - 1;
                            let ix = (ox * 3 + j) as isize - 1;
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                continue;
                            }
                            let at = pl * h * w + iy as usize * w + ix as usize;
                            if best.is_none_or(|(b, _)| vals[at] > b) {
                                best = Some((vals[at], at));
                            }
                        }
                    }
                    let (b, at) = best.expect("every window has a tap");
                    want.push(f64::from(b));
                    dx[at] += 1.0;
                }
            }
        }
        close(&y.to_f64_vec()?, &want, 0.0, "dilated max_pool2d");
        y.sum_all()?.backward()?;
        let got = x.grad().expect("dx").to_vec::<f32>()?;
        assert_eq!(got, dx, "argmax routing on {dev}");
        Ok(())
    }
);
