//! Speed of the host emulator (`Device::CudaSim`) on representative launches, with its
//! checkers on and off in one run: an f16 GEMM through the mma.sync + cp.async pipeline
//! (256³), the wmma GEMM (128³), the f32 SIMT GEMM (128³), a vectorized elementwise op over 1M
//! floats, and a cross-entropy forward + backward (256×1000). Prints one table: milliseconds
//! per call (best of 3) with the checkers off and on, and the slowdown the checkers cost.
//! "Off" still runs the instrumented kernels (each access calls a hook that returns at once);
//! the ASan build (`HEMI_SIM_ASAN=1`) is the uninstrumented one.
//! `cargo bench --features cuda --bench emulator` (a plain binary; needs the CUDA toolchain).

use hemi::{CrossEntropySpec, DType, Device, GemmAlgo, GemmOptions, Generator, Result, Tensor};
use std::time::Instant;

fn rand(g: &mut Generator, dims: &[usize], dt: DType) -> Result<Tensor> {
    Tensor::uniform_with(g, dims.to_vec(), -1.0, 1.0, dt, Device::Cpu)?.to_device(Device::CudaSim)
}

fn gemm(n: usize, dt: DType, algo: GemmAlgo) -> impl Fn() -> Result<()> {
    move || {
        let mut g = Generator::new(1);
        let (a, b) = (rand(&mut g, &[n, n], dt)?, rand(&mut g, &[n, n], dt)?);
        let opts = GemmOptions {
            algo,
            ..GemmOptions::new(DType::F32)
        };
        let t = Instant::now();
        Tensor::gemm(&a, &b, &opts)?;
        ELAPSED.with(|e| e.set(t.elapsed().as_secs_f64()));
        Ok(())
    }
}

/// One measured case: its timed region stores its seconds in `ELAPSED`.
type Case = Box<dyn Fn() -> Result<()>>;

thread_local! {
    static ELAPSED: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

fn timed(f: &dyn Fn() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        f()?;
        best = best.min(ELAPSED.with(|e| e.get()));
    }
    Ok(best * 1e3)
}

fn main() -> Result<()> {
    hemi::cuda::init();
    let elementwise = || -> Result<()> {
        let mut g = Generator::new(2);
        let x = rand(&mut g, &[1 << 20], DType::F32)?;
        let t = Instant::now();
        x.exp()?;
        ELAPSED.with(|e| e.set(t.elapsed().as_secs_f64()));
        Ok(())
    };
    let loss = || -> Result<()> {
        let mut g = Generator::new(3);
        let x = rand(&mut g, &[256, 1000], DType::F32)?.requires_grad_(true)?;
        let t = Tensor::randint(0, 1000, [256], Device::Cpu)?.to_device(Device::CudaSim)?;
        let start = Instant::now();
        x.cross_entropy(&t, CrossEntropySpec::default())?
            .backward()?;
        ELAPSED.with(|e| e.set(start.elapsed().as_secs_f64()));
        Ok(())
    };
    let cases: Vec<(&str, Case)> = vec![
        (
            "gemm mma.sync f16 256³",
            Box::new(gemm(256, DType::F16, GemmAlgo::MmaPipeline)),
        ),
        (
            "gemm wmma f16 128³",
            Box::new(gemm(128, DType::F16, GemmAlgo::Wmma)),
        ),
        (
            "gemm SIMT f32 128³",
            Box::new(gemm(128, DType::F32, GemmAlgo::SimtF32)),
        ),
        ("exp f32 1M (16-byte vectors)", Box::new(elementwise)),
        ("cross-entropy fwd+bwd 256×1000", Box::new(loss)),
    ];
    if std::env::var_os("HEMI_SIM_CHECKS").is_some() || std::env::var_os("HEMI_SIM_SHAKE").is_some()
    {
        eprintln!("note: HEMI_SIM_CHECKS / HEMI_SIM_SHAKE are set; the table below re-runs this binary with each setting");
    }
    // The checkers' setting is read once per process: measure each setting in a child.
    if let Ok(mode) = std::env::var("HEMI_EMULATOR_BENCH_CHILD") {
        for (name, f) in &cases {
            println!("{name}\t{mode}\t{:.2}", timed(f.as_ref())?);
        }
        return Ok(());
    }
    let exe = std::env::current_exe().expect("own path");
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for (mode, checks) in [("off", "0"), ("on", "1")] {
        let out = std::process::Command::new(&exe)
            .env("HEMI_EMULATOR_BENCH_CHILD", mode)
            .env("HEMI_SIM_CHECKS", checks)
            .env_remove("HEMI_SIM_SHAKE")
            .output()
            .expect("run the measuring child");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let ms: f64 = f[2].parse().unwrap_or(f64::NAN);
            match rows.iter_mut().find(|r| r.0 == f[0]) {
                Some(r) => r.2 = ms,
                None => rows.push((f[0].to_string(), ms, f64::NAN)),
            }
        }
    }
    println!("| launch (CudaSim, every core) | checkers off ms | checkers on ms | slowdown |");
    println!("|---|---|---|---|");
    for (name, off, on) in rows {
        println!("| {name} | {off:.1} | {on:.1} | {:.2}x |", on / off);
    }
    Ok(())
}
