//! Image transforms as torchvision's: [`ToTensor`], [`Normalize`], [`RandomCrop`] (with zero
//! padding), [`RandomHorizontalFlip`], [`Resize`] (bilinear), [`Grayscale`], chained by
//! [`Compose`]. Random
//! ones draw from the [`SampleRng`] the loader seeds per example.

use crate::{Image, Pixels};
use hemi_engine::{Error, Result};
use rand::{Rng, SeedableRng};

/// The random stream of one example (ChaCha8, seeded by the loader from its seed, the epoch
/// and the example's index).
#[derive(Debug, Clone)]
pub struct SampleRng(rand_chacha::ChaCha8Rng);

impl SampleRng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        SampleRng(rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0.gen::<f64>()
    }

    /// Uniform in `0..=max`.
    pub fn up_to(&mut self, max: usize) -> usize {
        self.0.gen_range(0..=max)
    }
}

/// A transform of one image.
pub trait Transform: Send + Sync {
    /// The transformed image.
    fn apply(&self, image: Image, rng: &mut SampleRng) -> Result<Image>;
}

impl<T: Transform + ?Sized> Transform for Box<T> {
    fn apply(&self, image: Image, rng: &mut SampleRng) -> Result<Image> {
        (**self).apply(image, rng)
    }
}

/// Transforms applied in order.
///
/// ```
/// use hemi_data::transforms::{Compose, Normalize, SampleRng, ToTensor, Transform};
/// use hemi_data::{Image, Pixels};
/// let t = Compose::new(vec![Box::new(ToTensor), Box::new(Normalize::new(vec![0.5], vec![0.5])?)]);
/// let img = t.apply(Image::from_u8(1, 1, 2, vec![0, 255])?, &mut SampleRng::new(0))?;
/// assert_eq!(img.pixels(), &Pixels::F32(vec![-1.0, 1.0]));
/// # Ok::<(), hemi_engine::Error>(())
/// ```
#[derive(Default)]
pub struct Compose(Vec<Box<dyn Transform>>);

impl std::fmt::Debug for Compose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compose({} transforms)", self.0.len())
    }
}

impl Compose {
    /// The chain `transforms[0]`, then `transforms[1]`, ...
    pub fn new(transforms: Vec<Box<dyn Transform>>) -> Self {
        Compose(transforms)
    }
}

impl Transform for Compose {
    fn apply(&self, mut image: Image, rng: &mut SampleRng) -> Result<Image> {
        for t in &self.0 {
            image = t.apply(image, rng)?;
        }
        Ok(image)
    }
}

/// Bytes to floats in `[0, 1]` (`b / 255`, in f32, as torchvision's `ToTensor`); floats pass
/// unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct ToTensor;

impl Transform for ToTensor {
    fn apply(&self, image: Image, _: &mut SampleRng) -> Result<Image> {
        match image.pixels() {
            Pixels::U8(v) => {
                let f = v.iter().map(|&b| f32::from(b) / 255.0).collect();
                Image::from_f32(image.channels(), image.height(), image.width(), f)
            }
            Pixels::F32(_) => Ok(image),
        }
    }
}

/// `(x − mean[c]) / std[c]` per channel, in f32 (torchvision's `Normalize`); needs float
/// pixels (apply [`ToTensor`] first).
#[derive(Debug, Clone)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// One mean and one (non-zero) standard deviation per channel.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        if mean.len() != std.len() || mean.is_empty() {
            return Err(Error::invalid(
                "Normalize",
                format!("{} means and {} standard deviations", mean.len(), std.len()),
            ));
        }
        if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(Error::invalid(
                "Normalize",
                format!("std {std:?} has a zero or non-finite value"),
            ));
        }
        Ok(Normalize { mean, std })
    }
}

impl Transform for Normalize {
    fn apply(&self, image: Image, _: &mut SampleRng) -> Result<Image> {
        let (c, h, w) = (image.channels(), image.height(), image.width());
        let Pixels::F32(v) = image.pixels() else {
            return Err(Error::dtype(
                "Normalize",
                "needs float pixels: apply ToTensor first",
            ));
        };
        if c != self.mean.len() {
            return Err(Error::shape(
                "Normalize",
                format!(
                    "{} channel statistics for a {c}-channel image",
                    self.mean.len()
                ),
            ));
        }
        let plane = h * w;
        let out = v
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let ch = i / plane.max(1);
                (x - self.mean[ch]) / self.std[ch]
            })
            .collect();
        Image::from_f32(c, h, w, out)
    }
}

/// A random `size` crop of the image padded by `padding` zeros on every side (torchvision's
/// `RandomCrop(size, padding)`): the top-left corner uniform over every position that fits.
#[derive(Debug, Clone, Copy)]
pub struct RandomCrop {
    /// Output `(height, width)`.
    pub size: (usize, usize),
    /// Zeros added on each side first.
    pub padding: usize,
}

impl Transform for RandomCrop {
    fn apply(&self, image: Image, rng: &mut SampleRng) -> Result<Image> {
        let (h, w) = (image.height(), image.width());
        let (ph, pw) = (h + 2 * self.padding, w + 2 * self.padding);
        let (ch, cw) = self.size;
        if ch > ph || cw > pw {
            return Err(Error::invalid(
                "RandomCrop",
                format!("crop {ch}x{cw} is larger than the padded {ph}x{pw} image"),
            ));
        }
        let (top, left) = (rng.up_to(ph - ch), rng.up_to(pw - cw));
        let p = self.padding;
        Ok(image.remap((ch, cw), |y, x| {
            let (sy, sx) = ((top + y).checked_sub(p)?, (left + x).checked_sub(p)?);
            (sy < h && sx < w).then_some((sy, sx))
        }))
    }
}

/// Mirrors the image left-right with probability `p` (torchvision's default 0.5).
#[derive(Debug, Clone, Copy)]
pub struct RandomHorizontalFlip {
    /// Probability of the flip.
    pub p: f64,
}

impl Default for RandomHorizontalFlip {
    fn default() -> Self {
        RandomHorizontalFlip { p: 0.5 }
    }
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, image: Image, rng: &mut SampleRng) -> Result<Image> {
        if rng.uniform() >= self.p {
            return Ok(image);
        }
        let (h, w) = (image.height(), image.width());
        Ok(image.remap((h, w), |y, x| Some((y, w - 1 - x))))
    }
}

/// Bilinear resize to `(height, width)` with half-pixel centers (`align_corners=False`, no
/// antialiasing: OpenCV's and `torch.nn.functional.interpolate(mode="bilinear")`'s
/// definition); bytes are rounded to nearest and clamped, floats kept.
#[derive(Debug, Clone, Copy)]
pub struct Resize {
    /// Output `(height, width)`.
    pub size: (usize, usize),
}

impl Transform for Resize {
    fn apply(&self, image: Image, _: &mut SampleRng) -> Result<Image> {
        let (c, h, w) = (image.channels(), image.height(), image.width());
        let (oh, ow) = self.size;
        if oh == 0 || ow == 0 || h == 0 || w == 0 {
            return Err(Error::invalid(
                "Resize",
                format!("{h}x{w} to {oh}x{ow}: sizes must be positive"),
            ));
        }
        // Source coordinate and the two neighbours' weights along one axis.
        let axis = |o: usize, out: usize, size: usize| {
            let s = ((o as f64 + 0.5) * size as f64 / out as f64 - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(size - 1);
            let i1 = (i0 + 1).min(size - 1);
            (i0, i1, s - i0 as f64)
        };
        let src = image.to_f32_vec();
        let mut out = Vec::with_capacity(c * oh * ow);
        for ch in 0..c {
            let plane = &src[ch * h * w..][..h * w];
            for y in 0..oh {
                let (y0, y1, fy) = axis(y, oh, h);
                for x in 0..ow {
                    let (x0, x1, fx) = axis(x, ow, w);
                    let at = |yy: usize, xx: usize| f64::from(plane[yy * w + xx]);
                    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                    out.push(top * (1.0 - fy) + bottom * fy);
                }
            }
        }
        match image.pixels() {
            Pixels::U8(_) => Image::from_u8(
                c,
                oh,
                ow,
                out.iter()
                    .map(|v| v.round().clamp(0.0, 255.0) as u8)
                    .collect(),
            ),
            Pixels::F32(_) => Image::from_f32(c, oh, ow, out.iter().map(|&v| v as f32).collect()),
        }
    }
}

/// torchvision's `Grayscale(num_output_channels)`: an RGB image becomes its luma
/// `0.299·R + 0.587·G + 0.114·B` (bytes rounded to nearest), a 1-channel image stays as it is,
/// and the result is repeated to `channels` (1 or 3) channels — how MNIST feeds a 3-channel
/// ResNet.
#[derive(Debug, Clone, Copy)]
pub struct Grayscale {
    /// Output channels: 1 or 3.
    pub channels: usize,
}

impl Transform for Grayscale {
    fn apply(&self, image: Image, _: &mut SampleRng) -> Result<Image> {
        let (c, h, w) = (image.channels(), image.height(), image.width());
        if !matches!(self.channels, 1 | 3) || !matches!(c, 1 | 3) {
            return Err(Error::invalid(
                "Grayscale",
                format!(
                    "{c} channels to {}: only 1 or 3 channels in and out",
                    self.channels
                ),
            ));
        }
        let plane = h * w;
        let luma: Vec<f32> = if c == 1 {
            image.to_f32_vec()
        } else {
            let v = image.to_f32_vec();
            (0..plane)
                .map(|i| 0.299 * v[i] + 0.587 * v[plane + i] + 0.114 * v[2 * plane + i])
                .collect()
        };
        let repeated: Vec<f32> = (0..self.channels)
            .flat_map(|_| luma.iter().copied())
            .collect();
        match image.pixels() {
            Pixels::U8(_) => Image::from_u8(
                self.channels,
                h,
                w,
                repeated
                    .iter()
                    .map(|v| v.round().clamp(0.0, 255.0) as u8)
                    .collect(),
            ),
            Pixels::F32(_) => Image::from_f32(self.channels, h, w, repeated),
        }
    }
}
