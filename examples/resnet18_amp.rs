//! The reference program of DESIGN.md §1: ResNet-18 trained with Adam on one random batch,
//! printing `Epoch {i}: Loss = {loss}` each epoch, under fp16 autocast with a GradScaler by
//! default (`--amp bf16` uses bfloat16 without a scaler, `--amp off` trains in fp32).
//! `--device cuda` (or `cuda-sim`, the emulator) needs `--features cuda`.
//!
//! ```text
//! cargo run --release --example resnet18_amp                       # the seed's settings
//! cargo run --release --example resnet18_amp -- --image-size 64 --batch-size 8
//! cargo run --release --features cuda --example resnet18_amp -- --device cuda-sim \
//!     --image-size 32 --batch-size 2 --epochs 3                    # ~25 s a step, emulated
//! cargo run --release --features cuda --example resnet18_amp -- --device cuda --channels-last
//! ```

use clap::Parser;
use hemi::amp::{autocast, GradScaler, GradScalerConfig};
use hemi::nn::{resnet18, Module};
use hemi::optim::{Adam, AdamConfig, Optimizer};
use hemi::{
    manual_seed, memory_stats, CrossEntropySpec, DType, Device, Error, MemoryFormat, Result, Tensor,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Instant;

/// Train ResNet-18 on a random batch, as the PyTorch AMP seed program does.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Height and width of the random images.
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Training steps (one batch per epoch, as in the seed).
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Classes of the classifier and of the random targets.
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the data and of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `cpu`, `cuda` / `cuda:N` (a GPU), or `cuda-sim` (the emulator); CUDA needs `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Mixed precision: `fp16` (autocast + GradScaler, the seed's recipe), `bf16` (autocast,
    /// no scaler) or `off` (fp32).
    #[arg(long, default_value = "fp16")]
    amp: String,
    /// Run the model channels-last (`Module::to_memory_format`): NHWC activations, the layout
    /// of the Tensor-Core convolutions (as `model.to(memory_format=torch.channels_last)`).
    #[arg(long)]
    channels_last: bool,
}

fn parse_amp(s: &str) -> Result<Option<DType>> {
    match s {
        "fp16" => Ok(Some(DType::F16)),
        "bf16" => Ok(Some(DType::BF16)),
        "off" => Ok(None),
        other => Err(Error::InvalidArgument {
            op: "--amp",
            msg: format!("unknown mode `{other}` (fp16, bf16, off)"),
        }),
    }
}

/// Prints `log` records (the scaler's overflow line) to stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

impl Args {
    /// Rejects flags no run can use, naming the flag (huge sizes pass: they end in
    /// `Err(OutOfMemory)` when the first tensor is allocated, not in an abort).
    fn validate(&self) -> Result<()> {
        let positive = [
            ("--batch-size", self.batch_size),
            ("--image-size", self.image_size),
            ("--num-classes", self.num_classes),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(Error::invalid(
                    "resnet18_amp",
                    format!("{flag} must be at least 1"),
                ));
            }
        }
        if i64::try_from(self.num_classes).is_err() {
            return Err(Error::invalid(
                "resnet18_amp",
                format!(
                    "--num-classes {} is beyond int64 class indices",
                    self.num_classes
                ),
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(Error::invalid(
                "resnet18_amp",
                format!("--lr {} must be finite and non-negative", self.lr),
            ));
        }
        Ok(())
    }
}

fn run(args: &Args) -> Result<()> {
    args.validate()?;
    #[cfg(feature = "cuda")]
    if args.device != "cpu" {
        let status = hemi::cuda::init();
        if let Some(why) = &status.gpu_unavailable {
            eprintln!("note: no CUDA GPU: {why}");
        }
    }
    let device = args.device.parse::<Device>()?;
    let amp = parse_amp(&args.amp)?;
    manual_seed(args.seed);
    let mut model = resnet18(args.num_classes, device)?;
    if args.channels_last {
        model.to_memory_format(MemoryFormat::ChannelsLast);
    }
    let fused = amp.is_some();
    let mut opt = Adam::new(
        model.parameters(),
        AdamConfig::adam().lr(args.lr).fused(fused),
    )?;
    // bf16 has fp32's exponent range: no loss scaling needed, as in PyTorch.
    let mut scaler = GradScaler::new(GradScalerConfig {
        enabled: amp == Some(DType::F16),
        ..Default::default()
    })?;
    scaler.set_param_names(model.named_parameters());
    let (b, s) = (args.batch_size, args.image_size);
    let data = Tensor::randn([b, 3, s, s], DType::F32, device)?;
    let target = Tensor::randint(0, args.num_classes as i64, [b], device)?;
    println!(
        "resnet18: {} parameters, batch {b}x3x{s}x{s}, {} classes, {} epochs on {device}, amp {}{}",
        model.num_parameters(),
        args.num_classes,
        args.epochs,
        amp.map_or("off (fp32)".to_string(), |d| d.to_string()),
        if args.channels_last {
            ", channels-last"
        } else {
            ""
        }
    );
    let bar = ProgressBar::new(args.epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    for epoch in 0..args.epochs {
        let t0 = Instant::now();
        opt.zero_grad();
        let loss = {
            let _region = amp.map(autocast).transpose()?;
            model
                .forward(&data)?
                .cross_entropy(&target, CrossEntropySpec::default())?
        };
        scaler.scale(&loss)?.backward()?;
        scaler.step(&mut opt)?;
        scaler.update(None)?;
        let dt = t0.elapsed().as_secs_f64();
        let loss = loss.item()?;
        let scale = scaler.get_scale()?;
        bar.suspend(|| println!("Epoch {epoch}: Loss = {loss:.6} (scale {scale})"));
        bar.set_message(format!("step {dt:.2}s, {:.1} img/s", b as f64 / dt));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let total = start.elapsed().as_secs_f64();
    let mem = memory_stats(device);
    println!(
        "done: {total:.2}s total, {:.1} images/s, peak memory {:.1} MiB on {device}, {} skipped steps, final scale {}",
        b as f64 * args.epochs as f64 / total,
        mem.peak as f64 / (1 << 20) as f64,
        scaler.skipped_steps()?,
        scaler.get_scale()?
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The CPU backend's pool with this thread as one of its workers (ops are not handed to
    // another thread and back); harmless where the pool exists or the device is a GPU.
    if let Err(e) = hemi::cpu::init_threads(None) {
        eprintln!("note: {e}");
    }
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        let argv = std::iter::once("resnet18_amp").chain(flags.iter().copied());
        Args::try_parse_from(argv).expect("flags parse")
    }

    fn fails_with(flags: &[&str], words: &[&str]) {
        let err = run(&args(flags))
            .expect_err("the run must fail")
            .to_string();
        for w in words {
            assert!(err.contains(w), "{err:?} should mention {w:?}");
        }
    }

    #[test]
    fn flags_no_run_can_use_are_errors_naming_the_flag() {
        fails_with(&["--batch-size", "0"], &["--batch-size"]);
        fails_with(&["--image-size", "0"], &["--image-size"]);
        fails_with(&["--num-classes", "0"], &["--num-classes"]);
        fails_with(
            &["--num-classes", &u64::MAX.to_string()],
            &["--num-classes"],
        );
        for lr in ["--lr=inf", "--lr=NaN", "--lr=-0.1"] {
            fails_with(&[lr], &["--lr"]);
        }
    }

    /// Sizes too large for memory end in `Err(OutOfMemory)` or an overflow error, not in an
    /// abort or a panic (each would kill this test process).
    #[test]
    fn huge_sizes_are_errors_not_aborts() {
        fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
            [&["--epochs", "1", "--amp", "off"][..], extra].concat()
        }
        fails_with(
            &with(&["--batch-size", "1099511627776", "--image-size", "8"]),
            &["out of memory"],
        );
        fails_with(
            &with(&["--image-size", "4294967296", "--batch-size", "1"]),
            &["more elements than a buffer can hold"],
        );
        fails_with(
            &with(&["--num-classes", "1000000000000"]),
            &["out of memory"],
        );
    }
}
