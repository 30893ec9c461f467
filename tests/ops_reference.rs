//! Forward values of every op family against naive f64 references, on every device, at odd
//! sizes with fresh random data. (matmul/conv2d bounds are in `properties.rs`.)

mod common;

use common::{devices, supports};
use hemi::{
    AvgPool2dParams, BatchNormParams, CrossEntropySpec, DType, Device, Generator, MaxPool2dParams,
    Reduction, Tensor,
};

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn rand(g: &mut Generator, dims: &[usize], dev: Device) -> (Tensor, Vec<f64>) {
    let t = Tensor::uniform_with(g, dims.to_vec(), -2.0, 2.0, DType::F32, dev).expect("rand");
    let v = t.to_f64_vec().expect("values");
    (t, v)
}

#[test]
fn elementwise_and_reductions() {
    for dev in devices() {
        let mut g = Generator::new(11);
        let (x, xv) = rand(&mut g, &[3, 5, 7], dev);
        let (y, yv) = rand(&mut g, &[5, 1], dev);
        let ops: [(&str, Tensor, Vec<f64>); 4] = [
            (
                "exp",
                x.exp().expect("exp"),
                xv.iter().map(|v| v.exp()).collect(),
            ),
            (
                "relu",
                x.relu().expect("relu"),
                xv.iter().map(|v| v.max(0.0)).collect(),
            ),
            (
                "affine",
                x.affine(2.0, -1.0).expect("affine"),
                xv.iter().map(|v| 2.0 * v - 1.0).collect(),
            ),
            (
                "mul broadcast",
                x.mul(&y).expect("mul"),
                (0..xv.len()).map(|i| xv[i] * yv[(i / 7) % 5]).collect(),
            ),
        ];
        for (name, t, want) in ops {
            close(&t.to_f64_vec().expect("v"), &want, 1e-6, name);
        }
        let s = x.sum_dims(&[0, 2], false).expect("sum");
        let want: Vec<f64> = (0..5)
            .map(|j| {
                (0..3)
                    .flat_map(|i| (0..7).map(move |k| (i, k)))
                    .map(|(i, k)| xv[(i * 5 + j) * 7 + k])
                    .sum()
            })
            .collect();
        close(&s.to_f64_vec().expect("sum"), &want, 1e-5, "sum over 0,2");
        let m = x.max(1, false).expect("max");
        let want: Vec<f64> = (0..21)
            .map(|r| {
                (0..5)
                    .map(|j| xv[(r / 7 * 5 + j) * 7 + r % 7])
                    .fold(f64::MIN, f64::max)
            })
            .collect();
        close(&m.to_f64_vec().expect("max"), &want, 0.0, "max over 1");
        let mean = x.mean_all().expect("mean");
        close(
            &[mean.item().expect("item")],
            &[xv.iter().sum::<f64>() / xv.len() as f64],
            1e-6,
            "mean_all",
        );
    }
}

#[test]
fn softmax_and_cross_entropy_match_formulas() {
    for dev in devices() {
        let mut g = Generator::new(12);
        let (n, c) = (7, 5);
        let (x, xv) = rand(&mut g, &[n, c], dev);
        let lse: Vec<f64> = (0..n)
            .map(|i| xv[i * c..][..c].iter().map(|v| v.exp()).sum::<f64>().ln())
            .collect();
        let logp: Vec<f64> = (0..n * c).map(|i| xv[i] - lse[i / c]).collect();
        close(
            &x.log_softmax(1).expect("ls").to_f64_vec().expect("v"),
            &logp,
            1e-6,
            "log_softmax",
        );
        close(
            &x.softmax(-1).expect("sm").to_f64_vec().expect("v"),
            &logp.iter().map(|v| v.exp()).collect::<Vec<_>>(),
            1e-6,
            "softmax",
        );
        let targets: Vec<i64> = vec![0, 4, -100, 2, 1, 3, -100];
        let t = Tensor::from_vec(targets.clone(), [n], dev).expect("t");
        for eps in [0.0, 0.2] {
            let per: Vec<f64> = (0..n)
                .map(|i| {
                    if targets[i] == -100 {
                        return 0.0;
                    }
                    let row = &logp[i * c..][..c];
                    -(1.0 - eps) * row[targets[i] as usize]
                        - eps / c as f64 * row.iter().sum::<f64>()
                })
                .collect();
            let spec = |reduction| CrossEntropySpec {
                reduction,
                label_smoothing: eps,
                ..Default::default()
            };
            let none = x.cross_entropy(&t, spec(Reduction::None)).expect("none");
            close(&none.to_f64_vec().expect("v"), &per, 1e-6, "ce none");
            let sum = x
                .cross_entropy(&t, spec(Reduction::Sum))
                .expect("sum")
                .item()
                .expect("item");
            close(&[sum], &[per.iter().sum()], 1e-6, "ce sum");
            let mean = x
                .cross_entropy(&t, spec(Reduction::Mean))
                .expect("mean")
                .item()
                .expect("item");
            close(
                &[mean],
                &[per.iter().sum::<f64>() / 5.0],
                1e-6,
                "ce mean over non-ignored",
            );
        }
    }
}

#[test]
fn batch_norm_normalizes_and_updates_running_stats() {
    for dev in devices().into_iter().filter(|&d| {
        supports(
            d,
            "batch_norm",
            "batch_norm_normalizes_and_updates_running_stats",
        )
    }) {
        let mut g = Generator::new(13);
        let (n, c, h, w) = (3, 4, 5, 3);
        let (x, xv) = rand(&mut g, &[n, c, h, w], dev);
        let (wt, wv) = rand(&mut g, &[c], dev);
        let (b, bv) = rand(&mut g, &[c], dev);
        let rm = Tensor::zeros([c], DType::F32, dev).expect("rm");
        let rv = Tensor::ones([c], DType::F32, dev).expect("rv");
        let y = x
            .batch_norm(
                Some(&rm),
                Some(&rv),
                Some(&wt),
                Some(&b),
                BatchNormParams::default(),
            )
            .expect("bn");
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
        close(
            &y.to_f64_vec().expect("y"),
            &want,
            1e-5,
            "batch_norm output",
        );
        close(
            &rm.to_f64_vec().expect("rm"),
            &want_rm,
            1e-6,
            "running_mean",
        );
        close(
            &rv.to_f64_vec().expect("rv"),
            &want_rv,
            1e-6,
            "running_var (unbiased)",
        );
        let eval = BatchNormParams {
            training: false,
            ..Default::default()
        };
        let ye = x
            .batch_norm(Some(&rm), Some(&rv), Some(&wt), Some(&b), eval)
            .expect("eval");
        let want_e: Vec<f64> = (0..xv.len())
            .map(|i| {
                let ch = (i / (h * w)) % c;
                (xv[i] - want_rm[ch]) / (want_rv[ch] + 1e-5).sqrt() * wv[ch] + bv[ch]
            })
            .collect();
        close(
            &ye.to_f64_vec().expect("ye"),
            &want_e,
            1e-5,
            "batch_norm eval",
        );
    }
}

#[test]
fn pooling_matches_window_loops() {
    for dev in devices()
        .into_iter()
        .filter(|&d| supports(d, "pooling", "pooling_matches_window_loops"))
    {
        let mut g = Generator::new(14);
        let (n, c, h, w) = (2, 3, 7, 6);
        let (x, xv) = rand(&mut g, &[n, c, h, w], dev);
        // max pool k3 s2 p1 (ResNet stem)
        let y = x
            .max_pool2d(MaxPool2dParams::new(3, 2, 1))
            .expect("maxpool");
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
        close(&y.to_f64_vec().expect("y"), &want, 0.0, "max_pool2d");
        // avg pool k3 s2 p1, padding counted in the divisor (9 per window)
        let a = x
            .avg_pool2d(AvgPool2dParams::new(3, 2, 1))
            .expect("avgpool");
        let want: Vec<f64> = (0..n * c * oh * ow)
            .map(|i| {
                window(i / (oh * ow), (i / ow) % oh, i % ow, 3, 2, 1)
                    .iter()
                    .sum::<f64>()
                    / 9.0
            })
            .collect();
        close(&a.to_f64_vec().expect("a"), &want, 1e-6, "avg_pool2d");
        // adaptive to 3x4: PyTorch windows floor(i*H/o)..ceil((i+1)*H/o)
        let ad = x.adaptive_avg_pool2d((3, 4)).expect("adaptive");
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
        close(
            &ad.to_f64_vec().expect("ad"),
            &want,
            1e-6,
            "adaptive_avg_pool2d",
        );
    }
}

#[test]
fn half_precision_ops_round_once_from_f32() {
    for dev in devices() {
        let mut g = Generator::new(15);
        for dt in [DType::F16, DType::BF16] {
            let x = Tensor::uniform_with(&mut g, [4, 9], -3.0, 3.0, dt, dev).expect("x");
            let wide = x.to_dtype(DType::F32).expect("wide");
            for (name, lo, hi) in [
                ("exp", x.exp().expect("e"), wide.exp().expect("e")),
                (
                    "softmax",
                    x.softmax(1).expect("s"),
                    wide.softmax(1).expect("s"),
                ),
                (
                    "sum",
                    x.sum(1, false).expect("s"),
                    wide.sum(1, false).expect("s"),
                ),
            ] {
                assert_eq!(lo.dtype(), dt, "{name} keeps {dt}");
                let rounded = hi.to_dtype(dt).expect("round");
                assert_eq!(
                    lo.to_f64_vec().expect("lo"),
                    rounded.to_f64_vec().expect("r"),
                    "{name} in {dt} = f32 result rounded once"
                );
            }
        }
    }
}
