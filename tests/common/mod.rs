//! Helpers shared by the integration tests: the devices to run on, random data, and naive
//! f64 reference implementations (written independently of the code under test).
#![allow(dead_code)]

use hemi::{DType, Device, Generator, Result, Tensor};

/// Every device the backend tests run on: the CPU always; with feature `cuda` the emulated
/// CUDA backend and every GPU. Prints what it skipped and why.
pub fn devices() -> Vec<Device> {
    #[cfg(feature = "cuda")]
    {
        let status = hemi::cuda::init();
        if let Some(why) = &status.gpu_unavailable {
            eprintln!("backend tests: skipping cuda (GPU): {why}");
        }
        let mut d = vec![Device::Cpu];
        d.extend(status.devices.iter().copied());
        d
    }
    #[cfg(not(feature = "cuda"))]
    {
        eprintln!("backend tests: running on cpu; skipping cuda and cuda-sim: built without feature `cuda`");
        vec![Device::Cpu]
    }
}

/// A random float tensor of `dims` in `dtype` with values in `[-1, 1)` rounded to dtype.
pub fn rand_t(gen: &mut Generator, dims: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::uniform_with(gen, dims.to_vec(), -1.0, 1.0, dtype, Device::Cpu)
}

/// Naive `[m, k] x [k, n]` in f64; also returns `|A||B|` for the error bound.
pub fn matmul_ref(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
                abs[i * n + j] += (a[i * k + p] * b[p * n + j]).abs();
            }
        }
    }
    (c, abs)
}

/// Naive NCHW convolution in f64 with `groups`; returns output and `|x||w|` per output.
#[allow(clippy::too_many_arguments)]
pub fn conv_ref(
    x: &[f64],
    w: &[f64],
    (n, c, h, wd): (usize, usize, usize, usize),
    (o, kh, kw): (usize, usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    groups: usize,
) -> (Vec<f64>, Vec<f64>, usize, usize) {
    let oh = (h + 2 * pad.0 - dil.0 * (kh - 1) - 1) / stride.0 + 1;
    let ow = (wd + 2 * pad.1 - dil.1 * (kw - 1) - 1) / stride.1 + 1;
    let (cg, og) = (c / groups, o / groups);
    let mut out = vec![0.0; n * o * oh * ow];
    let mut abs = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for y in 0..oh {
                for xx in 0..ow {
                    let (mut s, mut a) = (0.0, 0.0);
                    for ic in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (y * stride.0 + i * dil.0) as isize - pad.0 as isize;
                                let ix = (xx * stride.1 + j * dil.1) as isize - pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv =
                                    x[((b * c + g * cg + ic) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((oc * cg + ic) * kh + i) * kw + j];
                                s += xv * wv;
                                a += (xv * wv).abs();
                            }
                        }
                    }
                    out[((b * o + oc) * oh + y) * ow + xx] = s;
                    abs[((b * o + oc) * oh + y) * ow + xx] = a;
                }
            }
        }
    }
    (out, abs, oh, ow)
}

/// Unit roundoff of the output dtype as in DESIGN.md's bound (0 for f32 output).
pub fn u_out(dt: DType) -> f64 {
    match dt {
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        _ => 0.0,
    }
}

/// Checks `|c − c64| ≤ K·2⁻²³·|A||B| + u_out·|c64|` element-wise (plus the smallest
/// subnormal of the output type to absorb underflow), reporting the first violation.
pub fn check_gemm_bound(
    got: &[f64],
    want: &[f64],
    abs: &[f64],
    k: usize,
    dt: DType,
) -> std::result::Result<(), String> {
    let tiny = match dt {
        DType::F16 => 2f64.powi(-24),
        DType::BF16 => 2f64.powi(-133),
        _ => 0.0,
    };
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs).enumerate() {
        let bound = k as f64 * 2f64.powi(-23) * a + u_out(dt) * w.abs() + tiny;
        if (g - w).abs() > bound {
            return Err(format!(
                "element {i}: got {g}, want {w}, |err| {} > bound {bound}",
                (g - w).abs()
            ));
        }
    }
    Ok(())
}

/// Fraction of rows of `logits [n, c]` whose argmax is the label.
pub fn accuracy(logits: &Tensor, labels: &[i64]) -> f64 {
    let v = logits.to_vec::<f32>().expect("logits");
    let c = logits.dims()[1];
    let hits = labels
        .iter()
        .enumerate()
        .filter(|(i, &l)| {
            let row = &v[i * c..][..c];
            let best = (0..c)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            best as i64 == l
        })
        .count();
    hits as f64 / labels.len() as f64
}

/// 8×8 images with a horizontal bar, a vertical bar or a diagonal at a random place, in noise.
pub fn pattern_images(g: &mut Generator, n: usize) -> (Vec<f32>, Vec<i64>) {
    let mut data = vec![0f32; n * 64];
    let mut labels = vec![0i64; n];
    for i in 0..n {
        let class = g.int(0, 3);
        labels[i] = class;
        let img = &mut data[i * 64..][..64];
        img.iter_mut().for_each(|p| *p = 0.3 * g.normal() as f32);
        let (r, c) = (g.int(1, 5) as usize, g.int(1, 5) as usize);
        for k in 0..4 {
            let (y, x) = match class {
                0 => (r, c + k - 1),
                1 => (r + k - 1, c),
                _ => (r + k - 1, c + k - 1),
            };
            img[y.min(7) * 8 + x.min(7)] += 1.0;
        }
    }
    (data, labels)
}
