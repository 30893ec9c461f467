//! Batches of a dataset as tensors, loaded by worker threads ahead of the consumer, in an
//! order fixed by the seed.

use crate::transforms::SampleRng;
use crate::{Dataset, DistributedSampler, Pixels};
use hemi_engine::{Device, Error, Result, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How a [`DataLoader`] batches (PyTorch's `DataLoader` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLoaderConfig {
    /// Examples per batch (> 0).
    pub batch_size: usize,
    /// A new permutation every epoch (from `seed` and the epoch), else dataset order.
    pub shuffle: bool,
    /// Seeds the permutations and every example's augmentation stream.
    pub seed: u64,
    /// Drops a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Loader threads; 0 loads each batch on the consuming thread.
    pub num_workers: usize,
    /// Batches each worker loads ahead of the consumer (≥ 1).
    pub prefetch: usize,
}

impl Default for DataLoaderConfig {
    fn default() -> Self {
        DataLoaderConfig {
            batch_size: 1,
            shuffle: false,
            seed: 0,
            drop_last: false,
            num_workers: 0,
            prefetch: 2,
        }
    }
}

/// One batch: `images [B, C, H, W]` (f32; byte images keep their values 0–255, apply
/// `ToTensor` for `[0, 1]`), `labels [B]` (i64), on the epoch's device.
#[derive(Debug)]
pub struct Batch {
    /// The images.
    pub images: Tensor,
    /// The labels.
    pub labels: Tensor,
    /// Which examples, in batch order.
    pub indices: Vec<usize>,
    /// The batch's number within its epoch.
    pub number: usize,
}

/// Batches of a dataset.
#[derive(Debug)]
pub struct DataLoader<D> {
    dataset: Arc<D>,
    config: DataLoaderConfig,
    sampler: Option<DistributedSampler>,
}

/// SplitMix64: decorrelates nearby seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<D: Dataset + 'static> DataLoader<D> {
    /// A loader over `dataset`.
    pub fn new(dataset: D, config: DataLoaderConfig) -> Result<Self> {
        if config.batch_size == 0 || config.prefetch == 0 {
            return Err(Error::invalid(
                "DataLoader",
                format!(
                    "batch_size ({}) and prefetch ({}) must be positive",
                    config.batch_size, config.prefetch
                ),
            ));
        }
        Ok(DataLoader {
            dataset: Arc::new(dataset),
            config,
            sampler: None,
        })
    }

    /// Loads only `sampler`'s share of every epoch (data-parallel training: one loader per
    /// rank, same seed everywhere). Batches, `len` and `epoch_from` then count this rank's
    /// share.
    ///
    /// ```
    /// use hemi_data::{DataLoader, DataLoaderConfig, DistributedSampler, Image, InMemory};
    /// let images = (0..10).map(|i| Image::from_u8(1, 1, 1, vec![i as u8]).unwrap()).collect();
    /// let data = InMemory::new(images, (0..10).collect())?;
    /// let config = DataLoaderConfig { batch_size: 2, shuffle: true, seed: 5, ..Default::default() };
    /// let rank0 = DataLoader::new(data.clone(), config)?.with_sampler(DistributedSampler::new(0, 2)?);
    /// let rank1 = DataLoader::new(data, config)?.with_sampler(DistributedSampler::new(1, 2)?);
    /// let (a, b) = (rank0.order(3), rank1.order(3));
    /// assert_eq!((a.len(), rank0.len()), (5, 3));
    /// assert!(a.iter().all(|i| !b.contains(i))); // disjoint shards of one permutation
    /// # Ok::<(), hemi_engine::Error>(())
    /// ```
    pub fn with_sampler(mut self, sampler: DistributedSampler) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// The distributed sampler, if any.
    pub fn sampler(&self) -> Option<&DistributedSampler> {
        self.sampler.as_ref()
    }

    /// Examples per epoch (this rank's share with a sampler).
    fn examples(&self) -> usize {
        let n = self.dataset.len();
        self.sampler.map_or(n, |s| s.num_samples(n))
    }

    /// The dataset.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &DataLoaderConfig {
        &self.config
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        let (n, b) = (self.examples(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Whether an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The order in which epoch `epoch` visits the examples: a permutation drawn from the
    /// seed and the epoch when shuffling, else `0..len`; with a sampler, this rank's share of
    /// it.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            let seed = mix(self.config.seed) ^ mix(epoch.wrapping_add(0x5EED));
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        }
        match &self.sampler {
            Some(s) => s.shard(&order),
            None => order,
        }
    }

    /// The batches of epoch `epoch`, uploaded to `device`.
    pub fn epoch(&self, epoch: u64, device: Device) -> Result<Epoch> {
        self.epoch_from(epoch, 0, device)
    }

    /// The batches of epoch `epoch` from batch number `first` on (resuming mid-epoch: the
    /// same batches as the full epoch's from `first`).
    pub fn epoch_from(&self, epoch: u64, first: usize, device: Device) -> Result<Epoch> {
        let order = self.order(epoch);
        let b = self.config.batch_size;
        let batches: Vec<(usize, Vec<usize>)> = (first..self.len())
            .map(|i| (i, order[i * b..((i + 1) * b).min(order.len())].to_vec()))
            .collect();
        let seed = mix(self.config.seed ^ mix(epoch));
        let dataset: Arc<dyn Dataset> = self.dataset.clone();
        let load = Arc::new(move |number: usize, indices: Vec<usize>| {
            collate(&*dataset, &indices, seed).and_then(|h| upload(h, number, indices, device))
        });
        Ok(Epoch::start(batches, load, self.config))
    }
}

/// The host data of one batch: images `[B, C, H, W]` and labels.
struct HostBatch {
    dims: [usize; 4],
    images: Vec<f32>,
    labels: Vec<i64>,
}

/// Loads, stacks and uploads one batch (on a worker thread, so the upload overlaps the
/// consumer's compute; the backends take calls from any thread).
type Loader = Arc<dyn Fn(usize, Vec<usize>) -> Result<Batch> + Send + Sync>;

fn upload(host: HostBatch, number: usize, indices: Vec<usize>, device: Device) -> Result<Batch> {
    Ok(Batch {
        images: Tensor::from_slice(&host.images, host.dims, device)?,
        // (Built on the host and uploaded: backends without int64 kernels still hold
        // int64 data.)
        labels: Tensor::from_slice(&host.labels, [host.labels.len()], Device::Cpu)?
            .to_device(device)?,
        indices,
        number,
    })
}

/// Loads and stacks the examples `indices` (each with its own augmentation stream).
fn collate(dataset: &dyn Dataset, indices: &[usize], seed: u64) -> Result<HostBatch> {
    let mut images = Vec::new();
    let mut labels = Vec::with_capacity(indices.len());
    let mut dims = None;
    for &i in indices {
        let mut rng = SampleRng::new(mix(seed ^ mix(i as u64)));
        let s = dataset.get(i, &mut rng)?;
        let d = (s.image.channels(), s.image.height(), s.image.width());
        match dims {
            None => dims = Some(d),
            Some(first) if first != d => {
                return Err(Error::shape(
                    "DataLoader",
                    format!("example {i} is {d:?} (C, H, W) but the batch's first is {first:?}: resize or crop to one size"),
                ))
            }
            Some(_) => {}
        }
        match s.image.pixels() {
            Pixels::U8(v) => images.extend(v.iter().map(|&b| f32::from(b))),
            Pixels::F32(v) => images.extend_from_slice(v),
        }
        labels.push(s.label);
    }
    let (c, h, w) = dims.unwrap_or((0, 0, 0));
    Ok(HostBatch {
        dims: [indices.len(), c, h, w],
        images,
        labels,
    })
}

/// The worker threads of an epoch: they take batch numbers from `jobs` and send the loaded
/// batches back; dropping the job sender stops them.
struct Workers {
    jobs: Option<Sender<(usize, Vec<usize>)>>,
    results: Receiver<(usize, Result<Batch>)>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            // A worker that panicked has already reported nothing more; the epoch is over.
            let _ = t.join();
        }
    }
}

/// An epoch's batches in order (an iterator of `Result<Batch>`); with workers, up to
/// `num_workers × prefetch` batches are loaded and uploaded to the device ahead of the
/// consumer, overlapping its compute.
pub struct Epoch {
    batches: std::vec::IntoIter<(usize, Vec<usize>)>,
    pending: std::collections::VecDeque<usize>,
    ready: BTreeMap<usize, Result<Batch>>,
    load: Loader,
    workers: Option<Workers>,
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch")
            .field("remaining", &(self.batches.len() + self.pending.len()))
            .field(
                "workers",
                &self.workers.as_ref().map_or(0, |w| w.threads.len()),
            )
            .finish()
    }
}

impl Epoch {
    fn start(batches: Vec<(usize, Vec<usize>)>, load: Loader, config: DataLoaderConfig) -> Epoch {
        let mut epoch = Epoch {
            batches: batches.into_iter(),
            pending: Default::default(),
            ready: BTreeMap::new(),
            load,
            workers: None,
        };
        if config.num_workers > 0 {
            let (job_tx, job_rx) = channel::<(usize, Vec<usize>)>();
            let (res_tx, res_rx) = channel();
            let job_rx = Arc::new(Mutex::new(job_rx));
            let threads = (0..config.num_workers)
                .map(|_| {
                    let (jobs, results, load) =
                        (job_rx.clone(), res_tx.clone(), epoch.load.clone());
                    std::thread::spawn(move || loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((number, indices)) = job else { return };
                        // A dataset that panics fails its batch instead of leaving the consumer
                        // waiting for it forever.
                        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            load(number, indices)
                        }))
                        .unwrap_or_else(|_| {
                            Err(Error::invalid(
                                "DataLoader",
                                format!("the dataset panicked while loading batch {number}"),
                            ))
                        });
                        if results.send((number, loaded)).is_err() {
                            return;
                        }
                    })
                })
                .collect();
            epoch.workers = Some(Workers {
                jobs: Some(job_tx),
                results: res_rx,
                threads,
            });
            for _ in 0..config.num_workers * config.prefetch {
                epoch.submit();
            }
        }
        epoch
    }

    /// Hands the next batch to the workers.
    fn submit(&mut self) {
        if let (Some(w), Some(job)) = (&self.workers, self.batches.next()) {
            self.pending.push_back(job.0);
            if let Some(tx) = &w.jobs {
                // A send fails only when every worker has exited; `next` then reports it.
                let _ = tx.send(job);
            }
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.workers.is_none() {
            let (number, indices) = self.batches.next()?;
            return Some((self.load)(number, indices));
        }
        let number = self.pending.pop_front()?;
        loop {
            if let Some(batch) = self.ready.remove(&number) {
                self.submit();
                return Some(batch);
            }
            let received = self.workers.as_ref().map(|w| w.results.recv());
            match received {
                Some(Ok((n, batch))) => {
                    self.ready.insert(n, batch);
                }
                _ => {
                    return Some(Err(Error::invalid(
                        "DataLoader",
                        format!(
                            "the worker threads stopped before batch {number} (a worker panicked)"
                        ),
                    )))
                }
            }
        }
    }
}
