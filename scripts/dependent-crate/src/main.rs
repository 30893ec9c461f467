//! Uses hemi from another crate with feature `cuda`: a CPU product, then the same product on
//! every CUDA device the backend registered (the emulator without a GPU), compared.
use hemi::{DType, Device, Tensor};

fn main() -> hemi::Result<()> {
    let status = hemi::cuda::init();
    let a = Tensor::randn([3, 5], DType::F32, Device::Cpu)?;
    let b = Tensor::randn([5, 2], DType::F32, Device::Cpu)?;
    let want = a.matmul(&b)?.to_vec::<f32>()?;
    for &d in &status.devices {
        let got = a.to_device(d)?.matmul(&b.to_device(d)?)?.to_vec::<f32>()?;
        let worst = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{d}: {worst}");
        println!("dependent crate: matmul on {d} matches the CPU (max diff {worst:e})");
    }
    if status.devices.is_empty() {
        return Err(hemi::Error::invalid("dependent crate", "no CUDA backend registered"));
    }
    Ok(())
}
