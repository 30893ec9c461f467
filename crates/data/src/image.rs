//! One image: channels × height × width values in CHW order, bytes as a file stores them or
//! floats after [`ToTensor`](crate::transforms::ToTensor).

use hemi_engine::{Error, Result};

/// Pixel values in CHW order.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Bytes `0..=255`, as read from the file.
    U8(Vec<u8>),
    /// Floats (after `ToTensor`: bytes / 255).
    F32(Vec<f32>),
}

/// An image of `channels × height × width` values, CHW order.
///
/// ```
/// use hemi_data::{Image, Pixels};
/// let img = Image::from_u8(1, 2, 3, vec![0, 1, 2, 3, 4, 5])?;
/// assert_eq!((img.channels(), img.height(), img.width()), (1, 2, 3));
/// assert_eq!(img.pixels(), &Pixels::U8(vec![0, 1, 2, 3, 4, 5]));
/// assert!(Image::from_u8(1, 2, 3, vec![0; 5]).is_err());
/// # Ok::<(), hemi_engine::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    channels: usize,
    height: usize,
    width: usize,
    pixels: Pixels,
}

fn check(op: &'static str, (c, h, w): (usize, usize, usize), len: usize) -> Result<()> {
    match c.checked_mul(h).and_then(|x| x.checked_mul(w)) {
        Some(n) if n == len => Ok(()),
        _ => Err(Error::shape(
            op,
            format!("{len} values for a {c}x{h}x{w} image"),
        )),
    }
}

impl Image {
    /// An image of bytes; `data.len()` must be `c·h·w`.
    pub fn from_u8(c: usize, h: usize, w: usize, data: Vec<u8>) -> Result<Image> {
        check("Image::from_u8", (c, h, w), data.len())?;
        Ok(Image {
            channels: c,
            height: h,
            width: w,
            pixels: Pixels::U8(data),
        })
    }

    /// An image of floats; `data.len()` must be `c·h·w`.
    pub fn from_f32(c: usize, h: usize, w: usize, data: Vec<f32>) -> Result<Image> {
        check("Image::from_f32", (c, h, w), data.len())?;
        Ok(Image {
            channels: c,
            height: h,
            width: w,
            pixels: Pixels::F32(data),
        })
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The values, CHW order.
    pub fn pixels(&self) -> &Pixels {
        &self.pixels
    }

    /// The values as floats (bytes converted as they are, not scaled).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.pixels {
            Pixels::U8(v) => v.iter().map(|&b| f32::from(b)).collect(),
            Pixels::F32(v) => v.clone(),
        }
    }

    /// The image of the same type `c × h × w` whose pixel `(ch, y, x)` is this image's pixel
    /// `at(y, x)` of channel `ch`, or 0 where `at` gives `None` (geometric transforms).
    pub(crate) fn remap(
        &self,
        (h, w): (usize, usize),
        at: impl Fn(usize, usize) -> Option<(usize, usize)>,
    ) -> Image {
        fn gather<T: Copy + Default>(
            src: &[T],
            (c, sh, sw): (usize, usize, usize),
            (h, w): (usize, usize),
            at: &dyn Fn(usize, usize) -> Option<(usize, usize)>,
        ) -> Vec<T> {
            let mut out = Vec::with_capacity(c * h * w);
            for ch in 0..c {
                let plane = &src[ch * sh * sw..][..sh * sw];
                for y in 0..h {
                    for x in 0..w {
                        out.push(at(y, x).map_or(T::default(), |(sy, sx)| plane[sy * sw + sx]));
                    }
                }
            }
            out
        }
        let src = (self.channels, self.height, self.width);
        let pixels = match &self.pixels {
            Pixels::U8(v) => Pixels::U8(gather(v, src, (h, w), &at)),
            Pixels::F32(v) => Pixels::F32(gather(v, src, (h, w), &at)),
        };
        Image {
            channels: self.channels,
            height: h,
            width: w,
            pixels,
        }
    }
}
