//! Static checks of the compiled kernels: the mma.sync GEMM has Tensor-Core (HMMA)
//! instructions in its sm_80 and sm_90 SASS (disassembled with the pinned cuobjdump), and
//! ptxas reports no spills and no stack frame for any GEMM kernel.
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
    for kernel in ["gemm_mma_f16", "gemm_mma_bf16", "gemm_wmma_f16"] {
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
            assert!(hmma > 0, "{kernel} has no HMMA.16816 for {arch}");
            eprintln!(
                "{kernel} {arch}: {hmma} HMMA, {} LDSM, {} LDGSTS",
                section.matches("LDSM").count(),
                section.matches("LDGSTS").count()
            );
        }
    }
}

#[test]
fn gemm_kernels_have_no_spills_and_no_stack() {
    let report =
        std::fs::read_to_string(hemi::cuda::PTXAS_REPORT_PATH).expect("ptxas report exists");
    let mut checked = 0;
    let mut current = String::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().unwrap_or_default().to_string();
            continue;
        }
        if current.starts_with("gemm_") && line.contains("bytes stack frame") {
            assert!(
                line.contains(" 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"),
                "{current}: {}",
                line.trim()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "expected every GEMM kernel for both archs, saw {checked}"
    );
}
