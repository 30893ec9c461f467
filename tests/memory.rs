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

/// A freed large CPU storage stays in the host cache (not counted as tensor memory) and serves
/// the next request of its size class; `empty_host_cache` releases it. (An odd size no other
/// test in this binary asks for, so nothing else takes the block meanwhile.)
#[test]
fn freed_large_cpu_buffers_are_cached_and_reused() -> hemi::Result<()> {
    let n = 1_234_567;
    let a = Tensor::ones([n], DType::F64, Device::Cpu)?;
    let cached = hemi::host_cache_bytes();
    let current = memory_stats(Device::Cpu).current;
    drop(a);
    assert!(
        hemi::host_cache_bytes() >= cached + n * 8,
        "the block is cached"
    );
    assert_eq!(memory_stats(Device::Cpu).current, current - n * 8);
    // Same class (a few elements fewer): the cached block is reused and zeroed.
    let b = Tensor::zeros([n - 5], DType::F64, Device::Cpu)?;
    assert!(hemi::host_cache_bytes() < cached + n * 8, "taken back");
    assert!(
        b.to_vec::<f64>()?.iter().all(|&v| v == 0.0),
        "zeroed on reuse"
    );
    drop(b);
    assert!(hemi::empty_host_cache() >= n * 8, "released");
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
