//! NCCL through `NcclCommunicator` (feature `cuda`): the library loads (from `HEMI_NCCL_LIB`,
//! which `scripts/test.sh` points at the `nvidia-nccl-cu13` wheel in `.cuda-toolchain/`, or
//! the loader's search), the emulator is refused with a clear error, and on a GPU host a
//! single-rank communicator reduces, broadcasts and drives DistributedDataParallel. Tests that
//! need what this machine lacks say that they skipped and why.
#![cfg(feature = "cuda")]

use hemi::distributed::{
    Communicator, DdpConfig, DistributedDataParallel, NcclCommunicator, NcclLibrary, ReduceOp,
};
use hemi::nn::{Linear, Module, ReLU, Sequential};
use hemi::{manual_seed, CrossEntropySpec, DType, Device, Generator, Result, Tensor};
use std::sync::Arc;

fn library(test: &str) -> Option<Arc<NcclLibrary>> {
    match NcclLibrary::get() {
        Ok(lib) => Some(lib),
        Err(e) => {
            eprintln!("{test}: skipped: {e}");
            None
        }
    }
}

fn gpu(test: &str) -> bool {
    match &hemi::cuda::init().gpu_unavailable {
        None => true,
        Some(why) => {
            eprintln!("{test}: skipped: needs a CUDA GPU ({why})");
            false
        }
    }
}

#[test]
fn nccl_loads_and_makes_unique_ids() -> Result<()> {
    let Some(lib) = library("nccl_loads_and_makes_unique_ids") else {
        return Ok(());
    };
    let (major, minor, patch) = lib.version()?;
    eprintln!("NCCL {major}.{minor}.{patch} from {}", lib.path());
    assert_eq!(major, 2, "an NCCL 2.x library");
    let (a, b) = (lib.unique_id()?, lib.unique_id()?);
    assert!(a.internal.iter().any(|&c| c != 0), "an id has content");
    assert_ne!(a.internal, b.internal, "two ids differ");
    Ok(())
}

#[test]
fn nccl_refuses_devices_that_are_not_gpus() {
    if library("nccl_refuses_devices_that_are_not_gpus").is_none() {
        return;
    }
    hemi::cuda::init();
    for device in [Device::CudaSim, Device::Cpu] {
        let e = NcclCommunicator::single(device).expect_err("not a GPU");
        assert!(
            e.to_string().contains("NCCL needs a CUDA GPU device"),
            "{device}: {e}"
        );
    }
}

#[test]
fn single_rank_nccl_reduces_broadcasts_and_trains_on_a_gpu() -> Result<()> {
    let test = "single_rank_nccl_reduces_broadcasts_and_trains_on_a_gpu";
    if library(test).is_none() || !gpu(test) {
        return Ok(());
    }
    let device = Device::Cuda(0);
    let comm: Arc<dyn Communicator> = Arc::new(NcclCommunicator::single(device)?);
    assert_eq!((comm.rank(), comm.world_size()), (0, 1));
    let mut g = Generator::new(1);
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let host = Tensor::randn_with(&mut g, [1023], dtype, Device::Cpu)?;
        let t = host.to_device(device)?;
        comm.all_reduce(&t, ReduceOp::Sum)?;
        comm.all_reduce(&t, ReduceOp::Max)?;
        comm.broadcast(&t, 0)?;
        assert_eq!(
            t.to_f64_vec()?,
            host.to_f64_vec()?,
            "{dtype}: one rank is the identity"
        );
    }
    comm.barrier()?;
    // DistributedDataParallel over NCCL equals plain training (one rank).
    let train = |ddp: bool| -> Result<Vec<f64>> {
        manual_seed(4);
        let net = Sequential::new()
            .push(Linear::new(6, 16, true, device)?)
            .push(ReLU)
            .push(Linear::new(16, 3, true, device)?);
        let model: Box<dyn Module> = match ddp {
            true => Box::new(DistributedDataParallel::new(
                net,
                Arc::clone(&comm),
                DdpConfig::default(),
            )?),
            false => Box::new(net),
        };
        let x = Tensor::randn([8, 6], DType::F32, device)?;
        let y = Tensor::from_vec(
            (0..8).map(|i| i % 3).collect::<Vec<i64>>(),
            [8],
            Device::Cpu,
        )?
        .to_device(device)?;
        model
            .forward(&x)?
            .cross_entropy(&y, CrossEntropySpec::default())?
            .backward()?;
        let mut out = Vec::new();
        for p in model.parameters() {
            out.extend(p.grad().expect("grad").to_f64_vec()?);
        }
        Ok(out)
    };
    assert_eq!(train(true)?, train(false)?);
    Ok(())
}

#[test]
fn two_gpu_nccl_needs_two_gpus_and_two_ranks() {
    // A 2-rank NCCL run needs two GPUs and an MPI launcher to exchange the unique id
    // (`NcclCommunicator::from_mpi`); this project's GPU host has one.
    let count = hemi::cuda::init()
        .devices
        .iter()
        .filter(|d| matches!(d, Device::Cuda(_)))
        .count();
    eprintln!(
        "two_gpu_nccl_needs_two_gpus_and_two_ranks: skipped: {count} CUDA GPU(s) here; a \
         2-rank NCCL run needs 2 and `mpirun -np 2` (see the README's multi-GPU launch)"
    );
}
