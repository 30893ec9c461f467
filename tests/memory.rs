//! Memory accounting: per-device current and peak bytes of tensor storage. One test per
//! device in its own binary, because the counters are process-wide.

use hemi::{memory_stats, reset_peak_memory, DType, Device, Tensor};

#[test]
fn current_and_peak_bytes_follow_allocations() -> hemi::Result<()> {
    let base = memory_stats(Device::Cpu);
    let a = Tensor::zeros([1000, 250], DType::F32, Device::Cpu)?; // 1,000,000 bytes
    let after_a = memory_stats(Device::Cpu);
    assert_eq!(after_a.current - base.current, 1_000_000);
    assert!(after_a.allocations > base.allocations);
    let h = a.to_dtype(DType::F16)?; // 500,000 bytes
    assert_eq!(memory_stats(Device::Cpu).current - base.current, 1_500_000);
    let view = a.t()?; // a view allocates nothing
    assert_eq!(memory_stats(Device::Cpu).current - base.current, 1_500_000);
    drop((a, h));
    let mid = memory_stats(Device::Cpu);
    assert_eq!(
        mid.current - base.current,
        1_000_000,
        "the view keeps a's storage alive"
    );
    drop(view);
    let end = memory_stats(Device::Cpu);
    assert_eq!(end.current, base.current);
    assert!(end.peak >= base.current + 1_500_000);
    reset_peak_memory(Device::Cpu);
    assert_eq!(memory_stats(Device::Cpu).peak, end.current);
    let _b = Tensor::ones([10], DType::F64, Device::Cpu)?;
    assert_eq!(memory_stats(Device::Cpu).peak, end.current + 80);
    assert_eq!(
        memory_stats(Device::Cuda(3)),
        hemi::MemoryStats::default(),
        "untouched device reads zero"
    );
    Ok(())
}

/// The emulated CUDA device's caching allocator reports rounded blocks.
#[cfg(feature = "cuda")]
#[test]
fn cuda_sim_counts_rounded_blocks() -> hemi::Result<()> {
    hemi::cuda::init();
    let dev = Device::CudaSim;
    let before = memory_stats(dev).current;
    let t = Tensor::zeros([1000], DType::F32, dev)?;
    assert_eq!(
        memory_stats(dev).current - before,
        4096,
        "4000 bytes round to a 4 KiB block"
    );
    drop(t);
    assert_eq!(memory_stats(dev).current, before);
    Ok(())
}
