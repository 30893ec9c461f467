//! The conv family: `conv2d` forward, input gradient (dgrad) and weight gradient (wgrad) on
//! every device and dtype, element-wise against naive f64 loops at odd sizes (no dim a
//! multiple of any tile), within the GEMM bound with the implicit GEMM's K:
//! `|y − y64| ≤ K·2⁻²³·Σ|a||b| + u_out·|y64|` (+ the output format's smallest subnormal).

use crate::common::{check_gemm_bound, conv_ref};
use hemi::*;

/// `(c, h, w, k, kernel, stride, padding, dilation)` of each case.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: [Case; 7] = [
    (3, 11, 9, 5, 7, 2, 3, 1),  // a 7x7 stride-2 stem on 3 channels
    (5, 9, 7, 6, 3, 1, 1, 1),   // 3x3 "same"
    (4, 10, 11, 7, 3, 2, 1, 1), // 3x3 stride 2
    (6, 7, 5, 3, 1, 1, 0, 1),   // 1x1
    (3, 9, 9, 4, 3, 1, 2, 2),   // dilated
    (2, 6, 7, 3, 1, 2, 0, 1),   // 1x1 stride 2 (a downsample)
    (3, 33, 35, 4, 3, 1, 1, 1), // wgrad's K = 2·33·35 = 2310: split over K on the CUDA side
];

/// dx and dw of `Σ y ⊙ dy` in f64, with `Σ|terms|` per element.
#[allow(clippy::too_many_arguments)]
fn conv_grads_ref(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    (n, c, h, wd): (usize, usize, usize, usize),
    (k, kh, kw): (usize, usize, usize),
    (oh, ow): (usize, usize),
    (st, pad, dil): (usize, usize, usize),
) -> [Vec<f64>; 4] {
    let (mut dx, mut dxa) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dw, mut dwa) = (vec![0.0; w.len()], vec![0.0; w.len()]);
    for b in 0..n {
        for o in 0..k {
            for y in 0..oh {
                for xx in 0..ow {
                    let g = dy[((b * k + o) * oh + y) * ow + xx];
                    for ic in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (y * st + i * dil) as isize - pad as isize;
                                let ix = (xx * st + j * dil) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * c + ic) * h + iy as usize) * wd + ix as usize;
                                let wi = ((o * c + ic) * kh + i) * kw + j;
                                dx[xi] += g * w[wi];
                                dxa[xi] += (g * w[wi]).abs();
                                dw[wi] += g * x[xi];
                                dwa[wi] += (g * x[xi]).abs();
                            }
                        }
                    }
                }
            }
        }
    }
    [dx, dxa, dw, dwa]
}

backend_test!(conv2d_forward_and_gradients_within_the_gemm_bound, |dev| {
    let mut g = Generator::new(31);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for (case, &(c, h, wd, k, ks, st, pad, dil)) in CASES.iter().enumerate() {
            let n = 2;
            let x = Tensor::uniform_with(&mut g, [n, c, h, wd], -1.0, 1.0, dt, dev)?
                .requires_grad_(true)?;
            let w = Tensor::uniform_with(&mut g, [k, c, ks, ks], -1.0, 1.0, dt, dev)?
                .requires_grad_(true)?;
            let p = Conv2dParams {
                stride: (st, st),
                padding: (pad, pad),
                dilation: (dil, dil),
                groups: 1,
            };
            let y = x.conv2d(&w, None, p)?;
            assert_eq!(y.dtype(), dt);
            let (xv, wv) = (x.to_f64_vec()?, w.to_f64_vec()?);
            let (want, abs, oh, ow) = conv_ref(
                &xv,
                &wv,
                (n, c, h, wd),
                (k, ks, ks),
                (st, st),
                (pad, pad),
                (dil, dil),
                1,
            );
            assert_eq!(y.dims(), &[n, k, oh, ow]);
            let what = format!("{dt} case {case} on {dev}");
            check_gemm_bound(&y.to_f64_vec()?, &want, &abs, c * ks * ks, dt)
                .unwrap_or_else(|e| panic!("fprop {what}: {e}"));
            let dy = Tensor::uniform_with(&mut g, y.shape().clone(), -1.0, 1.0, dt, dev)?;
            y.mul(&dy)?.sum_all()?.backward()?;
            let [dx, dxa, dw, dwa] = conv_grads_ref(
                &xv,
                &wv,
                &dy.to_f64_vec()?,
                (n, c, h, wd),
                (k, ks, ks),
                (oh, ow),
                (st, pad, dil),
            );
            let gx = x.grad().expect("dx").to_f64_vec()?;
            check_gemm_bound(&gx, &dx, &dxa, k * ks * ks, dt)
                .unwrap_or_else(|e| panic!("dgrad {what}: {e}"));
            let gw = w.grad().expect("dw").to_f64_vec()?;
            check_gemm_bound(&gw, &dw, &dwa, n * oh * ow, dt)
                .unwrap_or_else(|e| panic!("wgrad {what}: {e}"));
        }
    }
    Ok(())
});

backend_test!(conv2d_rejects_bad_geometry_without_panicking, |dev| {
    let x = Tensor::ones([1, 2, 5, 5], DType::F32, dev)?;
    let w = Tensor::ones([3, 2, 7, 7], DType::F32, dev)?;
    let e = x
        .conv2d(&w, None, Conv2dParams::default())
        .expect_err("kernel larger than input");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let w3 = Tensor::ones([3, 3, 3, 3], DType::F32, dev)?;
    let e = x
        .conv2d(&w3, None, Conv2dParams::default())
        .expect_err("channel mismatch");
    assert!(!matches!(e, Error::Unsupported { .. }), "{e}");
    Ok(())
});
