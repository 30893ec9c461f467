//! Data-parallel training across processes: one [`Communicator`] trait over existing
//! communication libraries — MPI for CPU tensors ([`MpiCommunicator`], feature `mpi`, Open MPI
//! through the `mpi` crate) and NCCL for CUDA tensors (`NcclCommunicator`, feature `cuda`,
//! `libnccl` loaded at run time) — and what PyTorch's `DistributedDataParallel` does on top:
//! [`DistributedDataParallel`] (parameters broadcast from rank 0, gradients averaged in buckets
//! that start reducing during the backward pass, `no_sync` for accumulation),
//! [`SyncBatchNorm`](convert_sync_batchnorm) statistics across ranks, and a GradScaler hook that
//! makes every rank skip the same steps. The dataset is sharded by
//! [`hemi::data::DistributedSampler`](crate::data::DistributedSampler).
//!
//! ```
//! use hemi::distributed::{Communicator, ReduceOp, SingleProcess};
//! use hemi::{Device, Tensor};
//! let comm = SingleProcess::new();
//! let t = Tensor::from_vec(vec![1.0f32, 2.0], [2], Device::Cpu)?;
//! comm.all_reduce(&t, ReduceOp::Sum)?; // one rank: unchanged
//! assert_eq!(t.to_vec::<f32>()?, vec![1.0, 2.0]);
//! assert_eq!((comm.rank(), comm.world_size()), (0, 1));
//! # Ok::<(), hemi::Error>(())
//! ```
//!
//! Launching (feature `mpi`): `mpirun -np 2 target/release/examples/train … --distributed` on
//! one machine; across machines the same binary with a hostfile, `mpirun -np 8 --hostfile
//! hosts …` (see the README).

mod comm;
mod ddp;
mod host;
#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "cuda")]
mod nccl;
mod sync_bn;

pub use comm::{Communicator, Completed, ReduceOp, SingleProcess, Work, DEFAULT_TIMEOUT};
pub use ddp::{DdpConfig, DistributedDataParallel, NoSyncGuard};
#[cfg(feature = "mpi")]
pub use mpi_comm::MpiCommunicator;
#[cfg(feature = "cuda")]
pub use nccl::{NcclCommunicator, NcclLibrary, NcclUniqueId};
pub use sync_bn::{all_reduce_differentiable, convert_sync_batchnorm, found_inf_sync};
