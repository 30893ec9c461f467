//! The emulator's checkers (README, "Testing"): each must catch the bug it exists for. A
//! mutation test swaps a deliberately broken build of a real kernel (`kernels-cu/mutant.cuh`)
//! in behind the public API on `CudaSim` and requires the launch to fail with the checker's
//! report naming that kernel; the unbroken kernel must pass the same call. With the checkers
//! off (`HEMI_SIM_CHECKS=0`, or an AddressSanitizer build) these tests say they skipped and why.
#![cfg(feature = "cuda")]

use hemi::cuda::driver::sim::{KernelSwap, SimDriver};
use hemi::{CrossEntropySpec, DType, Device, GemmAlgo, GemmOptions, Generator, Result, Tensor};

fn checks_on(test: &str) -> bool {
    hemi::cuda::init();
    match SimDriver::checkers_inactive() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
        None => true,
    }
}

fn rand(g: &mut Generator, dims: &[usize], dt: DType) -> Result<Tensor> {
    Tensor::uniform_with(g, dims.to_vec(), -1.0, 1.0, dt, Device::Cpu)?.to_device(Device::CudaSim)
}

/// Runs `op` with `kernel` swapped for `mutant` and returns the error message it must fail
/// with; first runs it unswapped, which must succeed.
fn mutant_error(kernel: &str, mutant: &str, op: impl Fn() -> Result<()>) -> String {
    op().unwrap_or_else(|e| panic!("the real {kernel} must pass the checkers: {e}"));
    let _swap = KernelSwap::new(kernel, mutant).expect("mutant registered");
    match op() {
        Ok(()) => panic!("the checkers missed mutant {mutant}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(mutant),
                "the report must name the kernel: {msg}"
            );
            eprintln!("{mutant}: {msg}");
            msg
        }
    }
}

/// An f16 GEMM through the mma.sync + cp.async pipeline, several k-tiles (odd m, n; B
/// k-contiguous).
fn pipelined_gemm() -> Result<()> {
    let mut g = Generator::new(11);
    let a = rand(&mut g, &[37, 96], DType::F16)?;
    let b = rand(&mut g, &[45, 96], DType::F16)?.t()?;
    let opts = GemmOptions {
        algo: GemmAlgo::MmaPipeline,
        ..GemmOptions::new(DType::F32)
    };
    Tensor::gemm(&a, &b, &opts)?.to_vec::<f32>()?;
    Ok(())
}

#[test]
fn racecheck_catches_a_missing_barrier_in_the_gemm_pipeline() {
    if !checks_on("racecheck_catches_a_missing_barrier_in_the_gemm_pipeline") {
        return;
    }
    let msg = mutant_error("gemm_mma_f16", "gemm_mma_f16__drop_barrier", pipelined_gemm);
    assert!(
        msg.contains("racecheck")
            || msg.contains("cp.async copy that has not landed")
            || msg.contains("never written"),
        "{msg}"
    );
    assert!(msg.contains("shared memory"), "{msg}");
}

#[test]
fn a_wait_on_the_wrong_cp_async_group_is_caught() {
    if !checks_on("a_wait_on_the_wrong_cp_async_group_is_caught") {
        return;
    }
    let msg = mutant_error(
        "gemm_mma_f16",
        "gemm_mma_f16__wrong_async_group",
        pipelined_gemm,
    );
    assert!(msg.contains("initcheck"), "{msg}");
    assert!(msg.contains("cp.async copy that has not landed"), "{msg}");
}

#[test]
fn initcheck_catches_a_read_of_unwritten_shared_memory() {
    if !checks_on("initcheck_catches_a_read_of_unwritten_shared_memory") {
        return;
    }
    let loss = || -> Result<()> {
        let mut g = Generator::new(5);
        let x = rand(&mut g, &[19, 7], DType::F32)?;
        let t = Tensor::from_vec(
            (0..19).map(|i| i % 7).collect::<Vec<i64>>(),
            [19],
            Device::Cpu,
        )?
        .to_device(Device::CudaSim)?;
        x.cross_entropy(&t, CrossEntropySpec::default())?
            .to_vec::<f32>()?;
        Ok(())
    };
    let msg = mutant_error("ce_reduce", "ce_reduce__read_unwritten", loss);
    assert!(msg.contains("initcheck"), "{msg}");
    assert!(
        msg.contains("never written in this block") && msg.contains("static shared memory"),
        "{msg}"
    );
}

#[test]
fn a_misaligned_vector_load_is_caught() {
    if !checks_on("a_misaligned_vector_load_is_caught") {
        return;
    }
    let exp = || -> Result<()> {
        let mut g = Generator::new(3);
        rand(&mut g, &[53], DType::F32)?.exp()?.to_vec::<f32>()?;
        Ok(())
    };
    let msg = mutant_error("unary_vec_f32", "unary_vec_f32__misaligned_vector", exp);
    assert!(msg.contains("misaligned vector load"), "{msg}");
    assert!(msg.contains("not 16-byte aligned"), "{msg}");
}

#[test]
fn a_swap_for_a_kernel_that_does_not_exist_is_an_error() {
    hemi::cuda::init();
    let err = KernelSwap::new("gemm_mma_f16", "no_such_kernel").expect_err("no such mutant");
    assert!(err.to_string().contains("no such kernel"), "{err}");
}
