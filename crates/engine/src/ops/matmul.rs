//! Matrix products: 2-D, batched (3-D and higher, with a 2-D operand broadcast over the
//! batch), transposed operands as strided views, and `linear`.

use super::{float_only, promote_pair};
use crate::autograd::{track, Saved};
use crate::backend::{GemmAlgo, GemmEpilogue, MatmulSpec};
use crate::cast_policy::AutocastOp;
use crate::{DType, Error, Layout, Result, Shape, Tensor};

/// Views a rank-2 or rank-3 layout as `[batch, rows, cols]`, broadcasting a missing batch.
fn as_batched(l: &Layout, batch: usize) -> Layout {
    if l.shape().rank() == 3 {
        let (d, s) = (l.dims(), l.strides());
        let bs = if d[0] == 1 { 0 } else { s[0] };
        Layout::new(
            Shape::new([batch, d[1], d[2]]),
            vec![bs, s[1], s[2]],
            l.offset(),
        )
    } else {
        let (d, s) = (l.dims(), l.strides());
        Layout::new(
            Shape::new([batch, d[0], d[1]]),
            vec![0, s[0], s[1]],
            l.offset(),
        )
    }
}

/// The [`MatmulSpec`] of `[m, k]`/`[batch, m, k]` times `[k, n]`/`[batch, k, n]` (rank 2
/// or 3 each; a batch of 1 broadcasts), or an error naming `op` and the shapes.
fn batched_spec(op: &'static str, a: &Tensor, b: &Tensor) -> Result<MatmulSpec> {
    let (ad, bd) = (a.dims(), b.dims());
    let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
    let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
    let ab = if a.rank() == 3 { ad[0] } else { 1 };
    let bb = if b.rank() == 3 { bd[0] } else { 1 };
    if k != k2 || (ab != bb && ab != 1 && bb != 1) {
        return Err(Error::shape(
            op,
            format!(
                "lhs {:?} and rhs {:?} do not multiply",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let spec = MatmulSpec {
        // Broadcasting: a batch of 1 takes the other's, also 0 (max would read past an empty
        // operand).
        batch: if ab == 1 { bb } else { ab },
        m,
        n,
        k,
    };
    crate::Shape::new([spec.batch, m, n]).checked_elem_count(op)?;
    Ok(spec)
}

impl Tensor {
    /// Matrix product. `[m, k] · [k, n] → [m, n]`; `[b, m, k] · [b, k, n] → [b, m, n]` where
    /// either side may be 2-D (broadcast over the batch) or have batch 1; inputs of rank > 3
    /// flatten their leading dims (which must agree). Inputs are promoted to a common dtype;
    /// F16/BF16 accumulate in f32 and round once.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        let ins = crate::cast_policy::cast_inputs(AutocastOp::Matmul, &[self, rhs])?;
        let (a, b) = promote_pair(OP, &ins[0], &ins[1])?;
        float_only(OP, &a)?;
        if a.rank() < 2 || b.rank() < 2 {
            return Err(Error::shape(
                OP,
                format!(
                    "needs operands of rank >= 2, got {:?} and {:?}",
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        if a.rank() > 3 || b.rank() > 3 {
            return Self::matmul_flattened(&a, &b);
        }
        let spec = batched_spec(OP, &a, &b)?;
        let MatmulSpec { batch, m, n, .. } = spec;
        let (la, lb) = (as_batched(a.layout(), batch), as_batched(b.layout(), batch));
        let s = a
            .backend()?
            .matmul(&a.storage(), &la, &b.storage(), &lb, &spec)?;
        let out_shape = if a.rank() == 3 || b.rank() == 3 {
            vec![batch, m, n]
        } else {
            vec![m, n]
        };
        let out = Tensor::contiguous_from(s, out_shape);
        let (da, db) = (Saved::new(OP, &a), Saved::new(OP, &b));
        Ok(track(out, OP, &[&a, &b], move |g| {
            let (da, db) = (da.get()?, db.get()?);
            // dA = g · Bᵀ, dB = Aᵀ · g; a broadcast operand sums over the batch.
            let ga = g.matmul(&db.transpose(-2, -1)?)?;
            let gb = da.transpose(-2, -1)?.matmul(g)?;
            Ok(vec![
                Some(ga.sum_to_shape(da.shape())?),
                Some(gb.sum_to_shape(db.shape())?),
            ])
        }))
    }

    fn matmul_flattened(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let lead = |t: &Tensor| t.dims()[..t.rank() - 2].to_vec();
        let (la, lb) = (lead(a), lead(b));
        if a.rank() != b.rank() || la != lb {
            return Err(Error::shape(
                "matmul",
                format!(
                    "batch dims of {:?} and {:?} must agree for rank > 3",
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        let flat = |t: &Tensor| t.flatten(0, t.rank() as isize - 3);
        let out = flat(a)?.matmul(&flat(b)?)?;
        let mut dims = la;
        dims.extend_from_slice(&out.dims()[1..]);
        out.reshape(dims)
    }

    /// `x · wᵀ + b` for `x [.., in]`, `w [out, in]`, `b [out]`, as `torch.nn.functional.linear`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if weight.rank() != 2 {
            return Err(Error::shape(
                "linear",
                format!("weight must be [out, in], got {:?}", weight.shape()),
            ));
        }
        let ins = match bias {
            Some(b) => crate::cast_policy::cast_inputs(AutocastOp::Linear, &[self, weight, b])?,
            None => crate::cast_policy::cast_inputs(AutocastOp::Linear, &[self, weight])?,
        };
        let y = ins[0].matmul(&ins[1].t()?)?;
        match ins.get(2) {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// The general product `alpha · a·b + beta · c + bias` with every option of the matmul
    /// family's kernels (see [`GemmOptions`]): `a` is `[m, k]` or `[batch, m, k]`, `b` is
    /// `[k, n]` or `[batch, k, n]` (a batch of 1 broadcasts), any strides, one dtype; returns
    /// `[batch, m, n]` in `out_dtype`. Not recorded by autograd. Error bound as `matmul`'s,
    /// plus the f32 rounding of the epilogue.
    ///
    /// ```
    /// use hemi_engine::{DType, Device, GemmOptions, Tensor};
    /// let a = Tensor::ones([2, 3], DType::F32, Device::Cpu)?;
    /// let b = Tensor::ones([3, 4], DType::F32, Device::Cpu)?;
    /// let o = GemmOptions { alpha: 0.5, ..GemmOptions::new(DType::F16) };
    /// let y = Tensor::gemm(&a, &b, &o)?;                  // [1, 2, 4] of 1.5 in f16
    /// assert_eq!(y.to_f64_vec()?, vec![1.5; 8]);
    /// # Ok::<(), hemi_engine::Error>(())
    /// ```
    pub fn gemm(a: &Tensor, b: &Tensor, o: &GemmOptions) -> Result<Tensor> {
        const OP: &str = "gemm";
        let rank_ok = |t: &Tensor| t.rank() == 2 || t.rank() == 3;
        if !rank_ok(a) || !rank_ok(b) || a.dtype() != b.dtype() {
            return Err(Error::shape(
                OP,
                format!(
                    "operands must be [m, k] / [batch, m, k] of one dtype, got {:?} {} and {:?} {}",
                    a.shape(),
                    a.dtype(),
                    b.shape(),
                    b.dtype()
                ),
            ));
        }
        let mut ts = vec![a, b];
        ts.extend(o.c.iter().chain(&o.bias));
        super::same_device(OP, &ts)?;
        let spec = batched_spec(OP, a, b)?;
        let MatmulSpec { batch, m, n, .. } = spec;
        let c = match &o.c {
            Some(c) => {
                let cb = c.broadcast_as([batch, m, n])?;
                Some((cb.storage(), cb.layout().clone()))
            }
            None => None,
        };
        let bias = match &o.bias {
            Some(b) => Some(
                b.to_dense_buffer(crate::MemoryFormat::Contiguous)?
                    .storage(),
            ),
            None => None,
        };
        let ep = GemmEpilogue {
            alpha: o.alpha,
            beta: o.beta,
            c,
            bias,
            out_dtype: o.out_dtype,
            algo: o.algo,
        };
        let (la, lb) = (as_batched(a.layout(), batch), as_batched(b.layout(), batch));
        let s = a
            .backend()?
            .gemm(&a.storage(), &la, &b.storage(), &lb, &spec, &ep)?;
        Ok(Tensor::contiguous_from(s, [batch, m, n]))
    }
}

/// Options of [`Tensor::gemm`]: `out = alpha · a·b + beta · c + bias`.
#[derive(Debug, Clone)]
pub struct GemmOptions {
    /// Scale of the product (default 1).
    pub alpha: f32,
    /// Scale of `c` (default 0; unused without `c`).
    pub beta: f32,
    /// Added matrix, broadcastable to `[batch, m, n]`, in `out_dtype`.
    pub c: Option<Tensor>,
    /// Per-column bias `[n]`, F32.
    pub bias: Option<Tensor>,
    /// Output dtype: F32, F16 or BF16 (F64 for F64 inputs on the CPU).
    pub out_dtype: DType,
    /// Kernel hint for devices with several GEMM kernels (default `Auto`).
    pub algo: GemmAlgo,
}

impl GemmOptions {
    /// The plain product in `out_dtype`: alpha 1, no `c`, no bias, `Auto`.
    pub fn new(out_dtype: DType) -> Self {
        GemmOptions {
            alpha: 1.0,
            beta: 0.0,
            c: None,
            bias: None,
            out_dtype,
            algo: GemmAlgo::Auto,
        }
    }
}
