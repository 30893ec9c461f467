//! Elementwise unary, scalar and broadcasting binary ops with their gradients.

use super::{float_only, from_storage_in, in_memory_order, output_format, promote_pair};
use crate::autograd::{get_or, save_if, track};
use crate::backend::{BinaryOp, UnaryOp};
use crate::cast_policy::AutocastOp;
use crate::{Result, Shape, Tensor};

impl Tensor {
    /// Applies a [`UnaryOp`] directly (not recorded by autograd); output of the same shape,
    /// dtype and memory format.
    pub fn unary_op(&self, op: UnaryOp) -> Result<Tensor> {
        self.unary_raw(op)
    }

    /// The op without autograd: output of the same shape, dtype and memory format.
    pub(crate) fn unary_raw(&self, op: UnaryOp) -> Result<Tensor> {
        float_only("unary", self)?;
        let f = self.suggest_memory_format();
        let l = in_memory_order(self.layout(), f);
        let s = self.backend()?.unary(op, &self.storage(), &l)?;
        Ok(from_storage_in(s, self.shape().clone(), f))
    }

    /// The op without autograd, broadcasting both operands (dtypes must match); the output
    /// keeps the memory format of the first operand of the output's shape.
    pub(crate) fn binary_raw(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        let shape = Shape::broadcast("binary", self.shape(), rhs.shape())?;
        let f = output_format(&shape, &[self, rhs]);
        let (la, lb) = (
            in_memory_order(&self.layout().broadcast_as("binary", &shape)?, f),
            in_memory_order(&rhs.layout().broadcast_as("binary", &shape)?, f),
        );
        let s = self
            .backend()?
            .binary(op, &self.storage(), &la, &rhs.storage(), &lb)?;
        Ok(from_storage_in(s, shape, f))
    }

    /// A recorded unary op; `autocast` names it when it is on an autocast list. `keep` says
    /// which of (input, output) the gradient reads: only those are saved (and version-checked),
    /// as in PyTorch; the gradient closure gets the output gradient in place of the others.
    fn unary_tracked<F>(
        &self,
        name: &'static str,
        autocast: Option<AutocastOp>,
        op: UnaryOp,
        keep: (bool, bool),
        grad: F,
    ) -> Result<Tensor>
    where
        F: Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    {
        let input = &match autocast {
            Some(ac) => crate::cast_policy::cast_inputs(ac, &[self])?.swap_remove(0),
            None => self.clone(),
        };
        let out = input.unary_raw(op)?;
        let (x, y) = (save_if(name, input, keep.0), save_if(name, &out, keep.1));
        Ok(track(out, name, &[input], move |g| {
            Ok(vec![Some(grad(g, &get_or(&x, g)?, &get_or(&y, g)?)?)])
        }))
    }

    /// `-x`
    pub fn neg(&self) -> Result<Tensor> {
        self.unary_tracked("neg", None, UnaryOp::Neg, (false, false), |g, _, _| g.neg())
    }
    /// `e^x`
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_tracked(
            "exp",
            Some(AutocastOp::Exp),
            UnaryOp::Exp,
            (false, true),
            |g, _, y| g.mul(y),
        )
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary_tracked(
            "log",
            Some(AutocastOp::Log),
            UnaryOp::Log,
            (true, false),
            |g, x, _| g.div(x),
        )
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_tracked("sqrt", None, UnaryOp::Sqrt, (false, true), |g, _, y| {
            g.div(&y.mul_scalar(2.0)?)
        })
    }
    /// `1 / sqrt(x)`
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary_tracked(
            "rsqrt",
            Some(AutocastOp::Rsqrt),
            UnaryOp::Rsqrt,
            (false, true),
            |g, _, y| g.mul(&y.unary_raw(UnaryOp::Powf(3.0))?)?.mul_scalar(-0.5),
        )
    }
    /// `|x|` (gradient `sign(x)`, 0 at 0).
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_tracked("abs", None, UnaryOp::Abs, (true, false), |g, x, _| {
            g.mul(&x.unary_raw(UnaryOp::Sign)?)
        })
    }
    /// `x²`
    pub fn square(&self) -> Result<Tensor> {
        self.unary_tracked("square", None, UnaryOp::Square, (true, false), |g, x, _| {
            g.mul(x)?.mul_scalar(2.0)
        })
    }
    /// `1 / x`
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_tracked(
            "recip",
            Some(AutocastOp::Reciprocal),
            UnaryOp::Recip,
            (false, true),
            |g, _, y| g.mul(&y.unary_raw(UnaryOp::Square)?)?.neg(),
        )
    }
    /// `max(x, 0)`; gradient 1 where `x > 0`, else 0 (PyTorch's convention at 0).
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_tracked("relu", None, UnaryOp::Relu, (true, false), |g, x, _| {
            g.mul(&x.unary_raw(UnaryOp::Step)?)
        })
    }
    /// `x ^ e` for a scalar exponent.
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.unary_tracked(
            "powf",
            Some(AutocastOp::Pow),
            UnaryOp::Powf(e),
            (true, false),
            move |g, x, _| g.mul(&x.unary_raw(UnaryOp::Powf(e - 1.0))?)?.mul_scalar(e),
        )
    }
    /// `x * mul + add` in one pass.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary_tracked(
            "affine",
            None,
            UnaryOp::Affine { mul, add },
            (false, false),
            move |g, _, _| g.mul_scalar(mul),
        )
    }
    /// `x + s`
    pub fn add_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(1.0, s)
    }
    /// `x - s`
    pub fn sub_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(1.0, -s)
    }
    /// `x * s`
    pub fn mul_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(s, 0.0)
    }
    /// `x / s` (computed as `x * (1/s)`)
    pub fn div_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(1.0 / s, 0.0)
    }

    fn binary_tracked<F>(
        &self,
        name: &'static str,
        op: BinaryOp,
        rhs: &Tensor,
        keep: (bool, bool, bool),
        grad: F,
    ) -> Result<Tensor>
    where
        F: Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)>
            + Send
            + Sync
            + 'static,
    {
        let (a, b) = promote_pair(name, self, rhs)?;
        float_only(name, &a)?;
        let out = a.binary_raw(op, &b)?;
        let (sa, sb) = (a.shape().clone(), b.shape().clone());
        let so = save_if(name, &out, keep.2);
        let (da, db) = (save_if(name, &a, keep.0), save_if(name, &b, keep.1));
        Ok(track(out, name, &[&a, &b], move |g| {
            let (ga, gb) = grad(g, &get_or(&da, g)?, &get_or(&db, g)?, &get_or(&so, g)?)?;
            Ok(vec![
                Some(ga.sum_to_shape(&sa)?),
                Some(gb.sum_to_shape(&sb)?),
            ])
        }))
    }

    /// `a + b` with broadcasting and type promotion.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_tracked(
            "add",
            BinaryOp::Add,
            rhs,
            (false, false, false),
            |g, _, _, _| Ok((g.clone(), g.clone())),
        )
    }
    /// `a - b` with broadcasting and type promotion.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_tracked(
            "sub",
            BinaryOp::Sub,
            rhs,
            (false, false, false),
            |g, _, _, _| Ok((g.clone(), g.neg()?)),
        )
    }
    /// `a * b` with broadcasting and type promotion.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_tracked(
            "mul",
            BinaryOp::Mul,
            rhs,
            (true, true, false),
            |g, a, b, _| Ok((g.mul(b)?, g.mul(a)?)),
        )
    }
    /// `a / b` with broadcasting and type promotion.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_tracked(
            "div",
            BinaryOp::Div,
            rhs,
            (false, true, true),
            |g, _, b, y| Ok((g.div(b)?, g.mul(y)?.div(b)?.neg()?)),
        )
    }
    /// Elementwise maximum; on ties the gradient goes to `a`.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_tracked(
            "maximum",
            BinaryOp::Maximum,
            rhs,
            (true, false, true),
            |g, a, _, y| {
                let mask = y.binary_raw(BinaryOp::Eq, a)?;
                Ok((g.mul(&mask)?, g.mul(&mask.affine(-1.0, 1.0)?)?))
            },
        )
    }
    /// Elementwise minimum; on ties the gradient goes to `a`.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_tracked(
            "minimum",
            BinaryOp::Minimum,
            rhs,
            (true, false, true),
            |g, a, _, y| {
                let mask = y.binary_raw(BinaryOp::Eq, a)?;
                Ok((g.mul(&mask)?, g.mul(&mask.affine(-1.0, 1.0)?)?))
            },
        )
    }
    /// `1.0` where `a == b`, else `0.0` (broadcasting; not differentiable).
    pub fn eq_mask(&self, rhs: &Tensor) -> Result<Tensor> {
        let (a, b) = promote_pair("eq", self, rhs)?;
        a.binary_raw(BinaryOp::Eq, &b)
    }
}

impl Tensor {
    /// Dropout: in training, zeroes each element with probability `p` (from the thread's
    /// default generator) and scales the survivors by `1/(1−p)`; otherwise the identity.
    pub fn dropout(&self, p: f64, training: bool) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(crate::Error::invalid(
                "dropout",
                format!("probability {p} must be in [0, 1]"),
            ));
        }
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        if p == 1.0 {
            return self.mul_scalar(0.0);
        }
        let u = Tensor::rand(self.shape().clone(), crate::DType::F32, self.device())?;
        let mask = u
            .add_scalar(-p)?
            .unary_raw(UnaryOp::Step)?
            .mul_scalar(1.0 / (1.0 - p))?;
        self.mul(&mask.to_dtype(self.dtype())?)
    }
}
