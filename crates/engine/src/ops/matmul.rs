//! Matrix products: 2-D, batched (3-D and higher, with a 2-D operand broadcast over the
//! batch), transposed operands as strided views, and `linear`.

use super::{float_only, promote_pair};
use crate::autograd::{track, Saved};
use crate::backend::MatmulSpec;
use crate::cast_policy::AutocastOp;
use crate::{Error, Layout, Result, Shape, Tensor};

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
        let (ad, bd) = (a.dims(), b.dims());
        let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        let ab = if a.rank() == 3 { ad[0] } else { 1 };
        let bb = if b.rank() == 3 { bd[0] } else { 1 };
        if k != k2 || (ab != bb && ab != 1 && bb != 1) {
            return Err(Error::shape(
                OP,
                format!(
                    "lhs {:?} and rhs {:?} do not multiply",
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        let batch = ab.max(bb);
        let spec = MatmulSpec { batch, m, n, k };
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
}
