//! CIFAR-10 and CIFAR-100 in their binary versions (`cifar-10-binary.tar.gz`,
//! `cifar-100-binary.tar.gz`, extracted). Nothing is downloaded.
//!
//! CIFAR-10: `<root>/cifar-10-batches-bin/` (or `<root>` itself) holds `data_batch_1.bin` …
//! `data_batch_5.bin` (training) and `test_batch.bin`; each record is a label byte (0–9) and
//! 3072 pixel bytes: the 1024 red values of the 32 × 32 image row by row, then green, then
//! blue — CHW order. CIFAR-100: `<root>/cifar-100-binary/` (or `<root>`) holds `train.bin`
//! and `test.bin`; each record is a coarse label byte (0–19), a fine label byte (0–99) and
//! the same 3072 bytes. The labels here are the fine ones (as torchvision's `CIFAR100`).

use crate::mnist::{data_err, io_err};
use crate::{Image, InMemory};
use hemi_engine::{Error, Result};
use std::path::{Path, PathBuf};

/// Pixel bytes per record (3 × 32 × 32).
const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes.
    Ten,
    /// 100 classes (fine labels).
    Hundred,
}

impl Cifar {
    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    fn classes(self) -> u8 {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar-10-batches-bin",
            Cifar::Hundred => "cifar-100-binary",
        }
    }

    fn files(self, train: bool) -> Vec<String> {
        match (self, train) {
            (Cifar::Ten, true) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Cifar::Ten, false) => vec!["test_batch.bin".into()],
            (Cifar::Hundred, true) => vec!["train.bin".into()],
            (Cifar::Hundred, false) => vec!["test.bin".into()],
        }
    }
}

/// Appends the records of one batch file to `images` / `labels`.
pub fn read_batch(
    path: &Path,
    kind: Cifar,
    (images, labels): (&mut Vec<Image>, &mut Vec<i64>),
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let record = kind.label_bytes() + PIXELS;
    if bytes.len() % record != 0 {
        let whole = bytes.len() / record;
        return Err(data_err(
            path,
            (whole * record) as u64,
            format!(
                "truncated record {whole}: {} bytes left, a record is {record}",
                bytes.len() - whole * record
            ),
        ));
    }
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let at = kind.label_bytes() - 1;
        let label = r[at];
        if label >= kind.classes() {
            return Err(data_err(
                path,
                (i * record + at) as u64,
                format!(
                    "label {label} of record {i} is not below {}",
                    kind.classes()
                ),
            ));
        }
        images.push(Image::from_u8(3, 32, 32, r[kind.label_bytes()..].to_vec())?);
        labels.push(i64::from(label));
    }
    Ok(())
}

fn locate(dir: &Path, kind: Cifar, file: &str) -> Result<PathBuf> {
    for d in [dir.join(kind.folder()), dir.to_path_buf()] {
        let p = d.join(file);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Io {
        path: dir.join(kind.folder()).join(file).display().to_string(),
        msg: format!(
            "not found (looked in {} and {})",
            dir.join(kind.folder()).display(),
            dir.display()
        ),
    })
}

/// The training (50 000) or test (10 000) split of CIFAR-10 / CIFAR-100 under `dir`:
/// `3 × 32 × 32` byte images.
///
/// ```no_run
/// use hemi_data::cifar::{load, Cifar};
/// let test = load("data", Cifar::Ten, false)?;
/// # Ok::<(), hemi_engine::Error>(())
/// ```
pub fn load(dir: impl AsRef<Path>, kind: Cifar, train: bool) -> Result<InMemory> {
    let dir = dir.as_ref();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in kind.files(train) {
        read_batch(&locate(dir, kind, &f)?, kind, (&mut images, &mut labels))?;
    }
    InMemory::new(images, labels)
}
