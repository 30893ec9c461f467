//! [`CudaBackend`]: the engine's `Backend` trait over hemi's CUDA kernels. Ops whose kernels
//! have not landed yet return `Unsupported` naming the op (see the README's status table).

use super::alloc::CachingAllocator;
use super::driver::Driver;
use super::kernels::elementwise;
use super::storage::{cuda_buffer, CudaBuffer};
use hemi_engine::backend::{
    check_bounds, AdamTensors, Backend, BatchNormBackward, BatchNormForward, BinaryOp, Conv2dSpec,
    CrossEntropySpec, FusedAdamSpec, MatmulSpec, Pool2dSpec, ReduceOp, ScaleState, ScaleUpdateSpec,
    UnaryOp,
};
use hemi_engine::{BackendStorage, CpuStorage, DType, Device, Error, Layout, Result, StorageRef};
use std::sync::Arc;

/// The CUDA backend of one device (a GPU or the emulator).
#[derive(Debug)]
pub struct CudaBackend {
    alloc: Arc<CachingAllocator>,
}

impl CudaBackend {
    /// A backend over `driver`, with a fresh caching allocator.
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        CudaBackend {
            alloc: Arc::new(CachingAllocator::new(driver)),
        }
    }

    /// The caching allocator (for `empty_cache`).
    pub fn allocator(&self) -> &Arc<CachingAllocator> {
        &self.alloc
    }

    fn driver(&self) -> &dyn Driver {
        self.alloc.driver().as_ref()
    }

    fn buffer(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        CudaBuffer::new(&self.alloc, dtype, len)
    }

    fn get<'a>(&self, op: &'static str, s: &'a StorageRef) -> Result<&'a CudaBuffer> {
        cuda_buffer(op, s, self.device())
    }

    fn unsupported<T>(&self, op: &'static str) -> Result<T> {
        Err(Error::Unsupported {
            op,
            device: self.device(),
            msg: "no CUDA kernel for this op yet (it runs on the CPU backend)".into(),
        })
    }
}

fn host_bytes(s: &CpuStorage) -> &[u8] {
    match s {
        CpuStorage::F16(v) => bytemuck::cast_slice(v),
        CpuStorage::BF16(v) => bytemuck::cast_slice(v),
        CpuStorage::F32(v) => bytemuck::cast_slice(v),
        CpuStorage::F64(v) => bytemuck::cast_slice(v),
        CpuStorage::I64(v) => bytemuck::cast_slice(v),
    }
}

fn host_from_bytes(dt: DType, b: &[u8]) -> CpuStorage {
    match dt {
        DType::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec(b)),
        DType::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec(b)),
        DType::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec(b)),
        DType::F64 => CpuStorage::F64(bytemuck::pod_collect_to_vec(b)),
        DType::I64 => CpuStorage::I64(bytemuck::pod_collect_to_vec(b)),
    }
}

/// The bit pattern of `value` rounded to `dtype` (as the CPU backend rounds it).
fn value_bits(dtype: DType, value: f64) -> u64 {
    let one = CpuStorage::full(dtype, 1, value);
    let mut bits = [0u8; 8];
    let b = host_bytes(&one);
    bits[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(bits)
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        self.driver().device()
    }

    fn upload(&self, data: &CpuStorage) -> Result<StorageRef> {
        let buf = self.buffer(data.dtype(), data.len())?;
        if !data.is_empty() {
            self.driver().upload(buf.ptr(), host_bytes(data))?;
        }
        Ok(Arc::new(buf))
    }

    fn to_host(&self, s: &StorageRef, layout: &Layout) -> Result<CpuStorage> {
        check_bounds("to_host", s, layout)?;
        let contiguous = self.copy_strided(s, layout)?;
        let buf = self.get("to_host", &contiguous)?;
        let mut bytes = vec![0u8; buf.bytes()];
        if !bytes.is_empty() {
            self.driver().download(buf.ptr(), &mut bytes)?;
        }
        Ok(host_from_bytes(buf.dtype(), &bytes))
    }

    fn full(&self, dtype: DType, n: usize, value: f64) -> Result<StorageRef> {
        let buf = self.buffer(dtype, n)?;
        if n > 0 {
            elementwise::fill(self.driver(), dtype, buf.ptr(), n, value_bits(dtype, value))?;
        }
        Ok(Arc::new(buf))
    }

    fn copy_strided(&self, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        check_bounds("contiguous", s, layout)?;
        let src = self.get("contiguous", s)?;
        let buf = self.buffer(src.dtype(), layout.elem_count())?;
        if layout.elem_count() > 0 {
            elementwise::copy_strided(self.driver(), src.dtype(), src.ptr(), layout, buf.ptr())?;
        }
        Ok(Arc::new(buf))
    }

    fn cast(&self, s: &StorageRef, layout: &Layout, dtype: DType) -> Result<StorageRef> {
        check_bounds("to_dtype", s, layout)?;
        let src = self.get("to_dtype", s)?;
        if src.dtype() == dtype {
            return self.copy_strided(s, layout);
        }
        let buf = self.buffer(dtype, layout.elem_count())?;
        if layout.elem_count() > 0 {
            elementwise::cast(
                self.driver(),
                src.dtype(),
                src.ptr(),
                layout,
                dtype,
                buf.ptr(),
            )?;
        }
        Ok(Arc::new(buf))
    }

    fn cat(&self, _inputs: &[(StorageRef, Layout)], _dim: usize) -> Result<StorageRef> {
        self.unsupported("cat")
    }

    fn unary(&self, op: UnaryOp, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        check_bounds("unary", s, layout)?;
        let src = self.get("unary", s)?;
        let buf = self.buffer(src.dtype(), layout.elem_count())?;
        if layout.elem_count() > 0 {
            elementwise::unary(self.driver(), op, src.dtype(), src.ptr(), layout, buf.ptr())?;
        }
        Ok(Arc::new(buf))
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
    ) -> Result<StorageRef> {
        check_bounds("binary", lhs, lhs_layout)?;
        check_bounds("binary", rhs, rhs_layout)?;
        let (a, b) = (self.get("binary", lhs)?, self.get("binary", rhs)?);
        if a.dtype() != b.dtype() {
            return Err(Error::DTypeMismatch {
                op: "binary",
                msg: format!("{op:?} of {} and {}", a.dtype(), b.dtype()),
            });
        }
        let buf = self.buffer(a.dtype(), lhs_layout.elem_count())?;
        if lhs_layout.elem_count() > 0 {
            let d = self.driver();
            elementwise::binary(
                d,
                op,
                a.dtype(),
                a.ptr(),
                lhs_layout,
                b.ptr(),
                rhs_layout,
                buf.ptr(),
            )?;
        }
        Ok(Arc::new(buf))
    }

    fn reduce(
        &self,
        _op: ReduceOp,
        _s: &StorageRef,
        _l: &Layout,
        _dims: &[usize],
    ) -> Result<StorageRef> {
        self.unsupported("reduce")
    }

    fn matmul(
        &self,
        _: &StorageRef,
        _: &Layout,
        _: &StorageRef,
        _: &Layout,
        _: &MatmulSpec,
    ) -> Result<StorageRef> {
        self.unsupported("matmul")
    }

    fn conv2d(&self, _: &StorageRef, _: &StorageRef, _: &Conv2dSpec) -> Result<StorageRef> {
        self.unsupported("conv2d")
    }

    fn conv2d_backward_input(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: &Conv2dSpec,
    ) -> Result<StorageRef> {
        self.unsupported("conv2d_backward_input")
    }

    fn conv2d_backward_weight(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: &Conv2dSpec,
    ) -> Result<StorageRef> {
        self.unsupported("conv2d_backward_weight")
    }

    fn batch_norm_train(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: &StorageRef,
        _: (usize, usize, usize),
        _: f64,
    ) -> Result<BatchNormForward> {
        self.unsupported("batch_norm")
    }

    fn batch_norm_backward(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: &StorageRef,
        _: &StorageRef,
        _: &StorageRef,
        _: (usize, usize, usize),
    ) -> Result<BatchNormBackward> {
        self.unsupported("batch_norm_backward")
    }

    fn max_pool2d(&self, _: &StorageRef, _: &Pool2dSpec) -> Result<(StorageRef, StorageRef)> {
        self.unsupported("max_pool2d")
    }

    fn max_pool2d_backward(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: &Pool2dSpec,
    ) -> Result<StorageRef> {
        self.unsupported("max_pool2d_backward")
    }

    fn avg_pool2d(&self, _: &StorageRef, _: &Pool2dSpec) -> Result<StorageRef> {
        self.unsupported("avg_pool2d")
    }

    fn avg_pool2d_backward(&self, _: &StorageRef, _: &Pool2dSpec) -> Result<StorageRef> {
        self.unsupported("avg_pool2d_backward")
    }

    fn adaptive_avg_pool2d(
        &self,
        _: &StorageRef,
        _: [usize; 4],
        _: (usize, usize),
    ) -> Result<StorageRef> {
        self.unsupported("adaptive_avg_pool2d")
    }

    fn adaptive_avg_pool2d_backward(
        &self,
        _: &StorageRef,
        _: [usize; 4],
        _: (usize, usize),
    ) -> Result<StorageRef> {
        self.unsupported("adaptive_avg_pool2d_backward")
    }

    fn softmax(&self, _: &StorageRef, _: (usize, usize, usize), _: bool) -> Result<StorageRef> {
        self.unsupported("softmax")
    }

    fn softmax_backward(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: (usize, usize, usize),
        _: bool,
    ) -> Result<StorageRef> {
        self.unsupported("softmax_backward")
    }

    fn cross_entropy(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: (usize, usize),
        _: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        self.unsupported("cross_entropy")
    }

    fn cross_entropy_backward(
        &self,
        _: &StorageRef,
        _: &StorageRef,
        _: &StorageRef,
        _: (usize, usize),
        _: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        self.unsupported("cross_entropy_backward")
    }

    fn non_finite_check_and_unscale(
        &self,
        _: &[StorageRef],
        _: &StorageRef,
        _: &StorageRef,
    ) -> Result<(Vec<StorageRef>, StorageRef)> {
        self.unsupported("non_finite_check_and_unscale")
    }

    fn update_scale(
        &self,
        _: &ScaleState,
        _: &StorageRef,
        _: &ScaleUpdateSpec,
    ) -> Result<ScaleState> {
        self.unsupported("update_scale")
    }

    fn fused_adam(
        &self,
        _: &[AdamTensors],
        _: &FusedAdamSpec,
        _: Option<&StorageRef>,
        _: Option<&StorageRef>,
    ) -> Result<Vec<AdamTensors>> {
        self.unsupported("fused_adam")
    }
}
