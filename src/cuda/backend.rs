//! [`CudaBackend`]: the engine's `Backend` trait over hemi's CUDA kernels. Ops whose kernels
//! have not landed yet return `Unsupported` naming the op (see the README's status table).

use super::alloc::CachingAllocator;
use super::driver::Driver;
use super::kernels::{amp, dtype_code, elementwise, gemm, reduce, softmax};
use super::storage::{cuda_buffer, CudaBuffer};
use hemi_engine::backend::{
    check_bounds, AdamTensors, Backend, BatchNormBackward, BatchNormForward, BinaryOp, Conv2dSpec,
    CrossEntropySpec, FusedAdamSpec, MatmulSpec, Pool2dSpec, ReduceOp, Reduction, ScaleState,
    ScaleUpdateSpec, UnaryOp,
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

    fn expect_len(&self, op: &'static str, b: &CudaBuffer, want: usize) -> Result<()> {
        if b.len() != want {
            let msg = format!("buffer has {} elements, expected {want}", b.len());
            return Err(Error::ShapeMismatch { op, msg });
        }
        Ok(())
    }

    /// Uploads plain records (launch tables) to a temporary device buffer.
    fn upload_pod<T: bytemuck::Pod>(&self, records: &[T]) -> Result<CudaBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(records);
        let buf = self.buffer(DType::F32, bytes.len().div_ceil(4).max(1))?;
        if !bytes.is_empty() {
            self.driver().upload(buf.ptr(), bytes)?;
        }
        Ok(buf)
    }

    /// Checks cross-entropy inputs, including every target (one host read of the first bad
    /// row: PyTorch's device-side assert, as an `Err`).
    fn ce_inputs<'a>(
        &self,
        op: &'static str,
        logits: &'a StorageRef,
        targets: &'a StorageRef,
        (n, c): (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<(&'a CudaBuffer, &'a CudaBuffer)> {
        if !(0.0..=1.0).contains(&spec.label_smoothing) {
            let msg = format!("label_smoothing {} must be in [0, 1]", spec.label_smoothing);
            return Err(Error::InvalidArgument { op, msg });
        }
        let (x, t) = (self.get(op, logits)?, self.get(op, targets)?);
        self.expect_len(op, x, n * c)?;
        self.expect_len(op, t, n)?;
        if t.dtype() != DType::I64 {
            let msg = format!("targets must be int64 class indices, got {}", t.dtype());
            return Err(Error::DTypeMismatch { op, msg });
        }
        let bad = self.buffer(DType::I64, 1)?;
        self.driver().upload(bad.ptr(), &(n as i64).to_le_bytes())?;
        softmax::validate_targets(self.driver(), t.ptr(), n, c, spec.ignore_index, bad.ptr())?;
        let mut b = [0u8; 8];
        self.driver().download(bad.ptr(), &mut b)?;
        let row = i64::from_le_bytes(b) as usize;
        if row < n {
            self.driver().download(t.ptr() + 8 * row as u64, &mut b)?;
            return Err(Error::TargetOutOfRange {
                op,
                target: i64::from_le_bytes(b),
                index: row,
                classes: c,
            });
        }
        Ok((x, t))
    }

    fn unsupported<T>(&self, op: &'static str) -> Result<T> {
        Err(Error::Unsupported {
            op,
            device: self.device(),
            msg: "no CUDA kernel for this op yet (it runs on the CPU backend)".into(),
        })
    }
}

/// The bit pattern of `value` rounded to `dtype` (as the CPU backend rounds it).
fn value_bits(dtype: DType, value: f64) -> u64 {
    let one = CpuStorage::full(dtype, 1, value);
    let mut bits = [0u8; 8];
    let b = one.as_bytes();
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
            self.driver().upload(buf.ptr(), data.as_bytes())?;
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
        CpuStorage::from_bytes(buf.dtype(), &bytes)
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

    fn cat(&self, inputs: &[(StorageRef, Layout)], dim: usize) -> Result<StorageRef> {
        let Some((first, fl)) = inputs.first() else {
            return Err(Error::InvalidArgument {
                op: "cat",
                msg: "needs at least one tensor".into(),
            });
        };
        let dtype = self.get("cat", first)?.dtype();
        let mut dims = fl.dims().to_vec();
        dims[dim] = inputs.iter().map(|(_, l)| l.dims()[dim]).sum();
        let out_layout = Layout::contiguous(dims);
        let buf = self.buffer(dtype, out_layout.elem_count())?;
        let stride = out_layout.strides()[dim];
        let mut start = 0;
        for (s, l) in inputs {
            check_bounds("cat", s, l)?;
            let src = self.get("cat", s)?;
            let slice = Layout::new(
                l.shape().clone(),
                out_layout.strides().to_vec(),
                start * stride,
            );
            if l.elem_count() > 0 {
                elementwise::copy_view(self.driver(), dtype, src.ptr(), l, buf.ptr(), &slice)?;
            }
            start += l.dims()[dim];
        }
        Ok(Arc::new(buf))
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
        op: ReduceOp,
        s: &StorageRef,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<StorageRef> {
        check_bounds("reduce", s, layout)?;
        let src = self.get("reduce", s)?;
        let rank = layout.dims().len();
        let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(dims.iter()).copied().collect();
        let chunk: usize = dims.iter().map(|&d| layout.dims()[d]).product();
        let outer: usize = kept.iter().map(|&d| layout.dims()[d]).product();
        let buf = self.buffer(src.dtype(), outer)?;
        if outer > 0 {
            let view = layout.permute(&perm);
            reduce::reduce(
                self.driver(),
                op,
                src.dtype(),
                src.ptr(),
                &view,
                buf.ptr(),
                (outer, chunk),
            )?;
        }
        Ok(Arc::new(buf))
    }

    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef> {
        check_bounds("matmul", lhs, lhs_layout)?;
        check_bounds("matmul", rhs, rhs_layout)?;
        let (a, b) = (self.get("matmul", lhs)?, self.get("matmul", rhs)?);
        if a.dtype() != b.dtype() {
            let msg = format!("lhs is {} but rhs is {}", a.dtype(), b.dtype());
            return Err(Error::DTypeMismatch { op: "matmul", msg });
        }
        let mut kernel = match a.dtype() {
            DType::F32 => gemm::GemmKernel::SimtF32,
            DType::F16 | DType::BF16 => gemm::GemmKernel::MmaPipeline,
            _ => return self.unsupported("matmul"),
        };
        let MatmulSpec { batch, m, n, k } = *spec;
        let out = self.buffer(a.dtype(), batch * m * n)?;
        if batch * m * n == 0 {
            return Ok(Arc::new(out));
        }
        let operand = |buf: &CudaBuffer, l: &Layout| gemm::Operand {
            ptr: buf.ptr() + (l.offset() * buf.dtype().size_in_bytes()) as u64,
            batch_stride: l.strides()[0] as i64,
            row_stride: l.strides()[1] as i64,
            col_stride: l.strides()[2] as i64,
        };
        let args = gemm::GemmArgs {
            m: m as i64,
            n: n as i64,
            k: k as i64,
            alpha: 1.0,
            beta: 0.0,
            a: operand(a, lhs_layout),
            b: operand(b, rhs_layout),
            c_in: gemm::Operand::default(),
            bias: 0,
            out: gemm::Operand {
                ptr: out.ptr(),
                batch_stride: (m * n) as i64,
                row_stride: n as i64,
                col_stride: 1,
            },
            out_dtype: dtype_code("matmul", self.device(), a.dtype())?,
            pad: 0,
        };
        if kernel == gemm::GemmKernel::MmaPipeline && gemm::mma_layout(&args, 2).is_none() {
            kernel = gemm::GemmKernel::Wmma;
        }
        gemm::gemm(self.driver(), kernel, a.dtype(), batch, args)?;
        Ok(Arc::new(out))
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

    fn softmax(
        &self,
        x: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        let src = self.get("softmax", x)?;
        self.expect_len("softmax", src, dims.0 * dims.1 * dims.2)?;
        let buf = self.buffer(src.dtype(), src.len())?;
        if src.len() > 0 {
            softmax::softmax(self.driver(), src.dtype(), src.ptr(), buf.ptr(), dims, log)?;
        }
        Ok(Arc::new(buf))
    }

    fn softmax_backward(
        &self,
        y: &StorageRef,
        dy: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        let (ys, gs) = (
            self.get("softmax_backward", y)?,
            self.get("softmax_backward", dy)?,
        );
        self.expect_len("softmax_backward", ys, dims.0 * dims.1 * dims.2)?;
        self.expect_len("softmax_backward", gs, ys.len())?;
        let buf = self.buffer(gs.dtype(), gs.len())?;
        if gs.len() > 0 {
            softmax::softmax_backward(
                self.driver(),
                gs.dtype(),
                ys.ptr(),
                gs.ptr(),
                buf.ptr(),
                dims,
                log,
            )?;
        }
        Ok(Arc::new(buf))
    }

    fn cross_entropy(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        const OP: &str = "cross_entropy";
        let (x, t) = self.ce_inputs(OP, logits, targets, n_c, spec)?;
        let (n, c) = n_c;
        let losses = self.buffer(DType::F32, n)?;
        if n > 0 {
            let eps = spec.label_smoothing as f32;
            softmax::cross_entropy(
                self.driver(),
                x.dtype(),
                x.ptr(),
                t.ptr(),
                losses.ptr(),
                n,
                c,
                spec.ignore_index,
                eps,
            )?;
        }
        let losses: StorageRef = Arc::new(losses);
        let out: StorageRef = match spec.reduction {
            Reduction::None => losses,
            r => {
                let out = self.buffer(DType::F32, 1)?;
                let code = if r == Reduction::Mean { 1 } else { 2 };
                let lp = self.get(OP, &losses)?.ptr();
                softmax::ce_reduce(
                    self.driver(),
                    lp,
                    t.ptr(),
                    n,
                    spec.ignore_index,
                    code,
                    out.ptr(),
                )?;
                Arc::new(out)
            }
        };
        let len = out.len();
        self.cast(&out, &Layout::contiguous([len]), x.dtype())
    }

    fn cross_entropy_backward(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        dloss: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        const OP: &str = "cross_entropy_backward";
        let (x, t) = self.ce_inputs(OP, logits, targets, n_c, spec)?;
        let (n, c) = n_c;
        let want = if spec.reduction == Reduction::None {
            n
        } else {
            1
        };
        self.expect_len(OP, self.get(OP, dloss)?, want)?;
        let g = self.cast(dloss, &Layout::contiguous([want]), DType::F32)?;
        let w = self.buffer(DType::F32, n.max(1))?;
        let code = match spec.reduction {
            Reduction::None => 0,
            Reduction::Mean => 1,
            Reduction::Sum => 2,
        };
        let dx = self.buffer(x.dtype(), n * c)?;
        if n > 0 {
            let d = self.driver();
            softmax::ce_weights(
                d,
                self.get(OP, &g)?.ptr(),
                t.ptr(),
                n,
                spec.ignore_index,
                code,
                w.ptr(),
            )?;
            let eps = spec.label_smoothing as f32;
            softmax::cross_entropy_backward(
                d,
                x.dtype(),
                x.ptr(),
                t.ptr(),
                w.ptr(),
                dx.ptr(),
                n,
                c,
                spec.ignore_index,
                eps,
            )?;
        }
        Ok(Arc::new(dx))
    }

    fn non_finite_check_and_unscale(
        &self,
        grads: &[StorageRef],
        found_inf: &StorageRef,
        inv_scale: &StorageRef,
    ) -> Result<(Vec<StorageRef>, StorageRef)> {
        const OP: &str = "non_finite_check_and_unscale";
        let (f, inv) = (self.get(OP, found_inf)?, self.get(OP, inv_scale)?);
        for (s, what) in [(f, "found_inf"), (inv, "inv_scale")] {
            if s.dtype() != DType::F32 || s.len() != 1 {
                let msg = format!("{what} must be one float32, got {} x{}", s.dtype(), s.len());
                return Err(Error::DTypeMismatch { op: OP, msg });
            }
        }
        let found = self.copy_strided(found_inf, &Layout::contiguous([1]))?;
        let mut outs = Vec::with_capacity(grads.len());
        let mut refs = Vec::with_capacity(grads.len());
        for g in grads {
            let gb = self.get(OP, g)?;
            let out = self.buffer(gb.dtype(), gb.len())?;
            refs.push(amp::TensorRef {
                input: gb.ptr(),
                output: out.ptr(),
                len: gb.len() as i64,
                dtype: dtype_code(OP, self.device(), gb.dtype())?,
                pad: 0,
            });
            outs.push(Arc::new(out) as StorageRef);
        }
        let max_len = refs.iter().map(|r| r.len as usize).max().unwrap_or(0);
        let table = self.upload_pod(&refs)?;
        let fp = self.get(OP, &found)?.ptr();
        amp::non_finite_check_and_unscale(
            self.driver(),
            table.ptr(),
            refs.len(),
            max_len,
            fp,
            inv.ptr(),
        )?;
        Ok((outs, found))
    }

    fn update_scale(
        &self,
        state: &ScaleState,
        found_inf: &StorageRef,
        spec: &ScaleUpdateSpec,
    ) -> Result<ScaleState> {
        const OP: &str = "update_scale";
        let addrs = |s: &ScaleState| -> Result<amp::ScaleAddrs> {
            Ok(amp::ScaleAddrs {
                scale: self.get(OP, &s.scale)?.ptr(),
                growth: self.get(OP, &s.growth_tracker)?.ptr(),
                hyst: self.get(OP, &s.hysteresis_tracker)?.ptr(),
            })
        };
        let old = addrs(state)?;
        let new = ScaleState {
            scale: Arc::new(self.buffer(DType::F32, 1)?),
            growth_tracker: Arc::new(self.buffer(DType::I64, 1)?),
            hysteresis_tracker: Arc::new(self.buffer(DType::I64, 1)?),
        };
        amp::update_scale(
            self.driver(),
            old,
            self.get(OP, found_inf)?.ptr(),
            addrs(&new)?,
            spec,
        )?;
        Ok(new)
    }

    fn fused_adam(
        &self,
        tensors: &[AdamTensors],
        spec: &FusedAdamSpec,
        grad_scale: Option<&StorageRef>,
        found_inf: Option<&StorageRef>,
    ) -> Result<Vec<AdamTensors>> {
        const OP: &str = "fused_adam";
        let mut outs = Vec::with_capacity(tensors.len());
        let mut refs = Vec::with_capacity(tensors.len());
        for t in tensors {
            let (p, g) = (self.get(OP, &t.param)?, self.get(OP, &t.grad)?);
            if p.dtype() != DType::F32 {
                let msg = format!(
                    "{} parameters (fused Adam keeps float32 master weights)",
                    p.dtype()
                );
                return Err(Error::Unsupported {
                    op: OP,
                    device: self.device(),
                    msg,
                });
            }
            let n = p.len();
            let (m, v) = (self.get(OP, &t.exp_avg)?, self.get(OP, &t.exp_avg_sq)?);
            for b in [g, m, v] {
                self.expect_len(OP, b, n)?;
            }
            let vmax = t
                .max_exp_avg_sq
                .as_ref()
                .map(|s| self.get(OP, s))
                .transpose()?;
            let out = AdamTensors {
                param: Arc::new(self.buffer(DType::F32, n)?),
                grad: Arc::new(self.buffer(g.dtype(), n)?),
                exp_avg: Arc::new(self.buffer(DType::F32, n)?),
                exp_avg_sq: Arc::new(self.buffer(DType::F32, n)?),
                max_exp_avg_sq: match vmax {
                    Some(_) => Some(Arc::new(self.buffer(DType::F32, n)?)),
                    None => None,
                },
                step: Arc::new(self.buffer(DType::F32, 1)?),
            };
            let ptr = |s: &StorageRef| self.get(OP, s).map(|b| b.ptr());
            refs.push(amp::AdamRef {
                p: p.ptr(),
                g: g.ptr(),
                m: m.ptr(),
                v: v.ptr(),
                vmax: vmax.map_or(0, |b| b.ptr()),
                p_out: ptr(&out.param)?,
                g_out: ptr(&out.grad)?,
                m_out: ptr(&out.exp_avg)?,
                v_out: ptr(&out.exp_avg_sq)?,
                vmax_out: out
                    .max_exp_avg_sq
                    .as_ref()
                    .map(ptr)
                    .transpose()?
                    .unwrap_or(0),
                step: self.get(OP, &t.step)?.ptr(),
                step_out: ptr(&out.step)?,
                len: n as i64,
                grad_dtype: dtype_code(OP, self.device(), g.dtype())?,
                pad: 0,
            });
            outs.push(out);
        }
        let hyper = amp::AdamHyper {
            lr: spec.lr as f32,
            beta1: spec.beta1 as f32,
            beta2: spec.beta2 as f32,
            eps: spec.eps as f32,
            weight_decay: spec.weight_decay as f32,
            amsgrad: spec.amsgrad as i32,
            decoupled: spec.decoupled as i32,
            has_scale: grad_scale.is_some() as i32,
        };
        let gs = grad_scale
            .map(|s| self.get(OP, s).map(|b| b.ptr()))
            .transpose()?
            .unwrap_or(0);
        let fi = found_inf
            .map(|s| self.get(OP, s).map(|b| b.ptr()))
            .transpose()?
            .unwrap_or(0);
        let max_len = refs.iter().map(|r| r.len as usize).max().unwrap_or(0);
        let table = self.upload_pod(&refs)?;
        amp::fused_adam(
            self.driver(),
            table.ptr(),
            refs.len(),
            max_len,
            hyper,
            gs,
            fi,
        )?;
        Ok(outs)
    }
}
