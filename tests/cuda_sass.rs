//! Static checks of the compiled kernels: the mma.sync GEMM and the Tensor-Core convolutions
//! have Tensor-Core (HMMA) and ldmatrix (LDSM) instructions in their sm_80 and sm_90 SASS
//! (disassembled with the pinned cuobjdump), and ptxas reports no spills and no stack frame
//! for any GEMM or convolution kernel.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;

fn cuobjdump() -> Option<PathBuf> {
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cuda-toolchain/nvidia/cu13/bin/cuobjdump");
    let from_home = std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/cuobjdump"));
    [Some(local), from_home]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

#[test]
fn mma_gemm_has_hmma_for_sm80_and_sm90() {
    let Some(tool) = cuobjdump() else {
        eprintln!("SKIPPED mma_gemm_has_hmma_for_sm80_and_sm90: cuobjdump not found (bash scripts/install-cuda-toolchain.sh)");
        return;
    };
    if !std::path::Path::new(hemi::cuda::FATBIN_PATH).is_file() {
        eprintln!("SKIPPED mma_gemm_has_hmma_for_sm80_and_sm90: the build's fatbin is not on this machine (bundle run)");
        return;
    }
    let kernels = [
        "gemm_mma_f16",
        "gemm_mma_bf16",
        "gemm_wmma_f16",
        "conv_mma_fprop_f16",
        "conv_mma_dgrad_f16",
        "conv_mma_wgrad_f16",
        "conv_mma_fprop_bf16",
        "conv_mma_dgrad_bf16",
        "conv_mma_wgrad_bf16",
    ];
    for kernel in kernels {
        let out = Command::new(&tool)
            .args(["-sass", "-fun", kernel, hemi::cuda::FATBIN_PATH])
            .output()
            .expect("cuobjdump runs");
        assert!(
            out.status.success(),
            "cuobjdump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sass = String::from_utf8_lossy(&out.stdout);
        for arch in ["sm_80", "sm_90"] {
            let section: String = sass
                .split("arch = ")
                .filter(|s| s.starts_with(arch))
                .collect();
            let hmma = section.matches("HMMA.16816").count();
            let ldsm = section.matches("LDSM").count();
            assert!(hmma > 0, "{kernel} has no HMMA.16816 for {arch}");
            assert!(ldsm > 0, "{kernel} has no LDSM for {arch}");
            eprintln!(
                "{kernel} {arch}: {hmma} HMMA, {ldsm} LDSM, {} LDGSTS",
                section.matches("LDGSTS").count()
            );
        }
    }
}

#[test]
fn gemm_and_conv_kernels_have_no_spills_and_no_stack() {
    let report =
        std::fs::read_to_string(hemi::cuda::PTXAS_REPORT_PATH).expect("ptxas report exists");
    let mut checked = 0;
    let mut current = String::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().unwrap_or_default().to_string();
            continue;
        }
        let family = current.starts_with("gemm_") || current.starts_with("conv_");
        if family && line.contains("bytes stack frame") {
            assert!(
                line.contains(" 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"),
                "{current}: {}",
                line.trim()
            );
            checked += 1;
        }
    }
    // 5 GEMM kernels and 27 conv kernels (3 SIMT modes and 2 packers for each of 3 dtypes, 6
    // Tensor-Core, 6 reductions), for two archs.
    assert!(
        checked >= 2 * (5 + 27),
        "expected every GEMM and conv kernel for both archs, saw {checked}"
    );
}
