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

/// Where a [`Generator`] stands (the role of `torch.get_rng_state`): its ChaCha8 key, stream
/// and position in words. A generator rebuilt from it continues the same sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngState {
    /// The 256-bit key.
    pub seed: [u8; 32],
    /// The stream number.
    pub stream: u64,
    /// How many 32-bit words of the stream were consumed.
    pub word_pos: u128,
}

impl RngState {
    /// As text: `key:stream:position`, each in lowercase hex (for JSON metadata).
    pub fn to_hex(&self) -> String {
        let key: String = self.seed.iter().map(|b| format!("{b:02x}")).collect();
        format!("{key}:{:x}:{:x}", self.stream, self.word_pos)
    }

    /// Parses [`RngState::to_hex`].
    pub fn from_hex(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "RngState::from_hex",
                format!("not a generator state: {s:?}"),
            )
        };
        let mut parts = s.split(':');
        let (Some(key), Some(stream), Some(pos), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if key.len() != 64 || !key.is_ascii() {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&key[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(RngState {
            seed,
            stream: u64::from_str_radix(stream, 16).map_err(|_| bad())?,
            word_pos: u128::from_str_radix(pos, 16).map_err(|_| bad())?,
        })
    }
}

impl Generator {
    /// Its current state.
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.0.get_seed(),
            stream: self.0.get_stream(),
            word_pos: self.0.get_word_pos(),
        }
    }

    /// A generator at `state`.
    pub fn from_state(state: &RngState) -> Self {
        let mut g = ChaCha8Rng::from_seed(state.seed);
        g.set_stream(state.stream);
        g.set_word_pos(state.word_pos);
        Generator(g)
    }
}

thread_local! {
    static DEFAULT: RefCell<Generator> = RefCell::new(Generator::new(0));
}

/// The state of this thread's default generator (the one `randn`, `rand`, `randint` and
/// dropout draw from), like `torch.get_rng_state`.
///
/// ```
/// use hemi_engine::{manual_seed, rng_state, set_rng_state, DType, Device, Tensor};
/// manual_seed(3);
/// let saved = rng_state();
/// let a = Tensor::randn([4], DType::F32, Device::Cpu)?.to_vec::<f32>()?;
/// set_rng_state(&saved);
/// let b = Tensor::randn([4], DType::F32, Device::Cpu)?.to_vec::<f32>()?;
/// assert_eq!(a, b);
/// # Ok::<(), hemi_engine::Error>(())
/// ```
pub fn rng_state() -> RngState {
    DEFAULT.with(|g| g.borrow().state())
}

/// Puts this thread's default generator at `state` (`torch.set_rng_state`).
pub fn set_rng_state(state: &RngState) {
    DEFAULT.with(|g| *g.borrow_mut() = Generator::from_state(state));
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
