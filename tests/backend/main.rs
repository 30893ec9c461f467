//! The backend suite: one module per op family (`tests/backend/<family>.rs`, the family names
//! of `backend/`, `cpu/`, `src/cuda/` and `kernels-cu/`). Every test body runs on every device
//! present — the CPU, the emulated CUDA backend, and each GPU — through [`backend_test!`]. A
//! device that lacks a family answers `Err(Unsupported)`: the test prints that it skipped that
//! device, by test name and reason, and carries on; every other error fails the test. The CPU
//! never skips, so no test can pass without running.

#[path = "../common/mod.rs"]
mod common;

/// `backend_test!(name, |dev| { ...; Ok(()) })`: a `#[test]` running the body on every device.
macro_rules! backend_test {
    ($name:ident, |$dev:ident| $body:block) => {
        #[test]
        fn $name() {
            let run = |$dev: hemi::Device| -> hemi::Result<()> { $body };
            let mut ran = 0;
            for dev in crate::common::devices() {
                match run(dev) {
                    Ok(()) => ran += 1,
                    Err(hemi::Error::Unsupported { op, msg, .. }) => {
                        assert_ne!(dev, hemi::Device::Cpu, "the CPU backend lacks `{op}`");
                        eprintln!(
                            "SKIPPED {} on {dev}: `{op}` is unsupported there: {msg}",
                            stringify!($name)
                        );
                    }
                    Err(e) => panic!("{} on {dev}: {e}", stringify!($name)),
                }
            }
            assert!(ran > 0, "{} ran on no device", stringify!($name));
        }
    };
}

mod amp;
mod conv;
mod elementwise;
mod loss;
mod matmul;
mod memory;
mod memory_format;
mod norm;
mod optim;
mod pool;
mod reduce;
mod support;
