//! Data-parallel throughput and all-reduce bandwidth over MPI (feature `mpi`, Open MPI).
//!
//! `cargo bench --features mpi --bench distributed` runs the 1-process training step here,
//! then starts itself under `mpirun -np 2` for the 2-rank step and an all-reduce sweep that
//! times hemi's `MpiCommunicator::all_reduce` (host staging of the tensor + non-blocking
//! `MPI_Iallreduce` polled with a timeout) against MPI's own blocking `MPI_Allreduce` on the
//! same message size (the osu_allreduce method: warm-up, then the mean over many calls after a
//! barrier), and prints one table.
//!
//! Training: ResNet-18, 32 px (`HEMI_BENCH_IMAGE=64` for 64), a global batch of 16 (8 per rank with 2 ranks), SGD with
//! momentum; 1 process uses both cores (2 threads), each of 2 ranks one thread
//! (`RAYON_NUM_THREADS=1`), so both runs use the same 2 cores.

use hemi::distributed::{
    Communicator, DdpConfig, DistributedDataParallel, MpiCommunicator, ReduceOp,
};
use hemi::nn::{resnet18, Module};
use hemi::optim::Optimizer;
use hemi::{manual_seed, CrossEntropySpec, DType, Device, Result, Sgd, SgdConfig, Tensor};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const GLOBAL_BATCH: usize = 16;
const WARMUP: usize = 2;
const STEPS: usize = 6;

/// Image side: `HEMI_BENCH_IMAGE` (default 32; the 2-rank run inherits it).
fn image() -> usize {
    std::env::var("HEMI_BENCH_IMAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// Median seconds per training step of ResNet-18 on this rank's share of the global batch.
fn train_step_seconds(comm: Arc<dyn Communicator>) -> Result<f64> {
    let world = comm.world_size();
    manual_seed(0);
    let model =
        DistributedDataParallel::new(resnet18(10, Device::Cpu)?, comm, DdpConfig::default())?;
    let config = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.01)
    };
    let mut opt = Sgd::new(model.parameters(), config)?;
    let local = GLOBAL_BATCH / world;
    let x = Tensor::randn([local, 3, image(), image()], DType::F32, Device::Cpu)?;
    let labels: Vec<i64> = (0..local as i64).map(|i| i % 10).collect();
    let y = Tensor::from_vec(labels, [local], Device::Cpu)?;
    let mut times = Vec::new();
    for step in 0..WARMUP + STEPS {
        let t = Instant::now();
        opt.zero_grad();
        let loss = model
            .forward(&x)?
            .cross_entropy(&y, CrossEntropySpec::default())?;
        loss.backward()?;
        opt.step()?;
        if step >= WARMUP {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Calls per message size: about 0.3 s of traffic at 1 GB/s, at least 10, at most 2000.
fn iterations(bytes: usize) -> usize {
    (300_000_000 / bytes.max(1)).clamp(10, 2000)
}

/// The all-reduce sweep: (bytes, MPI_Allreduce µs, hemi all_reduce µs), timed on rank 0.
fn sweep(comm: &MpiCommunicator) -> Result<Vec<(usize, f64, f64)>> {
    let world = SimpleCommunicator::world();
    let mut rows = Vec::new();
    for elems in [1usize << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22, 1 << 24] {
        let bytes = elems * 4;
        let n = iterations(bytes);
        let send = vec![1.0f32; elems];
        let mut recv = vec![0.0f32; elems];
        for _ in 0..5 {
            world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        }
        world.barrier();
        let t = Instant::now();
        for _ in 0..n {
            world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        }
        let mpi_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let tensor = Tensor::ones([elems], DType::F32, Device::Cpu)?;
        for _ in 0..5 {
            comm.all_reduce(&tensor, ReduceOp::Sum)?;
        }
        comm.barrier()?;
        let t = Instant::now();
        for _ in 0..n {
            comm.all_reduce(&tensor, ReduceOp::Sum)?;
        }
        let hemi_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        rows.push((bytes, mpi_us, hemi_us));
    }
    Ok(rows)
}

fn rank_main() -> Result<()> {
    let comm = Arc::new(MpiCommunicator::init()?);
    let rows = sweep(&comm)?;
    let step = train_step_seconds(comm.clone())?;
    if comm.rank() == 0 {
        for (bytes, mpi_us, hemi_us) in rows {
            println!("RESULT allreduce {bytes} {mpi_us} {hemi_us}");
        }
        println!("RESULT train {} {step}", comm.world_size());
    }
    Ok(())
}

fn main() -> Result<()> {
    if MpiCommunicator::launched_by_mpirun() {
        return rank_main();
    }
    let one = train_step_seconds(Arc::new(hemi::distributed::SingleProcess))?;
    let exe = std::env::current_exe().map_err(|e| hemi::Error::Io {
        path: "current_exe".into(),
        msg: e.to_string(),
    })?;
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .args(["-x", "RAYON_NUM_THREADS=1", "-x", "HEMI_BENCH_IMAGE"])
        .env("HEMI_BENCH_IMAGE", image().to_string())
        .arg(exe)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            eprintln!("mpirun failed:\n{}", String::from_utf8_lossy(&o.stderr));
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("skipped the 2-rank part: cannot run mpirun ({e}); install Open MPI");
            println!("1 process: {:.1} img/s", GLOBAL_BATCH as f64 / one);
            return Ok(());
        }
    };
    println!("all-reduce of f32 (2 ranks, this machine; bandwidth = message bytes / time)");
    println!("| message | MPI_Allreduce | hemi all_reduce | hemi / MPI time |");
    println!("|---|---|---|---|");
    let mut two = None;
    for line in out.lines().filter_map(|l| l.strip_prefix("RESULT ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["allreduce", bytes, mpi, hemi] => {
                let (b, m, h): (f64, f64, f64) = (
                    bytes.parse().unwrap_or(0.0),
                    mpi.parse().unwrap_or(0.0),
                    hemi.parse().unwrap_or(0.0),
                );
                println!(
                    "| {} KiB | {m:.1} µs ({:.2} GB/s) | {h:.1} µs ({:.2} GB/s) | {:.2}× |",
                    b / 1024.0,
                    b / m / 1e3,
                    b / h / 1e3,
                    h / m
                );
            }
            ["train", _, secs] => two = secs.parse::<f64>().ok(),
            _ => {}
        }
    }
    let one_ips = GLOBAL_BATCH as f64 / one;
    println!();
    println!(
        "ResNet-18 training step, {} px, global batch {GLOBAL_BATCH}, SGD, 2 cores",
        image()
    );
    println!("| ranks | step | images/s |");
    println!("|---|---|---|");
    println!("| 1 (2 threads) | {:.3} s | {one_ips:.1} |", one);
    if let Some(t) = two {
        let ips = GLOBAL_BATCH as f64 / t;
        println!(
            "| 2 (1 thread each) | {t:.3} s | {ips:.1} ({:.2}× of 1 rank) |",
            ips / one_ips
        );
    }
    Ok(())
}
