//! The dataset trait, an in-memory dataset and a dataset with a transform.

use crate::transforms::{SampleRng, Transform};
use crate::Image;
use hemi_engine::{Error, Result};

/// One example: an image and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image, CHW.
    pub image: Image,
    /// Its class index.
    pub label: i64,
}

/// Indexed examples, shared by the loader's worker threads.
pub trait Dataset: Send + Sync {
    /// How many examples.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Example `index` (`< len()`); `rng` drives random transforms — the loader seeds it from
    /// its seed, the epoch and `index`, so augmentation does not depend on which thread loads
    /// the example.
    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample>;
}

/// Images and labels held in memory (what the file readers return).
#[derive(Debug, Clone)]
pub struct InMemory {
    images: Vec<Image>,
    labels: Vec<i64>,
}

impl InMemory {
    /// One label per image.
    pub fn new(images: Vec<Image>, labels: Vec<i64>) -> Result<Self> {
        if images.len() != labels.len() {
            return Err(Error::shape(
                "InMemory::new",
                format!("{} images but {} labels", images.len(), labels.len()),
            ));
        }
        Ok(InMemory { images, labels })
    }

    /// The labels, in order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The first `n` examples (a quick subset for smoke runs).
    pub fn take(mut self, n: usize) -> Self {
        self.images.truncate(n);
        self.labels.truncate(n);
        self
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize, _: &mut SampleRng) -> Result<Sample> {
        match (self.images.get(index), self.labels.get(index)) {
            (Some(image), Some(&label)) => Ok(Sample {
                image: image.clone(),
                label,
            }),
            _ => Err(Error::invalid(
                "Dataset::get",
                format!("index {index} out of range for {} examples", self.len()),
            )),
        }
    }
}

/// A dataset whose images pass through a transform (PyTorch's `transform=` argument).
#[derive(Debug)]
pub struct Transformed<D, T> {
    inner: D,
    transform: T,
}

impl<D: Dataset, T: Transform> Transformed<D, T> {
    /// `inner`'s examples with `transform` applied to each image.
    pub fn new(inner: D, transform: T) -> Self {
        Transformed { inner, transform }
    }
}

impl<D: Dataset, T: Transform> Dataset for Transformed<D, T> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample> {
        let s = self.inner.get(index, rng)?;
        Ok(Sample {
            image: self.transform.apply(s.image, rng)?,
            label: s.label,
        })
    }
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample> {
        (**self).get(index, rng)
    }
}

/// Some examples of a dataset, by index (`torch.utils.data.Subset`).
#[derive(Debug, Clone)]
pub struct Subset<D> {
    inner: D,
    indices: Vec<usize>,
}

impl<D: Dataset> Subset<D> {
    /// `inner`'s examples `indices`, in that order (each below `inner.len()`).
    pub fn new(inner: D, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::invalid(
                "Subset::new",
                format!("index {bad} out of range for {} examples", inner.len()),
            ));
        }
        Ok(Subset { inner, indices })
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample> {
        let i = *self.indices.get(index).ok_or_else(|| {
            Error::invalid(
                "Dataset::get",
                format!(
                    "index {index} out of range for {} examples",
                    self.indices.len()
                ),
            )
        })?;
        self.inner.get(i, rng)
    }
}
