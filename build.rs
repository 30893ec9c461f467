//! Build script. With feature `mpi` it compiles `src/distributed/mpi_shim.c` (MPI_IN_PLACE of
//! the MPI library found as the `mpi` crate finds it). Without feature `cuda` it does nothing
//! more. With it:
//! 1. finds nvcc (`NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, or `.cuda-toolchain/` from
//!    `scripts/install-cuda-toolchain.sh`) and compiles every `kernels-cu/*.cu` into one
//!    fatbin (SASS for sm_80 and sm_90 plus compute_90 PTX; `HEMI_CUDA_ARCHS=80,90` overrides),
//!    keeping ptxas's `-v` resource report (`$OUT_DIR/ptxas-report.txt`, path in the
//!    `HEMI_PTXAS_REPORT` env var of the crate) and turning any spill into a build warning;
//! 2. compiles the same sources as C++ against `kernels-cu/sim` into the host emulator
//!    library: the kernels with GCC's `-fsanitize=thread` access instrumentation feeding the
//!    emulator's checkers (`kernels-cu/sim/check.cpp`), or with AddressSanitizer instead when
//!    `HEMI_SIM_ASAN=1`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels-cu");
    println!("cargo:rerun-if-env-changed=HEMI_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=HEMI_SIM_ASAN");
    println!("cargo:rerun-if-env-changed=NVCC");
    #[cfg(feature = "mpi")]
    compile_mpi_shim();
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = root.join("kernels-cu");
    let all_cu = write_unity_source(&kernels, &out);
    write_op_tables(&kernels, &out);
    let nvcc = find_nvcc(&root).unwrap_or_else(|| {
        panic!(
            "feature `cuda` needs nvcc: run `bash scripts/install-cuda-toolchain.sh` (pinned CUDA 13.0 \
             wheels into .cuda-toolchain/), or set NVCC or CUDA_HOME"
        )
    });
    compile_fatbin(&nvcc, &kernels, &all_cu, &out);
    compile_emulator(&kernels, &all_cu);
}

/// `$OUT_DIR/elementwise_ops.rs`: the unary and binary op names of `kernels-cu/ops.def` in
/// code order (a code is the index), for `src/cuda/elementwise.rs`.
fn write_op_tables(kernels: &Path, out: &Path) {
    let def = std::fs::read_to_string(kernels.join("ops.def")).expect("kernels-cu/ops.def");
    let names = |kind: &str| -> Vec<String> {
        def.lines()
            .filter_map(|l| l.trim().strip_prefix(kind))
            .filter_map(|l| l.strip_prefix('(')?.strip_suffix(')'))
            .map(|n| format!("{n:?}"))
            .collect()
    };
    let (unary, binary) = (names("HEMI_UNARY"), names("HEMI_BINARY"));
    let body = format!(
        "/// Unary op names of `kernels-cu/ops.def`; an op's code is its index.\n\
         pub(crate) const UNARY_OPS: &[&str] = &[{}];\n\
         /// Binary op names of `kernels-cu/ops.def`; an op's code is its index.\n\
         pub(crate) const BINARY_OPS: &[&str] = &[{}];\n",
        unary.join(", "),
        binary.join(", ")
    );
    std::fs::write(out.join("elementwise_ops.rs"), body).expect("write op tables");
}

/// One translation unit including every kernel file, so there is one module / one fatbin.
fn write_unity_source(kernels: &Path, out: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kernels)
        .expect("kernels-cu exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    let mut body: String = files
        .iter()
        .map(|f| format!("#include \"{}\"\n", f.display()))
        .collect();
    // Referenced from Rust so the linker keeps this object (and its kernel registrations).
    body.push_str(
        "#ifdef HEMI_SIM\nextern \"C\" int hemi_sim_kernels_anchor() { return 1; }\n\
         // Whether the kernels carry the checkers' access instrumentation (not under ASan).\n\
         #ifdef __SANITIZE_THREAD__\nextern \"C\" int hemi_sim_kernels_instrumented() { return 1; }\n\
         #else\nextern \"C\" int hemi_sim_kernels_instrumented() { return 0; }\n#endif\n#endif\n",
    );
    let path = out.join("hemi_kernels.cu");
    std::fs::write(&path, body).expect("write unity source");
    path
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let candidates = [
        env::var_os("NVCC").map(PathBuf::from),
        env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")),
        env::var_os("CUDA_PATH").map(|h| PathBuf::from(h).join("bin/nvcc")),
        env::var_os("PATH").and_then(|p| {
            env::split_paths(&p)
                .map(|d| d.join("nvcc"))
                .find(|c| c.is_file())
        }),
        Some(root.join(".cuda-toolchain/nvidia/cu13/bin/nvcc")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn compile_fatbin(nvcc: &Path, kernels: &Path, all_cu: &Path, out: &Path) {
    let cuda_root = nvcc
        .parent()
        .and_then(Path::parent)
        .expect("nvcc lives in <root>/bin");
    let archs = env::var("HEMI_CUDA_ARCHS").unwrap_or_else(|_| "80,90".into());
    let archs: Vec<&str> = archs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .arg("-std=c++17")
        .arg("-O3")
        .arg("-Xptxas")
        .arg("-v")
        .arg("-I")
        .arg(kernels)
        .arg("-I")
        .arg(cuda_root.join("include"))
        .arg("-I")
        .arg(cuda_root.join("include/cccl"));
    for (i, a) in archs.iter().enumerate() {
        let code = if i + 1 == archs.len() {
            format!("[sm_{a},compute_{a}]")
        } else {
            format!("sm_{a}")
        };
        cmd.arg("-gencode")
            .arg(format!("arch=compute_{a},code={code}"));
    }
    let fatbin = out.join("hemi_kernels.fatbin");
    cmd.arg(all_cu).arg("-o").arg(&fatbin);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    let report = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        panic!("nvcc failed:\n{report}");
    }
    let report_path = out.join("ptxas-report.txt");
    std::fs::write(&report_path, &report).expect("write ptxas report");
    let mut function = String::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            function = rest.split('\'').next().unwrap_or_default().to_string();
        }
        if line.contains("spill stores")
            && !line.contains(" 0 bytes spill stores, 0 bytes spill loads")
        {
            println!("cargo:warning=ptxas spills in {function}: {}", line.trim());
        }
    }
    println!("cargo:rustc-env=HEMI_FATBIN={}", fatbin.display());
    println!(
        "cargo:rustc-env=HEMI_PTXAS_REPORT={}",
        report_path.display()
    );
}

fn compile_emulator(kernels: &Path, all_cu: &Path) {
    let sim = kernels.join("sim");
    let asan = env::var_os("HEMI_SIM_ASAN").is_some_and(|v| v == "1");
    println!("cargo:rustc-check-cfg=cfg(hemi_sim_asan)");
    if asan {
        // The emulator's allocations become exact-size, so AddressSanitizer's redzones sit
        // right after each buffer (see `cuda::alloc`).
        println!("cargo:rustc-cfg=hemi_sim_asan");
    }
    let build = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++17")
            .opt_level(2)
            .warnings(false)
            .include(kernels)
            .include(&sim)
            .flag("-include")
            .flag(sim.join("sim.h").to_string_lossy().as_ref());
        if asan {
            b.flag("-fsanitize=address").flag("-fno-omit-frame-pointer");
        }
        b
    };
    // The kernel sources are CUDA files compiled as C++ with the emulator header. Outside
    // AddressSanitizer builds (the two cannot be combined) they get GCC's ThreadSanitizer
    // instrumentation: a call before every memory access, which `sim/check.cpp` implements
    // (no TSan runtime is linked) to run racecheck, initcheck and the alignment checks.
    let mut k = build();
    if !asan {
        k.flag("-fsanitize=thread");
    }
    k.flag("-x").flag("c++").file(all_cu);
    k.compile("hemi_sim_kernels");
    // The scheduler and the checkers, not instrumented.
    let mut s = build();
    s.file(sim.join("sim.cpp")).file(sim.join("check.cpp"));
    s.compile("hemi_sim");
}

/// Compiles the MPI shim with the MPI library's compiler wrapper (or its include paths).
#[cfg(feature = "mpi")]
fn compile_mpi_shim() {
    println!("cargo:rerun-if-changed=src/distributed/mpi_shim.c");
    let lib = build_probe_mpi::probe().unwrap_or_else(|errs| {
        let why: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        panic!(
            "feature `mpi` needs an MPI library (Debian: apt-get install openmpi-bin \
             libopenmpi-dev libclang-dev; bash scripts/install-mpi.sh): {}",
            why.join("; ")
        )
    });
    let mut build = cc::Build::new();
    build.file("src/distributed/mpi_shim.c");
    match lib.mpicc {
        Some(mpicc) => {
            build.compiler(mpicc);
        }
        None => {
            for inc in &lib.include_paths {
                build.include(inc);
            }
        }
    }
    build.compile("hemi_mpi_shim");
}
