//! MNIST and Fashion-MNIST in their IDX files, plain or gzipped (as distributed).
//!
//! Put the four files of a dataset in one directory — or keep torchvision's layout,
//! `<root>/MNIST/raw/` or `<root>/FashionMNIST/raw/` — with their distributed names:
//! `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`, each optionally with `.gz`. Nothing is downloaded.
//!
//! IDX: two zero bytes, a type byte (`0x08`: unsigned bytes), the number of dimensions, each
//! dimension as a big-endian `u32`, then the values. Images are `[n, 28, 28]` (any size is
//! read), labels `[n]`.

use crate::{Image, InMemory};
use hemi_engine::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A malformed-data error naming the file and the byte offset.
pub(crate) fn data_err(path: &Path, offset: u64, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.display().to_string(),
        offset,
        msg: msg.into(),
    }
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// The bytes of a file, inflated when it starts with the gzip magic (offsets in errors then
/// count bytes of the inflated data).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| io_err(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| data_err(path, out.len() as u64, format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX array of bytes: its dimensions and values.
pub fn read_idx(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<u8>)> {
    let path = path.as_ref();
    let bytes = read_maybe_gz(path)?;
    let header = bytes
        .get(..4)
        .ok_or_else(|| data_err(path, bytes.len() as u64, "file ends inside the IDX header"))?;
    if header[0] != 0 || header[1] != 0 {
        return Err(data_err(
            path,
            0,
            "not an IDX file (the first two bytes must be 0)",
        ));
    }
    if header[2] != 0x08 {
        return Err(data_err(
            path,
            2,
            format!("IDX type 0x{:02x} is not unsigned bytes (0x08)", header[2]),
        ));
    }
    let rank = header[3] as usize;
    let mut dims = Vec::with_capacity(rank);
    for d in 0..rank {
        let at = 4 + 4 * d;
        let b = bytes.get(at..at + 4).ok_or_else(|| {
            data_err(
                path,
                bytes.len() as u64,
                format!("file ends inside dimension {d}"),
            )
        })?;
        dims.push(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    }
    let start = 4 + 4 * rank;
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| data_err(path, 4, format!("dimensions {dims:?} overflow")))?;
    let have = bytes.len() - start;
    if have != count {
        let what = if have < count {
            "truncated"
        } else {
            "has trailing bytes"
        };
        return Err(data_err(
            path,
            (start + have.min(count)) as u64,
            format!(
                "{what}: dimensions {dims:?} need {count} values after the header, found {have}"
            ),
        ));
    }
    Ok((dims, bytes[start..].to_vec()))
}

/// The first of `names` (each also tried with `.gz`) in `dir`, `dir/MNIST/raw`,
/// `dir/FashionMNIST/raw` or `dir/raw`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let dirs = [
        dir.to_path_buf(),
        dir.join("MNIST").join("raw"),
        dir.join("FashionMNIST").join("raw"),
        dir.join("raw"),
    ];
    for d in &dirs {
        for n in [name.to_string(), format!("{name}.gz")] {
            let p = d.join(&n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::Io {
        path: dir.join(name).display().to_string(),
        msg: format!(
            "not found (looked for {name} and {name}.gz in {}, MNIST/raw, FashionMNIST/raw and raw)",
            dir.display()
        ),
    })
}

/// The training (60 000) or test (10 000) split of MNIST or Fashion-MNIST under `dir`:
/// `1 × 28 × 28` byte images and labels 0–9.
///
/// ```no_run
/// let train = hemi_data::mnist::load("data/mnist", true)?;
/// # Ok::<(), hemi_engine::Error>(())
/// ```
pub fn load(dir: impl AsRef<Path>, train: bool) -> Result<InMemory> {
    let dir = dir.as_ref();
    let prefix = if train { "train" } else { "t10k" };
    let ipath = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    from_files(&ipath, &lpath)
}

/// An images file `[n, h, w]` and a labels file `[n]` (labels 0–9).
pub fn from_files(images: &Path, labels: &Path) -> Result<InMemory> {
    let (idims, pixels) = read_idx(images)?;
    let (ldims, lbytes) = read_idx(labels)?;
    let [n, h, w] = idims[..] else {
        return Err(data_err(
            images,
            3,
            format!("images must have 3 dimensions, found {idims:?}"),
        ));
    };
    if ldims != [n] {
        return Err(data_err(
            labels,
            3,
            format!(
                "labels have dimensions {ldims:?}, expected [{n}] to match {}",
                images.display()
            ),
        ));
    }
    let start = 4 + 4 * ldims.len();
    if let Some(i) = lbytes.iter().position(|&l| l > 9) {
        return Err(data_err(
            labels,
            (start + i) as u64,
            format!("label {} is not a digit class 0-9", lbytes[i]),
        ));
    }
    let plane = h * w;
    let images = (0..n)
        .map(|i| Image::from_u8(1, h, w, pixels[i * plane..][..plane].to_vec()))
        .collect::<Result<Vec<_>>>()?;
    InMemory::new(images, lbytes.iter().map(|&l| i64::from(l)).collect())
}
