//! `hemi-fuzz`: runs the harness for a number of op calls and checkpoint inputs (or a time
//! limit) and prints the counts; exits non-zero on any finding.

use clap::Parser;
use hemi_fuzz::{devices, driver, Config};
use std::process::ExitCode;

/// Fuzz hemi's op API and checkpoint loader.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Seed of all inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Public API calls to make in op programs.
    #[arg(long, default_value_t = 100_000)]
    op_calls: u64,
    /// Checkpoint inputs to load.
    #[arg(long, default_value_t = 10_000)]
    checkpoints: u64,
    /// Time limit of each phase, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    max_seconds: f64,
    /// Ops per program.
    #[arg(long, default_value_t = 12)]
    program_len: usize,
    /// Only the CPU (skip the emulator and GPUs).
    #[arg(long)]
    cpu_only: bool,
    /// Replay one op program of the seed and print it.
    #[arg(long)]
    replay: Option<u64>,
    /// Start at this op program (to resume near a finding).
    #[arg(long, default_value_t = 0)]
    first_program: u64,
    /// Print every op before it runs.
    #[arg(long)]
    trace: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let devs = if a.cpu_only {
        vec![hemi::Device::Cpu]
    } else {
        devices()
    };
    let cfg = Config {
        seed: a.seed,
        op_calls: a.op_calls,
        checkpoint_inputs: a.checkpoints,
        max_seconds: a.max_seconds,
        devices: devs.clone(),
        program_len: a.program_len,
        hang_seconds: 120,
        trace: a.trace || a.replay.is_some(),
        first_program: a.first_program,
    };
    if let Some(i) = a.replay {
        let mut r = hemi_fuzz::Report::default();
        return match driver::run_program(&cfg, i, &mut r) {
            Ok(()) => {
                println!(
                    "program {i} of seed {}: no finding ({} calls)",
                    a.seed, r.op_calls
                );
                ExitCode::SUCCESS
            }
            Err(f) => {
                println!("{}\n{}", f.input, f.message);
                ExitCode::FAILURE
            }
        };
    }
    let r = driver::run(&cfg);
    println!("{:<22} {:>10} {:>10}", "op", "ok", "err");
    for (name, (ok, err)) in &r.per_op {
        println!("{name:<22} {ok:>10} {err:>10}");
    }
    for f in &r.findings {
        println!(
            "FINDING ({} input {}): {}\n{}",
            f.kind, f.index, f.message, f.input
        );
    }
    println!("hemi-fuzz {}", r.summary(&cfg));
    if r.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
