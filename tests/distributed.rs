//! Data-parallel training over MPI, proven against one process (feature `mpi`; Open MPI's
//! `mpirun`).
//!
//! Each `#[test]` here launches `mpirun -np 2` on this test binary, running one of the
//! `#[ignore]`d `rank_*` functions in each rank (they return at once when not started by
//! mpirun); the ranks write what they computed to files that the test compares with the same
//! training done in this process on the whole batch.

use hemi::distributed::{
    convert_sync_batchnorm, Communicator, DdpConfig, DistributedDataParallel, SingleProcess,
};
use hemi::nn::{resnet18, BatchNorm2d, Linear, Module, ReLU, Sequential};
use hemi::optim::Optimizer;
use hemi::{
    manual_seed, CrossEntropySpec, DType, Device, Generator, Result, Sgd, SgdConfig, Tensor,
};
use std::sync::Arc;

/// The full batch every test trains on (the same on every rank) and labels.
fn batch(seed: u64, dims: &[usize], classes: i64) -> Result<(Tensor, Tensor)> {
    let mut g = Generator::new(seed);
    let x = Tensor::randn_with(&mut g, dims.to_vec(), DType::F32, Device::Cpu)?;
    let y: Vec<i64> = (0..dims[0]).map(|_| g.int(0, classes)).collect();
    Ok((x, Tensor::from_vec(y, [dims[0]], Device::Cpu)?))
}

/// Rows `rank·n/world .. (rank+1)·n/world` of a batch.
fn shard(t: &Tensor, rank: usize, world: usize) -> Result<Tensor> {
    let n = t.dims()[0] / world;
    t.narrow(0, rank * n, n)?.contiguous()
}

fn mlp() -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Linear::new(6, 16, true, Device::Cpu)?)
        .push(ReLU)
        .push(Linear::new(16, 5, true, Device::Cpu)?))
}

fn loss_of(model: &dyn Module, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    model
        .forward(x)?
        .to_dtype(DType::F32)?
        .cross_entropy(y, CrossEntropySpec::default())
}

fn state_values(model: &dyn Module) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (_, t) in model.state_dict() {
        out.extend(t.to_f64_vec()?);
    }
    Ok(out)
}

/// What the MLP run records: the gradients after a `no_sync` backward, then the final
/// parameters.
struct MlpRun {
    local_grads: Vec<f64>,
    params: Vec<f64>,
}

/// Three synchronized SGD steps, then one step accumulated over two micro-batches (the first
/// backward inside `no_sync`). `comm` is the world; each rank trains on its shard.
fn train_mlp(comm: Arc<dyn Communicator>) -> Result<MlpRun> {
    let (rank, world) = (comm.rank(), comm.world_size());
    // Rank 1 starts from other weights: the wrapper must broadcast rank 0's.
    manual_seed(100 + rank as u64);
    let config = DdpConfig {
        bucket_cap_bytes: 256, // several buckets: they must start in the same order everywhere
        ..DdpConfig::default()
    };
    let model = DistributedDataParallel::new(mlp()?, comm, config)?;
    assert!(model.bucket_count() >= 3);
    let mut opt = Sgd::new(model.parameters(), SgdConfig::new(0.1))?;
    let (x, y) = batch(7, &[8, 6], 5)?;
    let (x, y) = (shard(&x, rank, world)?, shard(&y, rank, world)?);
    for _ in 0..3 {
        opt.zero_grad();
        loss_of(&model, &x, &y)?.backward()?;
        opt.step()?;
    }
    let (xa, ya) = batch(8, &[8, 6], 5)?;
    let (xb, yb) = batch(9, &[8, 6], 5)?;
    opt.zero_grad();
    {
        let _no_sync = model.no_sync();
        loss_of(&model, &shard(&xa, rank, world)?, &shard(&ya, rank, world)?)?.backward()?;
    }
    let mut local_grads = Vec::new();
    for p in model.parameters() {
        local_grads.extend(p.grad().expect("grad after backward").to_f64_vec()?);
    }
    loss_of(&model, &shard(&xb, rank, world)?, &shard(&yb, rank, world)?)?.backward()?;
    opt.step()?;
    Ok(MlpRun {
        local_grads,
        params: state_values(&model)?,
    })
}

/// The same as [`train_mlp`] without any wrapper, on the whole batch (rank 0's initial
/// weights), and the local gradient rank `rank_for_local` of `world` sees inside `no_sync`.
fn train_mlp_reference(rank_for_local: usize, world: usize) -> Result<MlpRun> {
    manual_seed(100);
    let model = mlp()?;
    let mut opt = Sgd::new(model.parameters(), SgdConfig::new(0.1))?;
    let (x, y) = batch(7, &[8, 6], 5)?;
    for _ in 0..3 {
        opt.zero_grad();
        loss_of(&model, &x, &y)?.backward()?;
        opt.step()?;
    }
    let (xa, ya) = batch(8, &[8, 6], 5)?;
    let (xb, yb) = batch(9, &[8, 6], 5)?;
    // The local gradient of one rank's half of micro-batch A.
    opt.zero_grad();
    let (xl, yl) = (
        shard(&xa, rank_for_local, world)?,
        shard(&ya, rank_for_local, world)?,
    );
    loss_of(&model, &xl, &yl)?.backward()?;
    let mut local_grads = Vec::new();
    for p in model.parameters() {
        local_grads.extend(p.grad().expect("grad").to_f64_vec()?);
    }
    // The accumulated step: mean-loss gradients of A and B on the whole batch.
    opt.zero_grad();
    loss_of(&model, &xa, &ya)?.backward()?;
    loss_of(&model, &xb, &yb)?.backward()?;
    opt.step()?;
    Ok(MlpRun {
        local_grads,
        params: state_values(&model)?,
    })
}

/// ResNet-18 with synchronized batch norm, two SGD steps with momentum on 8 images of 64 px
/// (each rank 8 / world of them); the final parameters and buffers.
///
/// Conditioning: the gradient of a ReLU / max-pool network is discontinuous where two pooled
/// values tie or an activation crosses zero, so rounding differences (2 ranks convolve 4
/// images each, 1 process 8) can move a gradient by far more than the rounding itself. The
/// setting is one where that does not happen: with these data and lr 0.01, adding 1e-6 noise
/// to the input changed the second step's gradients by at most 4e-6 in a single process
/// (with lr 0.05 or 0.002 by 4e-3 and 8e-3: a max-pool tie flipped); 4 images of 32 px
/// (four values per channel in the last stage) are worse still. Returns the final parameters
/// and buffers.
fn train_resnet(comm: Arc<dyn Communicator>, sync_bn: bool) -> Result<Vec<f64>> {
    let (rank, world) = (comm.rank(), comm.world_size());
    manual_seed(200 + rank as u64);
    let mut net = resnet18(10, Device::Cpu)?;
    if sync_bn {
        assert_eq!(convert_sync_batchnorm(&mut net, Arc::clone(&comm)), 20);
    }
    let model = DistributedDataParallel::new(net, comm, DdpConfig::default())?;
    let config = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.01)
    };
    let mut opt = Sgd::new(model.parameters(), config)?;
    let (x, y) = batch(21, &[8, 3, 64, 64], 10)?;
    let (x, y) = (shard(&x, rank, world)?, shard(&y, rank, world)?);
    for _ in 0..2 {
        opt.zero_grad();
        loss_of(&model, &x, &y)?.backward()?;
        opt.step()?;
    }
    state_values(&model)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn synchronized_batch_norm_on_one_rank_equals_batch_norm() -> Result<()> {
    // The composite synchronized path (one rank: every all-reduce is the identity) against
    // the fused batch-norm kernel: output, input/affine gradients, running statistics.
    let run = |sync: bool| -> Result<Vec<f64>> {
        manual_seed(3);
        let mut bn = BatchNorm2d::new(3, Device::Cpu)?;
        bn.weight.assign(&Tensor::from_vec(
            vec![0.5f32, 1.5, -1.0],
            [3],
            Device::Cpu,
        )?)?;
        if sync {
            convert_sync_batchnorm(&mut bn, Arc::new(SingleProcess));
        }
        let x = Tensor::randn([5, 3, 3, 7], DType::F32, Device::Cpu)?
            .mul_scalar(2.0)?
            .add_scalar(0.7)?
            .requires_grad_(true)?;
        let w = Tensor::randn([5, 3, 3, 7], DType::F32, Device::Cpu)?;
        let y = bn.forward_relu(&x)?;
        y.mul(&w)?.sum_all()?.backward()?;
        let mut out = y.to_f64_vec()?;
        for t in [x.grad(), bn.weight.grad(), bn.bias.grad()] {
            out.extend(t.expect("grad").to_f64_vec()?);
        }
        out.extend(bn.running_mean.to_f64_vec()?);
        out.extend(bn.running_var.to_f64_vec()?);
        out.extend(bn.num_batches_tracked.to_f64_vec()?);
        Ok(out)
    };
    let (fused, synced) = (run(false)?, run(true)?);
    let d = max_abs_diff(&fused, &synced);
    assert!(d < 2e-5, "synchronized batch norm differs by {d}");
    Ok(())
}

#[test]
fn ddp_in_one_process_is_plain_training() -> Result<()> {
    let ddp = train_mlp(Arc::new(SingleProcess))?;
    let plain = train_mlp_reference(0, 1)?;
    // One rank: the same ops on the same data (the accumulated step's order differs only in
    // where the two gradients are added).
    let d = max_abs_diff(&ddp.params, &plain.params);
    assert!(d < 1e-6, "one-rank DDP differs from plain training by {d}");
    let d = max_abs_diff(&ddp.local_grads, &plain.local_grads);
    assert!(d < 1e-6, "one-rank no_sync gradients differ by {d}");
    Ok(())
}

#[test]
fn resnet18_with_synchronized_batch_norm_in_one_process_trains_like_batch_norm() -> Result<()> {
    let synced = train_resnet(Arc::new(SingleProcess), true)?;
    let plain = train_resnet(Arc::new(SingleProcess), false)?;
    let d = max_abs_diff(&synced, &plain);
    // The composite and the fused batch norm round differently (≤ 2e-5 per layer, the test
    // above); through 20 of them and two momentum steps that grows chaotically with every
    // other rounding choice: 0.8e-6 or 2.9e-5 (values near 1) depending only on how the CPU
    // groups the weight-gradient chunk sums, 2.2e-5 with the gemm crate's kernels. Wrong
    // statistics (e.g. a biased running variance: 1/31 at the last stage) differ by far more.
    assert!(
        d < 1e-4,
        "synchronized batch norm (one rank) differs by {d}"
    );
    Ok(())
}

#[cfg(feature = "mpi")]
mod mpi_ranks {
    use super::*;
    use hemi::amp::{autocast, GradScaler, GradScalerConfig};
    use hemi::distributed::{found_inf_sync, MpiCommunicator};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// `mpirun`, or `None` after saying why the test skips.
    fn mpirun(test: &str) -> Option<PathBuf> {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("mpirun"))
                .find(|p| p.is_file())
        });
        if found.is_none() {
            eprintln!(
                "{test}: skipped: `mpirun` is not on PATH (install Open MPI: apt-get install \
                 openmpi-bin libopenmpi-dev)"
            );
        }
        found
    }

    /// Runs `child` (a `rank_*` function of this binary) in `np` ranks, killing the job after
    /// `limit`; returns its output and how long it ran.
    fn launch(
        mpirun: &Path,
        child: &str,
        np: usize,
        env: &[(&str, String)],
        limit: Duration,
    ) -> (Output, Duration) {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(mpirun);
        cmd.args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &np.to_string(),
        ]);
        for (k, v) in env {
            cmd.env(k, v);
            cmd.args(["-x", k]);
        }
        // Output goes to files (a pipe nobody reads until the end could fill and stall it).
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = |name: &str| {
            let pid = std::process::id();
            std::env::temp_dir().join(format!("hemi-mpirun-{child}-{pid}-{run}.{name}"))
        };
        let (out_path, err_path) = (log("out"), log("err"));
        cmd.arg(exe)
            .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
            .arg(format!("mpi_ranks::{child}"))
            .stdout(Stdio::from(
                std::fs::File::create(&out_path).expect("log file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&err_path).expect("log file"),
            ));
        let start = Instant::now();
        let mut proc = cmd.spawn().expect("start mpirun");
        let status = loop {
            if let Some(status) = proc.try_wait().expect("poll mpirun") {
                break status;
            }
            if start.elapsed() > limit {
                let _ = proc.kill();
                break proc.wait().expect("mpirun status");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let read = |p: &Path| std::fs::read(p).unwrap_or_default();
        let out = Output {
            status,
            stdout: read(&out_path),
            stderr: read(&err_path),
        };
        let _ = (
            std::fs::remove_file(out_path),
            std::fs::remove_file(err_path),
        );
        (out, start.elapsed())
    }

    /// Runs `child` on 2 ranks with `HEMI_DIST_OUT` set to a fresh folder and returns the
    /// folder the ranks wrote into (the caller removes it), or `None` after saying why the
    /// test skips.
    fn run_two_ranks(test: &str, child: &str, tag: &str, limit: Duration) -> Option<PathBuf> {
        let mpirun = mpirun(test)?;
        let dir = out_dir(tag);
        let env = [("HEMI_DIST_OUT", dir.display().to_string())];
        let (out, _) = launch(&mpirun, child, 2, &env, limit);
        assert_ran(&out, test);
        Some(dir)
    }

    /// The values both ranks wrote as `<file>-0` and `<file>-1`.
    fn read_ranks(dir: &Path, file: &str) -> (Vec<f64>, Vec<f64>) {
        let read = |r: usize| read_values(dir.join(format!("{file}-{r}")));
        (read(0), read(1))
    }

    fn out_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hemi-dist-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn write_values(path: PathBuf, v: &[f64]) {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).expect("write rank result");
    }

    fn read_values(path: PathBuf) -> Vec<f64> {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }

    fn assert_ran(out: &Output, what: &str) {
        assert!(
            out.status.success(),
            "{what}: mpirun failed ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The rank's communicator and output folder, or `None` outside mpirun.
    fn rank_setup() -> Option<(Arc<dyn Communicator>, PathBuf)> {
        if !MpiCommunicator::launched_by_mpirun() {
            eprintln!("not started by mpirun: this is one rank of a test in this file");
            return None;
        }
        let timeout = std::env::var("HEMI_TEST_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120);
        let comm = MpiCommunicator::init()
            .expect("MPI init")
            .with_timeout(Duration::from_secs(timeout));
        let dir = PathBuf::from(std::env::var("HEMI_DIST_OUT").expect("HEMI_DIST_OUT"));
        Some((Arc::new(comm), dir))
    }

    #[test]
    #[ignore = "one rank of two_ranks_train_as_one_process_on_the_whole_batch (started by mpirun)"]
    fn rank_mlp() {
        let Some((comm, dir)) = rank_setup() else {
            return;
        };
        let r = comm.rank();
        let run = train_mlp(comm).expect("rank training");
        write_values(dir.join(format!("local-{r}")), &run.local_grads);
        write_values(dir.join(format!("params-{r}")), &run.params);
    }

    #[test]
    fn two_ranks_train_as_one_process_on_the_whole_batch() {
        let Some(dir) = run_two_ranks(
            "two_ranks_train_as_one_process_on_the_whole_batch",
            "rank_mlp",
            "mlp",
            Duration::from_secs(120),
        ) else {
            return;
        };
        let (p0, p1) = read_ranks(&dir, "params");
        assert_eq!(p0, p1, "the ranks' parameters differ");
        let reference = train_mlp_reference(0, 2).expect("reference");
        let d = max_abs_diff(&p0, &reference.params);
        eprintln!("2 ranks vs 1 process on the whole batch: max |Δparam| = {d:.3e}");
        assert!(d < 1e-5, "2-rank training differs from 1 process by {d}");
        // Inside no_sync each rank kept its own gradient.
        for r in 0..2 {
            let local = read_values(dir.join(format!("local-{r}")));
            let expected = train_mlp_reference(r, 2).expect("reference").local_grads;
            let d = max_abs_diff(&local, &expected);
            assert!(d < 1e-6, "rank {r}'s no_sync gradient was changed ({d})");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    #[ignore = "one rank of sync_batchnorm_resnet18_on_two_ranks_equals_one_process"]
    fn rank_resnet() {
        let Some((comm, dir)) = rank_setup() else {
            return;
        };
        let r = comm.rank();
        let state = train_resnet(comm, true).expect("rank training");
        write_values(dir.join(format!("state-{r}")), &state);
    }

    #[test]
    fn sync_batchnorm_resnet18_on_two_ranks_equals_one_process() {
        let Some(dir) = run_two_ranks(
            "sync_batchnorm_resnet18_on_two_ranks_equals_one_process",
            "rank_resnet",
            "resnet",
            Duration::from_secs(300),
        ) else {
            return;
        };
        let (s0, s1) = read_ranks(&dir, "state");
        assert_eq!(s0, s1, "the ranks' parameters and buffers differ");
        let reference = train_resnet(Arc::new(SingleProcess), false).expect("reference");
        let d = max_abs_diff(&s0, &reference);
        eprintln!("ResNet-18 SyncBN, 2 ranks vs 1 process: max |Δ| = {d:.3e}");
        // The same bound as the one-process comparison of synchronized and fused batch norm
        // (`resnet18_with_synchronized_batch_norm_in_one_process_trains_like_batch_norm`):
        // rounding differences grow chaotically through 20 layers and two momentum steps. On
        // an AVX2-only CPU (the `gemm` crate's kernels) this comparison reads 2.14e-5, at a
        // stem weight of 0.0092. (Wrong statistics differ by far more, see that test; ranks
        // normalizing with their own half batches already fail the equality above.)
        assert!(d < 1e-4, "2-rank ResNet-18 differs from 1 process by {d}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// fp16 autocast + GradScaler; rank 1's input is inf at step 1 (gradients averaged: both
    /// see NaN) and at step 2 inside `no_sync` (gradients not averaged: the scaler's
    /// found_inf sync must make rank 0 skip too). Writes scale, skipped steps, whether the
    /// parameters changed at steps 1 and 2, and the final parameters.
    #[test]
    #[ignore = "one rank of an_overflow_on_one_rank_skips_the_step_on_both"]
    fn rank_overflow() {
        let Some((comm, dir)) = rank_setup() else {
            return;
        };
        let r = comm.rank();
        manual_seed(5);
        let model =
            DistributedDataParallel::new(mlp().expect("mlp"), comm.clone(), DdpConfig::default())
                .expect("ddp");
        let mut opt = Sgd::new(model.parameters(), SgdConfig::new(0.1)).expect("sgd");
        let mut scaler = GradScaler::new(GradScalerConfig::default()).expect("scaler");
        scaler.set_found_inf_sync(Some(found_inf_sync(comm.clone())));
        let (x, y) = batch(7, &[8, 6], 5).expect("batch");
        let (x, y) = (shard(&x, r, 2).expect("x"), shard(&y, r, 2).expect("y"));
        let mut unchanged = Vec::new();
        for step in 0..4 {
            let before = state_values(&model).expect("state");
            opt.zero_grad();
            let poison = r == 1 && (step == 1 || step == 2);
            let xs = if poison {
                x.mul_scalar(f64::INFINITY).expect("inf")
            } else {
                x.clone()
            };
            let _no_sync = (step == 2).then(|| model.no_sync());
            let loss = {
                let _ac = autocast(DType::F16).expect("autocast");
                loss_of(&model, &xs, &y).expect("loss")
            };
            scaler
                .scale(&loss)
                .expect("scale")
                .backward()
                .expect("backward");
            scaler.step(&mut opt).expect("step");
            scaler.update(None).expect("update");
            unchanged.push(f64::from(u8::from(
                before == state_values(&model).expect("state"),
            )));
        }
        let mut v = vec![
            scaler.get_scale().expect("scale"),
            scaler.skipped_steps().expect("skipped") as f64,
        ];
        v.extend(unchanged);
        v.extend(state_values(&model).expect("state"));
        write_values(dir.join(format!("amp-{r}")), &v);
    }

    #[test]
    fn an_overflow_on_one_rank_skips_the_step_on_both() {
        let Some(dir) = run_two_ranks(
            "an_overflow_on_one_rank_skips_the_step_on_both",
            "rank_overflow",
            "amp",
            Duration::from_secs(120),
        ) else {
            return;
        };
        let (a0, a1) = read_ranks(&dir, "amp");
        assert_eq!(a0, a1, "the ranks disagree on scale, skips or parameters");
        let init = GradScalerConfig::default().init_scale;
        assert_eq!(a0[0], init * 0.25, "the scale backs off twice");
        assert_eq!(a0[1], 2.0, "two skipped steps");
        assert_eq!(
            &a0[2..6],
            &[0.0, 1.0, 1.0, 0.0],
            "steps 1 and 2 skipped, 0 and 3 taken"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A model with a head only rank 0 uses, one no rank uses, and an op whose backward fails
    /// on demand (after the last layer's bucket has started).
    #[derive(Debug)]
    struct Probe {
        first: Linear,
        second: Linear,
        rank0_only: Linear,
        never: Linear,
        use_rank0_only: bool,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Module for Probe {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let h = self.first.forward(x)?;
            let fail = Arc::clone(&self.fail);
            let same = {
                let _g = hemi::no_grad();
                h.deep_copy()?
            };
            let h = hemi::autograd::custom_op(same, "maybe_fail", &[&h], move |g| {
                if fail.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(hemi::Error::Autograd("injected backward failure".into()));
                }
                Ok(vec![Some(g.clone())])
            });
            let out = self.second.forward(&h.relu()?)?;
            match self.use_rank0_only {
                true => out.add(&self.rank0_only.forward(x)?),
                false => Ok(out),
            }
        }
        fn visit_parameters(&self, prefix: &str, f: &mut hemi::nn::Visitor<'_>) {
            self.first.visit_parameters(&format!("{prefix}first."), f);
            self.second.visit_parameters(&format!("{prefix}second."), f);
            self.rank0_only
                .visit_parameters(&format!("{prefix}rank0_only."), f);
            self.never.visit_parameters(&format!("{prefix}never."), f);
        }
    }

    /// Writes: the gradients of a first backward, then those of a backward after a failed one
    /// (same weights and data), then per parameter whether it has a gradient (both times).
    #[test]
    #[ignore = "one rank of unused_parameters_and_a_failed_backward_behave_as_in_pytorch"]
    fn rank_probe() {
        let Some((comm, dir)) = rank_setup() else {
            return;
        };
        let r = comm.rank();
        manual_seed(8);
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = Probe {
            first: Linear::new(6, 16, true, Device::Cpu).expect("linear"),
            second: Linear::new(16, 5, true, Device::Cpu).expect("linear"),
            rank0_only: Linear::new(6, 5, false, Device::Cpu).expect("linear"),
            never: Linear::new(6, 5, false, Device::Cpu).expect("linear"),
            use_rank0_only: r == 0,
            fail: Arc::clone(&fail),
        };
        let config = DdpConfig {
            bucket_cap_bytes: 256,
            ..DdpConfig::default()
        };
        let model = DistributedDataParallel::new(probe, comm, config).expect("ddp");
        let (x, y) = batch(7, &[8, 6], 5).expect("batch");
        let (x, y) = (shard(&x, r, 2).expect("x"), shard(&y, r, 2).expect("y"));
        let grads = |model: &dyn Module| -> (Vec<f64>, Vec<f64>) {
            let (mut values, mut present) = (Vec::new(), Vec::new());
            for p in model.parameters() {
                present.push(f64::from(u8::from(p.grad().is_some())));
                if let Some(g) = p.grad() {
                    values.extend(g.to_f64_vec().expect("grad"));
                }
            }
            (values, present)
        };
        loss_of(&model, &x, &y)
            .expect("loss")
            .backward()
            .expect("backward");
        let (first, present_first) = grads(&model);
        model.zero_grad();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = loss_of(&model, &x, &y).expect("loss").backward();
        assert!(
            err.is_err_and(|e| e.to_string().contains("injected backward failure")),
            "the failure reaches backward()"
        );
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        model.zero_grad();
        loss_of(&model, &x, &y)
            .expect("loss")
            .backward()
            .expect("backward after a failure");
        let (again, present_again) = grads(&model);
        let mut v = first;
        v.extend(again);
        v.extend(present_first);
        v.extend(present_again);
        write_values(dir.join(format!("probe-{r}")), &v);
    }

    #[test]
    fn unused_parameters_and_a_failed_backward_behave_as_in_pytorch() {
        let Some(dir) = run_two_ranks(
            "unused_parameters_and_a_failed_backward_behave_as_in_pytorch",
            "rank_probe",
            "probe",
            Duration::from_secs(120),
        ) else {
            return;
        };
        let (p0, p1) = read_ranks(&dir, "probe");
        assert_eq!(p0, p1, "both ranks hold the same gradients");
        // Parameters: first.weight, first.bias, second.weight, second.bias, rank0_only.weight
        // (used on rank 0 only: averaged onto both), never.weight (used nowhere: stays None).
        let present = &p0[p0.len() - 12..];
        assert_eq!(
            present,
            &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
        );
        let n = (p0.len() - 12) / 2;
        assert_eq!(
            &p0[..n],
            &p0[n..2 * n],
            "after a failed backward the next one averages as the first did"
        );
        assert!(p0[..n].iter().any(|&g| g != 0.0));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Rank 1 stops answering (sleeps) or dies before an all-reduce; rank 0 waits in it.
    #[test]
    #[ignore = "one rank of the failing-rank tests"]
    fn rank_failing() {
        let Some((comm, _)) = rank_setup() else {
            return;
        };
        let t = Tensor::ones([4], DType::F32, Device::Cpu).expect("tensor");
        comm.all_reduce(&t, hemi::distributed::ReduceOp::Sum)
            .expect("first all-reduce");
        if comm.rank() == 1 {
            match std::env::var("HEMI_TEST_FAILURE").as_deref() {
                Ok("die") => std::process::exit(3),
                _ => std::thread::sleep(Duration::from_secs(60)),
            }
        }
        comm.all_reduce(&t, hemi::distributed::ReduceOp::Sum)
            .expect("second all-reduce");
    }

    #[test]
    fn a_stuck_rank_makes_the_others_fail_within_the_timeout() {
        let Some(mpirun) = mpirun("a_stuck_rank_makes_the_others_fail_within_the_timeout") else {
            return;
        };
        let env = [
            ("HEMI_TEST_TIMEOUT_S", "2".to_string()),
            ("HEMI_TEST_FAILURE", "stall".to_string()),
            ("HEMI_DIST_OUT", std::env::temp_dir().display().to_string()),
        ];
        let (out, took) = launch(&mpirun, "rank_failing", 2, &env, Duration::from_secs(50));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the job must fail");
        assert!(
            err.contains("rank 0 of 2: all_reduce of 4 float32 values did not complete within 2s"),
            "no clear error from rank 0:\n{err}"
        );
        assert!(took < Duration::from_secs(30), "took {took:?}");
    }

    #[test]
    fn a_dead_rank_ends_the_job_instead_of_hanging() {
        let Some(mpirun) = mpirun("a_dead_rank_ends_the_job_instead_of_hanging") else {
            return;
        };
        let env = [
            ("HEMI_TEST_TIMEOUT_S", "20".to_string()),
            ("HEMI_TEST_FAILURE", "die".to_string()),
            ("HEMI_DIST_OUT", std::env::temp_dir().display().to_string()),
        ];
        let (out, took) = launch(&mpirun, "rank_failing", 2, &env, Duration::from_secs(50));
        assert!(!out.status.success(), "the job must fail");
        eprintln!("a dead rank ended the job in {took:?}");
        assert!(took < Duration::from_secs(40), "took {took:?}");
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn two_rank_tests_need_feature_mpi() {
    eprintln!(
        "skipped: the 2-rank MPI tests in tests/distributed.rs need `--features mpi` (and Open \
         MPI); the single-process tests above ran"
    );
}
