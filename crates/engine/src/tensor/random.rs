//! Seedable random tensors: `rand` (uniform), `randn` (normal), `randint` (integers).
//!
//! Values come from a ChaCha8 stream, so a seed gives the same tensor on every platform and
//! every device (values are drawn on the host, then copied).

use super::Tensor;
use crate::{CpuStorage, DType, Device, Error, Result, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;

/// A seedable random number generator for tensor constructors.
#[derive(Debug, Clone)]
pub struct Generator(ChaCha8Rng);

impl Generator {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Self {
        Generator(ChaCha8Rng::seed_from_u64(seed))
    }
    /// One standard normal sample (Box–Muller on two uniforms).
    pub fn normal(&mut self) -> f64 {
        let u1: f64 = 1.0 - self.0.gen::<f64>(); // (0, 1]
        let u2: f64 = self.0.gen::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// One uniform sample in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.gen::<f64>()
    }
    /// One integer in `[lo, hi)`; requires `lo < hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        self.0.gen_range(lo..hi)
    }
}

thread_local! {
    static DEFAULT: RefCell<Generator> = RefCell::new(Generator::new(0));
}

/// Reseeds the thread's default generator, like `torch.manual_seed`.
pub fn manual_seed(seed: u64) {
    DEFAULT.with(|g| *g.borrow_mut() = Generator::new(seed));
}

fn with_default<R>(f: impl FnOnce(&mut Generator) -> R) -> R {
    DEFAULT.with(|g| f(&mut g.borrow_mut()))
}

fn float_tensor(
    op: &'static str,
    values: Vec<f64>,
    shape: Shape,
    dtype: DType,
    device: Device,
) -> Result<Tensor> {
    if !dtype.is_float() {
        return Err(Error::dtype(
            op,
            format!("needs a float dtype, got {dtype}"),
        ));
    }
    let host = crate::cpu::compute::from_f64(values, dtype)?;
    Tensor::from_host(host, shape, device)
}

impl Tensor {
    /// Standard normal samples from `gen`.
    pub fn randn_with(
        gen: &mut Generator,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.checked_elem_count("randn")?;
        let v = crate::alloc::collect(n, (0..n).map(|_| gen.normal()))?;
        float_tensor("randn", v, shape, dtype, device)
    }
    /// Uniform samples in `[0, 1)` from `gen`.
    pub fn rand_with(
        gen: &mut Generator,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        Tensor::uniform_with(gen, shape, 0.0, 1.0, dtype, device)
    }
    /// Uniform samples in `[lo, hi)` from `gen`.
    pub fn uniform_with(
        gen: &mut Generator,
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        if lo >= hi || !lo.is_finite() || !hi.is_finite() {
            return Err(Error::invalid(
                "uniform",
                format!("bounds [{lo}, {hi}) must be finite with lo < hi"),
            ));
        }
        let shape = shape.into();
        let n = shape.checked_elem_count("uniform")?;
        let v = crate::alloc::collect(n, (0..n).map(|_| gen.uniform(lo, hi)))?;
        float_tensor("uniform", v, shape, dtype, device)
    }
    /// I64 samples in `[lo, hi)` from `gen`.
    pub fn randint_with(
        gen: &mut Generator,
        lo: i64,
        hi: i64,
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Tensor> {
        if lo >= hi {
            return Err(Error::invalid(
                "randint",
                format!("empty range [{lo}, {hi})"),
            ));
        }
        let shape = shape.into();
        let n = shape.checked_elem_count("randint")?;
        let v = crate::alloc::collect(n, (0..n).map(|_| gen.int(lo, hi)))?;
        Tensor::from_host(CpuStorage::I64(v), shape, device)
    }
    /// Standard normal samples from the thread's default generator (see [`manual_seed`]).
    pub fn randn(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        with_default(|g| Tensor::randn_with(g, shape, dtype, device))
    }
    /// Uniform `[0, 1)` samples from the thread's default generator.
    pub fn rand(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        with_default(|g| Tensor::rand_with(g, shape, dtype, device))
    }
    /// Uniform `[lo, hi)` samples from the thread's default generator.
    pub fn uniform(
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        with_default(|g| Tensor::uniform_with(g, shape, lo, hi, dtype, device))
    }
    /// I64 samples in `[lo, hi)` from the thread's default generator.
    pub fn randint(lo: i64, hi: i64, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        with_default(|g| Tensor::randint_with(g, lo, hi, shape, device))
    }
}
