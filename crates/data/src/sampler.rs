//! [`DistributedSampler`]: each rank's share of an epoch (PyTorch's
//! `torch.utils.data.DistributedSampler`).

use hemi_engine::{Error, Result};

/// Splits every epoch's order among `world_size` ranks: rank `r` takes positions
/// `r, r + world_size, r + 2·world_size, …` of the epoch's order (the same permutation on
/// every rank, since it is drawn from the loader's seed and the epoch). Without `drop_last`
/// the order is padded by repeating its start until it divides evenly, so every rank gets
/// `ceil(len / world_size)` examples (the padded last batch repeats examples from the start);
/// with it the tail is dropped and every rank gets `floor(len / world_size)`. Every rank must
/// use the same seed.
///
/// ```
/// use hemi_data::DistributedSampler;
/// let s = DistributedSampler::new(1, 3)?;
/// assert_eq!(s.shard(&[7, 8, 9, 10, 11, 12, 13]), vec![8, 11, 7]); // padded with the start
/// assert_eq!(s.num_samples(7), 3);
/// # Ok::<(), hemi_engine::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributedSampler {
    rank: usize,
    world_size: usize,
    drop_last: bool,
}

impl DistributedSampler {
    /// Rank `rank`'s share among `world_size` ranks, padded (PyTorch's default).
    pub fn new(rank: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            return Err(Error::invalid(
                "DistributedSampler",
                format!("rank {rank} is out of range for a world of {world_size} ranks"),
            ));
        }
        Ok(DistributedSampler {
            rank,
            world_size,
            drop_last: false,
        })
    }

    /// Drops the tail that does not divide evenly instead of padding.
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }

    /// This sampler's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Examples per rank for a dataset of `len`.
    pub fn num_samples(&self, len: usize) -> usize {
        if self.drop_last {
            len / self.world_size
        } else {
            len.div_ceil(self.world_size)
        }
    }

    /// This rank's indices out of an epoch's `order`.
    pub fn shard(&self, order: &[usize]) -> Vec<usize> {
        let total = self.num_samples(order.len()) * self.world_size;
        if order.is_empty() {
            return Vec::new();
        }
        (self.rank..total)
            .step_by(self.world_size)
            .map(|i| order[i % order.len()])
            .collect()
    }
}
