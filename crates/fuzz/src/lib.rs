//! # hemi-fuzz
//!
//! A fuzz harness for hemi that runs on stable Rust: `arbitrary` turns seeded random bytes
//! into op programs (random shapes — empty and overflowing ones included —, dtypes, devices,
//! views, gradients, autocast regions, optimizer steps; valid and invalid arguments) and into
//! checkpoint files (raw bytes, mutated valid files, hand-built headers). Every call must
//! return `Ok` or `Err`: a panic is a finding (caught, reported with the input that caused
//! it), an abort or a sanitizer report ends the process, and a watchdog aborts on a hang.
//!
//! ```text
//! cargo run --release -p hemi-fuzz --features cuda -- --op-calls 10000000 --checkpoints 1000000
//! cargo run --release -p hemi-fuzz --features cuda -- --seed 7 --replay 1234   # one program
//! ```
//! CI runs a short slice (`tests/slice.rs`) on every change.

pub mod checkpoints;
pub mod draw;
pub mod driver;
pub mod ops;

pub use driver::{run, Config, Finding, Report};

/// The devices to fuzz: the CPU, plus the emulator and GPUs when built with `cuda`.
pub fn devices() -> Vec<hemi::Device> {
    #[cfg(feature = "cuda")]
    {
        let status = hemi::cuda::init();
        let mut d = vec![hemi::Device::Cpu];
        d.extend(status.devices.iter().copied());
        d
    }
    #[cfg(not(feature = "cuda"))]
    vec![hemi::Device::Cpu]
}
