//! # hemi-data
//!
//! Datasets, transforms and a data loader for hemi, in PyTorch's terms:
//!
//! - [`Dataset`]: indexed samples (an [`Image`] in CHW order and a class label).
//! - Readers of the real on-disk formats: [`mnist`] (MNIST / Fashion-MNIST IDX files, plain
//!   or `.gz`) and [`cifar`] (CIFAR-10 / CIFAR-100 binary batches). A truncated or malformed
//!   file is an [`Error::Data`](hemi_engine::Error::Data) naming the file and the byte
//!   offset, never a panic. Nothing is downloaded: put the files where the readers look
//!   (see each reader). [`ImageFolder`]: `root/<class>/<image>.png|.jpg`, decoded per example.
//! - [`transforms`]: to-tensor, normalize, random crop with padding, random horizontal flip,
//!   resize; composable with [`transforms::Compose`].
//! - [`DataLoader`]: batches of a dataset as tensors (`[B, C, H, W]` f32 images, `[B]` i64
//!   labels) on a device; shuffling by seed, `drop_last`, worker threads with bounded
//!   prefetch, and an order (and augmentation) fixed by the seed whatever the worker count.
//!
//! Its own crate (re-exported as `hemi::data`) so that the engine does not depend on file
//! formats and decompressors.
//!
//! ```
//! use hemi_data::{DataLoader, DataLoaderConfig, InMemory, Image};
//! use hemi_engine::Device;
//! // Four 1x2x2 images with labels 0..4.
//! let images = (0..4u8).map(|i| Image::from_u8(1, 2, 2, vec![i; 4])).collect::<Result<Vec<_>, _>>()?;
//! let data = InMemory::new(images, vec![0, 1, 2, 3])?;
//! let loader = DataLoader::new(data, DataLoaderConfig { batch_size: 2, ..Default::default() })?;
//! let mut labels = Vec::new();
//! for batch in loader.epoch(0, Device::Cpu)? {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims(), &[2, 1, 2, 2]);
//!     labels.extend(batch.labels.to_vec::<i64>()?);
//! }
//! assert_eq!(labels, vec![0, 1, 2, 3]);
//! # Ok::<(), hemi_engine::Error>(())
//! ```

pub mod cifar;
mod dataset;
mod folder;
mod image;
mod loader;
pub mod mnist;
mod sampler;
pub mod transforms;

pub use dataset::{Dataset, InMemory, Sample, Subset, Transformed};
pub use folder::{read_image, ImageFolder};
pub use image::{Image, Pixels};
pub use loader::{Batch, DataLoader, DataLoaderConfig, Epoch};
pub use sampler::DistributedSampler;
