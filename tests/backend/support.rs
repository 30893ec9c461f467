//! Helpers of the backend suite: tolerant comparison, random and adversarial data with their
//! f64 values, and the error bounds README's numerics section states.

use hemi::{DType, Device, Generator, Result, Tensor};

/// Unit roundoff of f32 accumulation.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Asserts `|got − want| ≤ tol·(1 + |want|)` element-wise.
pub fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// A uniform `[-2, 2)` F32 tensor of `dims` on `dev`, and its values as f64.
pub fn rand(g: &mut Generator, dims: &[usize], dev: Device) -> Result<(Tensor, Vec<f64>)> {
    let t = Tensor::uniform_with(g, dims.to_vec(), -2.0, 2.0, DType::F32, dev)?;
    let v = t.to_f64_vec()?;
    Ok((t, v))
}

/// Rounding unit of the output dtype (0 for F32: the f32 accumulator is the result).
pub fn u_out(dt: DType) -> f64 {
    match dt {
        DType::F16 => 1.0 / 2048.0,
        DType::BF16 => 1.0 / 256.0,
        _ => 0.0,
    }
}

/// Absolute rounding error of the output dtype's subnormals (half F16's smallest spacing).
pub fn tiny(dt: DType) -> f64 {
    if dt == DType::F16 {
        2f64.powi(-25)
    } else {
        0.0
    }
}

pub fn clog2(n: usize) -> f64 {
    (n.max(1) as f64).log2().ceil()
}

/// Σ v in f64 with Neumaier compensation (a reference far more exact than the bounds).
pub fn sum64(v: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in v {
        let t = s + x;
        c += if s.abs() >= x.abs() {
            (s - t) + x
        } else {
            (x - t) + s
        };
        s = t;
    }
    s + c
}

/// README's reduction bound: `|s − s64| ≤ 2·⌈log2 n⌉·2^-24·Σ|x| + u_out·|s64|`.
pub fn sum_bound(n: usize, abs_sum: f64, s64: f64, dt: DType) -> f64 {
    2.0 * clog2(n) * U * abs_sum + u_out(dt) * s64.abs()
}

/// Data that defeats a sequential f32 sum: 1.0 every 1024 elements, the rest positive and
/// below half an ulp of 1 (in [2^-25, 2^-24)), so `1 + x` rounds back to 1.
pub fn adversarial(gen: &mut Generator, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i % 1024 == 0 {
                1.0
            } else {
                (gen.uniform(1.0, 1.99) * 2f64.powi(-25)) as f32
            }
        })
        .collect()
}

pub fn uniform(gen: &mut Generator, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| gen.uniform(lo, hi) as f32).collect()
}

/// `data` rounded to `dt` on the CPU, and its rounded values as f64.
pub fn rounded(data: Vec<f32>, dims: &[usize], dt: DType) -> Result<(Tensor, Vec<f64>)> {
    let t = Tensor::from_vec(data, dims.to_vec(), Device::Cpu)?.to_dtype(dt)?;
    let v = t.to_f64_vec()?;
    Ok((t, v))
}
