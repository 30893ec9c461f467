//! An image folder, torchvision's `ImageFolder`: `root/<class>/<image>.png|.jpg|.jpeg`. Classes
//! are the sub-folders sorted by name (index = position), images are listed sorted and decoded
//! when an example is loaded (to 3-channel RGB bytes, as torchvision's default loader), so a
//! large folder costs no memory up front. A file that does not decode is an
//! [`Error::Data`](hemi_engine::Error::Data) naming it; sizes may differ between images
//! (compose a [`Resize`](crate::transforms::Resize) or a crop before batching).

use crate::mnist::{data_err, io_err};
use crate::transforms::SampleRng;
use crate::{Dataset, Image, Sample};
use hemi_engine::{Error, Result};
use std::path::{Path, PathBuf};

/// The examples of an image folder.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    classes: Vec<String>,
    files: Vec<(PathBuf, i64)>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| io_err(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

impl ImageFolder {
    /// Lists `root`'s class folders and their PNG / JPEG files.
    ///
    /// ```no_run
    /// let data = hemi_data::ImageFolder::new("data/flowers/train")?;
    /// println!("{} images of {:?}", hemi_data::Dataset::len(&data), data.classes());
    /// # Ok::<(), hemi_engine::Error>(())
    /// ```
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let mut classes = Vec::new();
        let mut files = Vec::new();
        for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
            let label = classes.len() as i64;
            classes.push(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            files.extend(
                sorted_entries(&dir)?
                    .into_iter()
                    .filter(|p| p.is_file() && is_image(p))
                    .map(|p| (p, label)),
            );
        }
        if files.is_empty() {
            return Err(Error::Io {
                path: root.display().to_string(),
                msg:
                    "no .png/.jpg/.jpeg files in class sub-folders (expected root/<class>/<image>)"
                        .into(),
            });
        }
        Ok(ImageFolder { classes, files })
    }

    /// The class names; a label is an index into them.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every image's path and label, in order.
    pub fn files(&self) -> &[(PathBuf, i64)] {
        &self.files
    }
}

/// Decodes one PNG / JPEG file to RGB bytes in CHW order.
pub fn read_image(path: &Path) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let decoded = image::load_from_memory(&bytes).map_err(|e| {
        // The decoders do not say where they stopped; a file cut short fails at its end.
        let at = match &e {
            image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                bytes.len() as u64
            }
            _ => 0,
        };
        data_err(path, at, format!("cannot decode the image: {e}"))
    })?;
    let rgb = decoded.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let hwc = rgb.into_raw();
    let mut chw = vec![0u8; hwc.len()];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * h * w + i] = v;
        }
    }
    Image::from_u8(3, h, w, chw)
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize, _: &mut SampleRng) -> Result<Sample> {
        let (path, label) = self.files.get(index).ok_or_else(|| {
            Error::invalid(
                "ImageFolder::get",
                format!("index {index} out of range for {} images", self.files.len()),
            )
        })?;
        Ok(Sample {
            image: read_image(path)?,
            label: *label,
        })
    }
}
