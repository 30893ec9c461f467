//! Gradcheck by central differences in F64 for every differentiable op, on random shapes.
//!
//! For an op `f` and inputs `x`, the scalar `L(x) = Σ f(x) ⊙ R` with a fixed random `R`
//! makes every output element matter. Autograd's `∂L/∂x` must match
//! `(L(x + h·e_i) − L(x − h·e_i)) / 2h` for every input element `i`.
//!
//! Once the F64 CPU gradients are proven that way, the same op runs in F32 on every other
//! device present (the emulated CUDA backend, each GPU) and its gradients must match the
//! proven ones within f32 accuracy; a device lacking the op (`Err(Unsupported)`) is skipped
//! by name, printed.

mod common;

use hemi::{
    AvgPool2dParams, BatchNormParams, Conv2dParams, CrossEntropySpec, DType, Device, Generator,
    MaxPool2dParams, Reduction, Result, Tensor,
};

const H: f64 = 1e-6;

fn leaf(v: Vec<f64>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims.to_vec(), Device::Cpu)
        .and_then(|t| t.requires_grad_(true))
        .expect("leaf")
}

/// Compares analytic and numeric gradients of `f` at `inputs` (all F64).
fn gradcheck<F>(name: &str, gen: &mut Generator, inputs: Vec<(Vec<f64>, Vec<usize>)>, f: F)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let leaves: Vec<Tensor> = inputs.iter().map(|(v, d)| leaf(v.clone(), d)).collect();
    let out = f(&leaves).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let r = Tensor::uniform_with(gen, out.shape().clone(), -1.0, 1.0, DType::F64, Device::Cpu)
        .expect("R");
    let loss = |t: &Tensor| -> f64 {
        t.mul(&r)
            .and_then(|p| p.sum_all())
            .and_then(|s| s.item())
            .expect("loss")
    };
    out.mul(&r)
        .and_then(|p| p.sum_all())
        .and_then(|l| l.backward())
        .unwrap_or_else(|e| panic!("{name}: backward: {e}"));
    let mut proven = Vec::with_capacity(inputs.len());
    for (which, (vals, dims)) in inputs.iter().enumerate() {
        let analytic = leaves[which]
            .grad()
            .unwrap_or_else(|| panic!("{name}: input {which} got no gradient"))
            .to_vec::<f64>()
            .expect("grad");
        assert_eq!(
            analytic.len(),
            vals.len(),
            "{name}: gradient size of input {which}"
        );
        for i in 0..vals.len() {
            let eval = |delta: f64| {
                let _g = hemi::no_grad();
                let xs: Vec<Tensor> = inputs
                    .iter()
                    .enumerate()
                    .map(|(j, (v, d))| {
                        let mut v = v.clone();
                        if j == which {
                            v[i] += delta;
                        }
                        Tensor::from_vec(v, d.clone(), Device::Cpu).expect("input")
                    })
                    .collect();
                loss(&f(&xs).expect("forward"))
            };
            let numeric = (eval(H) - eval(-H)) / (2.0 * H);
            let tol = 1e-5 + 1e-4 * numeric.abs().max(analytic[i].abs());
            assert!(
                (numeric - analytic[i]).abs() <= tol,
                "{name}: d/d input{which}[{i}] (dims {dims:?}): analytic {} vs numeric {numeric}",
                analytic[i]
            );
        }
        proven.push(analytic);
    }
    let r = r.to_vec::<f64>().expect("R values");
    for dev in common::devices().into_iter().filter(|d| *d != Device::Cpu) {
        device_gradients(name, dev, &inputs, &f, &r, &proven);
    }
}

/// Runs `f` in F32 on `dev` and compares its gradients of `Σ f(x) ⊙ R` with the proven F64
/// ones: `|g − g64| ≤ 2e-4·(1 + max|g64|)` per input (inputs and R rounded to f32 move the
/// result by a few f32 ulps of the largest terms; the device's sums add O(log n) more).
fn device_gradients<F>(
    name: &str,
    dev: Device,
    inputs: &[(Vec<f64>, Vec<usize>)],
    f: &F,
    r: &[f64],
    proven: &[Vec<f64>],
) where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let run = || -> Result<Vec<Vec<f64>>> {
        let leaves = inputs
            .iter()
            .map(|(v, d)| {
                Tensor::from_vec(v.clone(), d.clone(), Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .to_device(dev)?
                    .requires_grad_(true)
            })
            .collect::<Result<Vec<_>>>()?;
        let out = f(&leaves)?;
        let r = Tensor::from_vec(r.to_vec(), out.shape().clone(), Device::Cpu)?
            .to_dtype(out.dtype())?
            .to_device(dev)?;
        out.mul(&r)?.sum_all()?.backward()?;
        leaves
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let g = l
                    .grad()
                    .unwrap_or_else(|| panic!("{name} on {dev}: input {i} got no gradient"));
                assert_eq!(g.device(), dev, "{name}: gradient of input {i} left {dev}");
                g.to_device(Device::Cpu)?
                    .to_dtype(DType::F64)?
                    .to_vec::<f64>()
            })
            .collect()
    };
    match run() {
        Ok(grads) => {
            for (i, (got, want)) in grads.iter().zip(proven).enumerate() {
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let tol = 2e-4 * (1.0 + scale);
                for (j, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() <= tol,
                        "{name} on {dev}: d/d input{i}[{j}] = {g}, proven F64 value {w} (tolerance {tol:e})"
                    );
                }
            }
        }
        Err(hemi::Error::Unsupported { op, msg, .. }) => {
            eprintln!("SKIPPED gradcheck {name} on {dev}: `{op}` is unsupported there: {msg}")
        }
        Err(e) => panic!("{name} on {dev}: {e}"),
    }
}

fn rand_vec(gen: &mut Generator, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| gen.uniform(lo, hi)).collect()
}

/// A random input with dims drawn from `ranges` (inclusive) and values in `[lo, hi)`.
fn input(gen: &mut Generator, dims: &[usize], lo: f64, hi: f64) -> (Vec<f64>, Vec<usize>) {
    let n = dims.iter().product();
    (rand_vec(gen, n, lo, hi), dims.to_vec())
}

fn dim(gen: &mut Generator, lo: i64, hi: i64) -> usize {
    gen.int(lo, hi + 1) as usize
}

/// Values away from 0 so relu/abs/sign kinks are not straddled by ±H.
fn away_from_zero(gen: &mut Generator, dims: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let (mut v, d) = input(gen, dims, 0.1, 1.0);
    v.iter_mut().for_each(|x| {
        if gen.uniform(0.0, 1.0) < 0.5 {
            *x = -*x
        }
    });
    (v, d)
}

const SEEDS: [u64; 3] = [1, 2, 3];

#[test]
fn unary_ops() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let d = [dim(&mut g, 1, 4), dim(&mut g, 1, 5)];
        let any = input(&mut g, &d, -2.0, 2.0);
        let pos = input(&mut g, &d, 0.5, 2.0);
        let kinked = away_from_zero(&mut g, &d);
        gradcheck("neg", &mut g, vec![any.clone()], |x| x[0].neg());
        gradcheck("exp", &mut g, vec![any.clone()], |x| x[0].exp());
        gradcheck("log", &mut g, vec![pos.clone()], |x| x[0].log());
        gradcheck("sqrt", &mut g, vec![pos.clone()], |x| x[0].sqrt());
        gradcheck("rsqrt", &mut g, vec![pos.clone()], |x| x[0].rsqrt());
        gradcheck("abs", &mut g, vec![kinked.clone()], |x| x[0].abs());
        gradcheck("square", &mut g, vec![any.clone()], |x| x[0].square());
        gradcheck("recip", &mut g, vec![pos.clone()], |x| x[0].recip());
        gradcheck("relu", &mut g, vec![kinked], |x| x[0].relu());
        gradcheck("powf", &mut g, vec![pos], |x| x[0].powf(2.5));
        gradcheck("affine", &mut g, vec![any.clone()], |x| {
            x[0].affine(-1.5, 0.25)
        });
        gradcheck("scalar ops", &mut g, vec![any], |x| {
            x[0].add_scalar(1.0)?
                .sub_scalar(0.5)?
                .mul_scalar(3.0)?
                .div_scalar(4.0)
        });
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let (a, b) = (dim(&mut g, 1, 3), dim(&mut g, 2, 4));
        let full = input(&mut g, &[a, b], -2.0, 2.0);
        let row = input(&mut g, &[b], -2.0, 2.0);
        let col = input(&mut g, &[a, 1], 0.5, 2.0);
        gradcheck("add", &mut g, vec![full.clone(), row.clone()], |x| {
            x[0].add(&x[1])
        });
        gradcheck("sub", &mut g, vec![row.clone(), full.clone()], |x| {
            x[0].sub(&x[1])
        });
        gradcheck("mul", &mut g, vec![full.clone(), col.clone()], |x| {
            x[0].mul(&x[1])
        });
        gradcheck("div", &mut g, vec![full.clone(), col.clone()], |x| {
            x[0].div(&x[1])
        });
        gradcheck(
            "outer broadcast",
            &mut g,
            vec![col.clone(), row.clone()],
            |x| x[0].mul(&x[1]),
        );
        // maximum/minimum: shift one operand so no pair is within ±H of a tie.
        let other = (
            full.0
                .iter()
                .enumerate()
                .map(|(i, v)| v + if i % 2 == 0 { 0.3 } else { -0.3 })
                .collect(),
            full.1.clone(),
        );
        gradcheck("maximum", &mut g, vec![full.clone(), other.clone()], |x| {
            x[0].maximum(&x[1])
        });
        gradcheck("minimum", &mut g, vec![full, other], |x| {
            x[0].minimum(&x[1])
        });
    }
}

#[test]
fn reductions() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let d = [dim(&mut g, 1, 3), dim(&mut g, 2, 4), dim(&mut g, 1, 3)];
        let x = input(&mut g, &d, -2.0, 2.0);
        gradcheck("sum dim", &mut g, vec![x.clone()], |x| x[0].sum(1, false));
        gradcheck("sum dims keepdim", &mut g, vec![x.clone()], |x| {
            x[0].sum_dims(&[0, 2], true)
        });
        gradcheck("sum_all", &mut g, vec![x.clone()], |x| x[0].sum_all());
        gradcheck("mean dim", &mut g, vec![x.clone()], |x| {
            x[0].mean(-1, false)
        });
        gradcheck("mean_all", &mut g, vec![x.clone()], |x| x[0].mean_all());
        gradcheck("max dim", &mut g, vec![x.clone()], |x| x[0].max(1, true));
        gradcheck("min dims", &mut g, vec![x], |x| {
            x[0].min_dims(&[0, 1], false)
        });
    }
}

#[test]
fn views() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let d = [dim(&mut g, 1, 3), dim(&mut g, 2, 4), dim(&mut g, 1, 3)];
        let x = input(&mut g, &d, -2.0, 2.0);
        let n: usize = d.iter().product();
        gradcheck("reshape", &mut g, vec![x.clone()], move |x| {
            x[0].reshape([n])
        });
        gradcheck("flatten", &mut g, vec![x.clone()], |x| x[0].flatten(1, 2));
        gradcheck("transpose", &mut g, vec![x.clone()], |x| {
            x[0].transpose(0, 2)?.contiguous()
        });
        gradcheck("permute", &mut g, vec![x.clone()], |x| {
            x[0].permute(&[2, 0, 1])
        });
        gradcheck("reshape of permuted", &mut g, vec![x.clone()], move |x| {
            x[0].permute(&[1, 2, 0])?.reshape([n])
        });
        gradcheck("unsqueeze/squeeze", &mut g, vec![x.clone()], |x| {
            x[0].unsqueeze(1)?.mul_scalar(2.0)?.squeeze(1)
        });
        let y = input(&mut g, &[d[0], 2, d[2]], -2.0, 2.0);
        gradcheck("cat dim 1", &mut g, vec![x.clone(), y], |x| {
            Tensor::cat(&[&x[0], &x[1]], 1)
        });
        gradcheck(
            "cat dim 0 three",
            &mut g,
            vec![x.clone(), x.clone(), x.clone()],
            |x| Tensor::cat(&[&x[0], &x[1], &x[2]], 0),
        );
        let len = d[1] - 1;
        gradcheck("narrow", &mut g, vec![x.clone()], move |x| {
            x[0].narrow(1, 1, len)
        });
        let (a, b, c) = (d[0], d[1], d[2]);
        gradcheck("broadcast_as", &mut g, vec![x], move |x| {
            x[0].broadcast_as([2, a, b, c])
        });
    }
}

#[test]
fn matmul_and_linear() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let (b, m, k, n) = (
            dim(&mut g, 1, 3),
            dim(&mut g, 1, 5),
            dim(&mut g, 1, 5),
            dim(&mut g, 1, 5),
        );
        let a2 = input(&mut g, &[m, k], -1.0, 1.0);
        let b2 = input(&mut g, &[k, n], -1.0, 1.0);
        let a3 = input(&mut g, &[b, m, k], -1.0, 1.0);
        let b3 = input(&mut g, &[b, k, n], -1.0, 1.0);
        let bt = input(&mut g, &[n, k], -1.0, 1.0);
        gradcheck("matmul 2d", &mut g, vec![a2.clone(), b2.clone()], |x| {
            x[0].matmul(&x[1])
        });
        gradcheck("matmul batched", &mut g, vec![a3.clone(), b3], |x| {
            x[0].matmul(&x[1])
        });
        gradcheck("matmul broadcast rhs", &mut g, vec![a3, b2.clone()], |x| {
            x[0].matmul(&x[1])
        });
        gradcheck(
            "matmul transposed rhs",
            &mut g,
            vec![a2.clone(), bt.clone()],
            |x| x[0].matmul(&x[1].t()?),
        );
        let bias = input(&mut g, &[n], -1.0, 1.0);
        gradcheck("linear", &mut g, vec![a2, bt, bias], |x| {
            x[0].linear(&x[1], Some(&x[2]))
        });
    }
}

#[test]
fn conv2d_all_options() {
    let cases: [(usize, usize, usize, usize); 4] =
        [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2)];
    for (seed, &(stride, pad, dil, groups)) in SEEDS.iter().cycle().zip(cases.iter()) {
        let mut g = Generator::new(*seed);
        let n = dim(&mut g, 1, 2);
        let c = groups * dim(&mut g, 1, 2);
        let o = groups * dim(&mut g, 1, 2);
        let (h, w) = (dim(&mut g, 4, 6), dim(&mut g, 4, 7));
        let (kh, kw) = (dim(&mut g, 1, 3), dim(&mut g, 1, 3));
        let x = input(&mut g, &[n, c, h, w], -1.0, 1.0);
        let wt = input(&mut g, &[o, c / groups, kh, kw], -1.0, 1.0);
        let b = input(&mut g, &[o], -1.0, 1.0);
        let p = Conv2dParams {
            stride: (stride, stride),
            padding: (pad, pad),
            dilation: (dil, dil),
            groups,
            out_dtype: None,
        };
        gradcheck(&format!("conv2d {p:?}"), &mut g, vec![x, wt, b], move |x| {
            x[0].conv2d(&x[1], Some(&x[2]), p)
        });
    }
}

#[test]
fn batch_norm_train_and_eval() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let (n, c, h, w) = (
            dim(&mut g, 2, 3),
            dim(&mut g, 1, 3),
            dim(&mut g, 1, 3),
            dim(&mut g, 1, 3),
        );
        let x = input(&mut g, &[n, c, h, w], -2.0, 2.0);
        let wt = input(&mut g, &[c], 0.5, 1.5);
        let b = input(&mut g, &[c], -1.0, 1.0);
        gradcheck(
            "batch_norm train",
            &mut g,
            vec![x.clone(), wt.clone(), b.clone()],
            |x| {
                x[0].batch_norm(
                    None,
                    None,
                    Some(&x[1]),
                    Some(&x[2]),
                    BatchNormParams::default(),
                )
            },
        );
        let x2 = input(&mut g, &[n * 2, c], -2.0, 2.0);
        gradcheck(
            "batch_norm train 2d",
            &mut g,
            vec![x2, wt.clone(), b.clone()],
            |x| {
                x[0].batch_norm(
                    None,
                    None,
                    Some(&x[1]),
                    Some(&x[2]),
                    BatchNormParams::default(),
                )
            },
        );
        let (rm, rv) = (
            rand_vec(&mut g, c, -0.5, 0.5),
            rand_vec(&mut g, c, 0.5, 1.5),
        );
        let eval = BatchNormParams {
            training: false,
            ..Default::default()
        };
        gradcheck("batch_norm eval", &mut g, vec![x, wt, b], move |x| {
            // Running statistics on the input's device, in its dtype.
            let stat = |v: &[f64]| {
                Tensor::from_vec(v.to_vec(), [v.len()], Device::Cpu)?
                    .to_dtype(x[0].dtype())?
                    .to_device(x[0].device())
            };
            let (rm, rv) = (stat(&rm)?, stat(&rv)?);
            x[0].batch_norm(Some(&rm), Some(&rv), Some(&x[1]), Some(&x[2]), eval)
        });
    }
}

#[test]
fn pooling() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let (n, c, h, w) = (
            dim(&mut g, 1, 2),
            dim(&mut g, 1, 2),
            dim(&mut g, 4, 7),
            dim(&mut g, 4, 7),
        );
        // Distinct values (a shuffled ramp) so no max-pool window has a near tie.
        let count = n * c * h * w;
        let mut ramp: Vec<f64> = (0..count).map(|i| i as f64 * 0.1).collect();
        for i in (1..count).rev() {
            ramp.swap(i, g.int(0, i as i64 + 1) as usize);
        }
        let distinct = (ramp, vec![n, c, h, w]);
        gradcheck("max_pool2d k3 s2 p1", &mut g, vec![distinct.clone()], |x| {
            x[0].max_pool2d(MaxPool2dParams::new(3, 2, 1))
        });
        gradcheck("max_pool2d k2 dilated", &mut g, vec![distinct], |x| {
            x[0].max_pool2d(MaxPool2dParams {
                dilation: (2, 1),
                ..MaxPool2dParams::new(2, 1, 0)
            })
        });
        let x = input(&mut g, &[n, c, h, w], -1.0, 1.0);
        gradcheck("avg_pool2d", &mut g, vec![x.clone()], |x| {
            x[0].avg_pool2d(AvgPool2dParams::new(3, 2, 1))
        });
        gradcheck("avg_pool2d no pad count", &mut g, vec![x.clone()], |x| {
            x[0].avg_pool2d(AvgPool2dParams {
                count_include_pad: false,
                ..AvgPool2dParams::new(2, 1, 1)
            })
        });
        gradcheck("adaptive_avg_pool2d", &mut g, vec![x.clone()], |x| {
            x[0].adaptive_avg_pool2d((3, 2))
        });
        gradcheck("adaptive_avg_pool2d 1x1", &mut g, vec![x], |x| {
            x[0].adaptive_avg_pool2d((1, 1))
        });
    }
}

#[test]
fn softmax_and_losses() {
    for seed in SEEDS {
        let mut g = Generator::new(seed);
        let (n, c) = (dim(&mut g, 2, 5), dim(&mut g, 2, 6));
        let x = input(&mut g, &[n, c], -3.0, 3.0);
        let x3 = input(&mut g, &[2, c, 3], -3.0, 3.0);
        gradcheck("softmax", &mut g, vec![x.clone()], |x| x[0].softmax(-1));
        gradcheck("softmax middle dim", &mut g, vec![x3.clone()], |x| {
            x[0].softmax(1)
        });
        gradcheck("log_softmax", &mut g, vec![x.clone()], |x| {
            x[0].log_softmax(1)
        });
        gradcheck("log_softmax dim 0", &mut g, vec![x3], |x| {
            x[0].log_softmax(0)
        });
        let mut tv: Vec<i64> = (0..n).map(|_| g.int(0, c as i64)).collect();
        tv[0] = -100; // one ignored sample
        let t = Tensor::from_vec(tv, [n], Device::Cpu).expect("targets");
        for (reduction, smoothing) in [
            (Reduction::Mean, 0.0),
            (Reduction::Sum, 0.1),
            (Reduction::None, 0.3),
        ] {
            let spec = CrossEntropySpec {
                reduction,
                label_smoothing: smoothing,
                ..Default::default()
            };
            let t = t.clone();
            gradcheck(
                &format!("cross_entropy {spec:?}"),
                &mut g,
                vec![x.clone()],
                move |x| x[0].cross_entropy(&t.to_device(x[0].device())?, spec),
            );
        }
        let y = input(&mut g, &[n, c], -1.0, 1.0);
        gradcheck("mse_loss", &mut g, vec![x.clone(), y.clone()], |x| {
            x[0].mse_loss(&x[1], Reduction::Mean)
        });
        gradcheck("mse_loss sum", &mut g, vec![x, y], |x| {
            x[0].mse_loss(&x[1], Reduction::Sum)
        });
    }
}

#[test]
fn casts_pass_gradients_back() {
    let mut g = Generator::new(7);
    let x = input(&mut g, &[3, 4], -1.0, 1.0);
    // F64 -> F64 round trip through F32 is exact for the gradient path (the gradient is cast
    // back); the values change by at most f32 rounding, far below the tolerance.
    let leaf = leaf(x.0.clone(), &x.1);
    let y = leaf
        .to_dtype(DType::F32)
        .and_then(|t| t.mul_scalar(3.0))
        .and_then(|t| t.sum_all())
        .expect("fwd");
    y.backward().expect("backward");
    let grad = leaf.grad().expect("grad");
    assert_eq!(
        grad.dtype(),
        DType::F64,
        "the gradient of an F64 leaf is F64"
    );
    assert!(grad
        .to_vec::<f64>()
        .expect("vals")
        .iter()
        .all(|&v| v == 3.0));
    gradcheck("to_device + contiguous", &mut g, vec![x], |x| {
        x[0].to_device(Device::Cpu)?
            .t()?
            .contiguous()?
            .to_device(x[0].device())
    });
}
