//! Random op programs: a pool of tensors (random shapes, dtypes, devices, views, gradients)
//! and a sequence of calls on them — every public op family, with valid and invalid
//! arguments. A call may return `Err` (that is the contract for bad input); it must not
//! panic, abort, hang or corrupt memory.

use crate::draw::Draw;
use hemi::amp::autocast;
use hemi::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use hemi::{
    AvgPool2dParams, BatchNormParams, Conv2dParams, CrossEntropySpec, DType, Device, GemmAlgo,
    GemmOptions, MaxPool2dParams, MemoryFormat, Reduction, Result, Tensor,
};

/// Elements per generated tensor at most (huge dims aside): keeps emulated kernels fast.
const ELEMS: usize = 1024;
/// Tensors kept alive in a program at most (older ones are dropped between op groups).
pub const POOL: usize = 10;

/// One call of a program (its `Debug` is the reproduction note of a finding).
#[derive(Debug, Clone)]
pub enum Op {
    /// A fresh tensor.
    New {
        /// Shape.
        dims: Vec<usize>,
        /// Dtype.
        dtype: DType,
        /// Device.
        device: Device,
        /// 0 randn, 1 zeros, 2 full(value), 3 randint.
        fill: u8,
        /// Fill value or bound.
        value: f64,
        /// Whether it requires grad.
        grad: bool,
    },
    /// A view or layout change of a pool tensor.
    View(usize, View),
    /// An elementwise op with one input (kind, scalar parameters).
    Unary(usize, u8, f64, f64),
    /// An elementwise op of two pool tensors (broadcasting).
    Binary(usize, usize, u8),
    /// A reduction (kind, dims, dim, keepdim).
    Reduce(usize, u8, Vec<usize>, isize, bool),
    /// softmax / log_softmax along a dim.
    Softmax(usize, isize, bool),
    /// cross_entropy of logits against fresh targets in `lo..hi` (or a pool tensor).
    CrossEntropy(usize, Option<usize>, i64, i64, CrossEntropySpec),
    /// mse_loss.
    Mse(usize, usize, Reduction),
    /// matmul.
    Matmul(usize, usize),
    /// linear with an optional bias.
    Linear(usize, usize, Option<usize>),
    /// gemm (alpha, beta, c, bias, out dtype, algo).
    Gemm(
        usize,
        usize,
        f32,
        f32,
        Option<usize>,
        Option<usize>,
        DType,
        GemmAlgo,
    ),
    /// conv2d.
    Conv(usize, usize, Option<usize>, Conv2dParams),
    /// max_pool2d.
    MaxPool(usize, MaxPool2dParams),
    /// avg_pool2d.
    AvgPool(usize, AvgPool2dParams),
    /// adaptive_avg_pool2d.
    Adaptive(usize, (usize, usize)),
    /// batch_norm (running mean, var, weight, bias, params, fused relu).
    BatchNorm(usize, [Option<usize>; 4], BatchNormParams, bool),
    /// dropout.
    Dropout(usize, f64, bool),
    /// cat along a dim.
    Cat(Vec<usize>, isize),
    /// In place: 0 assign, 1 add_, 2 zero_grad, 3 set_grad.
    InPlace(usize, usize, u8),
    /// backward of a pool tensor (summed first unless `raw`).
    Backward(usize, bool),
    /// Reading a tensor back as a dtype, or its item.
    ReadBack(usize, DType),
    /// An optimizer over pool tensors: 0 SGD, 1 Adam, 2 AdamW; lr, momentum/beta, fused.
    Optimize(Vec<usize>, u8, f64, f64, bool),
    /// Enters an autocast region (F16 / BF16 / an invalid dtype) for the rest of the program.
    Autocast(DType),
}

/// A view or layout change.
#[derive(Debug, Clone)]
pub enum View {
    /// transpose(a, b)
    Transpose(isize, isize),
    /// permute(perm)
    Permute(Vec<usize>),
    /// narrow(dim, start, len)
    Narrow(isize, usize, usize),
    /// reshape(dims)
    Reshape(Vec<usize>),
    /// flatten(start, end)
    Flatten(isize, isize),
    /// unsqueeze(dim)
    Unsqueeze(isize),
    /// squeeze(dim)
    Squeeze(isize),
    /// broadcast_as(dims)
    Broadcast(Vec<usize>),
    /// contiguous()
    Contiguous,
    /// to_memory_format(channels_last)
    Format(bool),
    /// to_dtype
    ToDtype(DType),
    /// to_device
    ToDevice(Device),
    /// detach
    Detach,
}

fn bool_of(d: &mut Draw<'_>) -> bool {
    d.chance(50)
}

fn draw_view(d: &mut Draw<'_>, rank: usize, devices: &[Device]) -> View {
    match d.below(13) {
        0 => View::Transpose(d.dim(rank), d.dim(rank)),
        1 => {
            let mut perm: Vec<usize> = (0..rank).collect();
            for i in (1..perm.len()).rev() {
                perm.swap(i, d.below(i + 1));
            }
            if d.chance(10) {
                perm.push(d.below(rank + 2));
            }
            View::Permute(perm)
        }
        2 => View::Narrow(d.dim(rank), d.param(), d.param()),
        3 => View::Reshape(d.shape(ELEMS)),
        4 => View::Flatten(d.dim(rank), d.dim(rank)),
        5 => View::Unsqueeze(d.dim(rank + 1)),
        6 => View::Squeeze(d.dim(rank)),
        7 => View::Broadcast(d.shape(ELEMS)),
        8 => View::Contiguous,
        9 => View::Format(bool_of(d)),
        10 => View::ToDtype(d.dtype()),
        11 => View::ToDevice(d.device(devices)),
        _ => View::Detach,
    }
}

fn draw_conv_params(d: &mut Draw<'_>) -> Conv2dParams {
    let mut p = Conv2dParams::new(d.param(), d.param());
    if d.chance(30) {
        p.stride.1 = d.param();
        p.padding.1 = d.param();
        p.dilation = (d.param(), d.param());
    }
    if d.chance(20) {
        p.groups = d.param();
    }
    if d.chance(20) {
        p.out_dtype = Some(d.dtype());
    }
    p
}

fn opt_slot(d: &mut Draw<'_>, len: usize) -> Option<usize> {
    if d.chance(50) {
        Some(d.slot(len))
    } else {
        None
    }
}

/// What the drawing of ops may know about a pool tensor.
#[derive(Debug, Clone)]
pub struct Info {
    /// Shape.
    pub dims: Vec<usize>,
    /// Dtype.
    pub dtype: DType,
    /// Device.
    pub device: Device,
}

impl Info {
    /// The facts of a tensor.
    pub fn of(t: &Tensor) -> Info {
        Info {
            dims: t.dims().to_vec(),
            dtype: t.dtype(),
            device: t.device(),
        }
    }
}

/// A fresh tensor shaped to fit (`Op::New` of `dims` like `x`), drawn with small values.
fn fresh(d: &mut Draw<'_>, dims: Vec<usize>, x: &Info) -> Op {
    Op::New {
        dims,
        dtype: x.dtype,
        device: x.device,
        fill: 0,
        value: 0.0,
        grad: x.dtype != DType::I64 && d.chance(50),
    }
}

/// Operands shaped to fit `x` for the ops whose random pairings rarely agree (conv, matmul,
/// linear, gemm, batch norm, mse, reshape, pools): the ops to run first (fresh tensors, which
/// take the next pool slots) and the op itself. `None` when `x` has the wrong rank.
fn draw_fitting(d: &mut Draw<'_>, xi: usize, x: &Info, len: usize) -> Option<Vec<Op>> {
    let dims = &x.dims;
    let small = |v: usize| v.clamp(1, 4);
    let mut pre = Vec::new();
    let mut next = len;
    let mut add = |op: Op, pre: &mut Vec<Op>| {
        pre.push(op);
        next += 1;
        next - 1
    };
    let op = match d.below(9) {
        0 if dims.len() == 4 => {
            let c = dims[1];
            let groups = if c > 1 && d.chance(30) { c } else { 1 };
            let cout = groups.saturating_mul(1 + d.below(3));
            let k = (1 + d.below(3), 1 + d.below(3));
            let w = add(
                fresh(d, vec![cout, c / groups.max(1), k.0, k.1], x),
                &mut pre,
            );
            let b = if d.chance(50) {
                Some(add(fresh(d, vec![cout], x), &mut pre))
            } else {
                None
            };
            let mut p = Conv2dParams::new(1 + d.below(2), d.below(2));
            p.groups = groups;
            if d.chance(20) {
                p.dilation = (2, 1 + d.below(2));
            }
            if d.chance(20) {
                p.out_dtype = Some(d.dtype());
            }
            Op::Conv(xi, w, b, p)
        }
        1 if !dims.is_empty() => {
            let k = dims[dims.len() - 1];
            let n = small(d.size());
            let rhs = if dims.len() == 3 && d.chance(50) {
                vec![dims[0], k, n]
            } else {
                vec![k, n]
            };
            let y = add(fresh(d, rhs, x), &mut pre);
            Op::Matmul(xi, y)
        }
        2 if !dims.is_empty() => {
            let n = small(d.size());
            let w = add(fresh(d, vec![n, dims[dims.len() - 1]], x), &mut pre);
            let b = if d.chance(50) {
                Some(add(fresh(d, vec![n], x), &mut pre))
            } else {
                None
            };
            Op::Linear(xi, w, b)
        }
        3 if dims.len() == 2 || dims.len() == 3 => {
            let (m, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let n = small(d.size());
            let y = add(fresh(d, vec![k, n], x), &mut pre);
            let c = if d.chance(40) {
                Some(add(fresh(d, vec![m, n], x), &mut pre))
            } else {
                None
            };
            let bias = if d.chance(40) {
                Some(add(fresh(d, vec![n], x), &mut pre))
            } else {
                None
            };
            let out = d.pick(&[DType::F32, DType::F16, DType::BF16, x.dtype]);
            let algo = d.pick(&[
                GemmAlgo::Auto,
                GemmAlgo::SimtF32,
                GemmAlgo::Wmma,
                GemmAlgo::MmaPipeline,
            ]);
            Op::Gemm(xi, y, 1.0, d.unit() as f32, c, bias, out, algo)
        }
        4 if dims.len() >= 2 => {
            let c = dims[1];
            let aux = [0; 4].map(|_| {
                if d.chance(70) {
                    Some(add(fresh(d, vec![c], x), &mut pre))
                } else {
                    None
                }
            });
            let p = BatchNormParams {
                training: d.chance(60),
                momentum: 0.1,
                eps: 1e-5,
            };
            Op::BatchNorm(xi, aux, p, d.chance(50))
        }
        5 => {
            let y = add(fresh(d, dims.clone(), x), &mut pre);
            Op::Mse(
                xi,
                y,
                d.pick(&[Reduction::Mean, Reduction::Sum, Reduction::None]),
            )
        }
        6 => {
            // Same element count: merged, split or reversed dims.
            let n = dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b))?;
            let shape = match d.below(3) {
                0 => vec![n],
                1 if n > 0 && n % 2 == 0 => vec![2, n / 2],
                _ => dims.iter().rev().copied().collect(),
            };
            Op::View(xi, View::Reshape(shape))
        }
        7 if dims.len() == 4 => {
            let k = 1 + d.below(3);
            let (s, p) = (1 + d.below(2), d.below(k / 2 + 1));
            match d.below(3) {
                0 => Op::MaxPool(xi, MaxPool2dParams::new(k, s, p)),
                1 => {
                    let mut a = AvgPool2dParams::new(k, s, p);
                    a.count_include_pad = d.chance(50);
                    Op::AvgPool(xi, a)
                }
                _ => Op::Adaptive(xi, (1 + d.below(3), 1 + d.below(3))),
            }
        }
        8 if dims.len() == 2 => {
            let spec = CrossEntropySpec {
                ignore_index: d.pick(&[-100, 0]),
                label_smoothing: d.pick(&[0.0, 0.0, 0.1]),
                reduction: d.pick(&[Reduction::Mean, Reduction::Sum, Reduction::None]),
            };
            Op::CrossEntropy(xi, None, 0, dims[1].max(1) as i64, spec)
        }
        _ => return None,
    };
    pre.push(op);
    Some(pre)
}

/// Draws the next ops for a pool of tensors described by `infos`: usually one op, preceded
/// by the fresh operands it needs when it was drawn to fit its input.
pub fn draw_ops(d: &mut Draw<'_>, infos: &[Info], devices: &[Device]) -> Vec<Op> {
    let len = infos.len();
    if len > 0 && d.chance(50) {
        let xi = d.slot(len);
        if let Some(ops) = draw_fitting(d, xi, &infos[xi], len) {
            return ops;
        }
    }
    let ranks: Vec<usize> = infos.iter().map(|i| i.dims.len()).collect();
    vec![draw_op(d, &ranks, devices)]
}

/// Draws one op with random operands for a pool of `len` tensors with the given ranks.
pub fn draw_op(d: &mut Draw<'_>, ranks: &[usize], devices: &[Device]) -> Op {
    let len = ranks.len();
    if len == 0 || d.chance(15) {
        let dtype = d.dtype();
        return Op::New {
            dims: d.shape(ELEMS),
            dtype,
            device: d.device(devices),
            fill: d.below(4) as u8,
            value: d.float(),
            grad: dtype != DType::I64 && d.chance(40),
        };
    }
    let x = d.slot(len);
    let rank = ranks[x];
    match d.below(24) {
        0..=2 => Op::View(x, draw_view(d, rank, devices)),
        3 | 4 => Op::Unary(x, d.below(19) as u8, d.float(), d.float()),
        5 | 6 => Op::Binary(x, d.slot(len), d.below(7) as u8),
        7 => {
            let dims = (0..d.below(3)).map(|_| d.below(rank + 1)).collect();
            Op::Reduce(x, d.below(9) as u8, dims, d.dim(rank), bool_of(d))
        }
        8 => Op::Softmax(x, d.dim(rank), bool_of(d)),
        9 => {
            let spec = CrossEntropySpec {
                ignore_index: d.pick(&[-100, 0, 1, i64::MIN]),
                label_smoothing: if d.chance(70) { 0.0 } else { d.unit() },
                reduction: d.pick(&[Reduction::Mean, Reduction::Sum, Reduction::None]),
            };
            let targets = if d.chance(20) {
                Some(d.slot(len))
            } else {
                None
            };
            let lo = d.pick(&[0, 0, -1, -100]);
            Op::CrossEntropy(x, targets, lo, d.pick(&[1, 2, 3, 5, 9]), spec)
        }
        10 => Op::Mse(
            x,
            d.slot(len),
            d.pick(&[Reduction::Mean, Reduction::Sum, Reduction::None]),
        ),
        11 => Op::Matmul(x, d.slot(len)),
        12 => Op::Linear(x, d.slot(len), opt_slot(d, len)),
        13 => Op::Gemm(
            x,
            d.slot(len),
            d.float() as f32,
            d.float() as f32,
            opt_slot(d, len),
            opt_slot(d, len),
            d.dtype(),
            d.pick(&[
                GemmAlgo::Auto,
                GemmAlgo::SimtF32,
                GemmAlgo::Wmma,
                GemmAlgo::MmaPipeline,
            ]),
        ),
        14 => Op::Conv(x, d.slot(len), opt_slot(d, len), draw_conv_params(d)),
        15 => {
            let mut p = MaxPool2dParams::new(d.param(), d.param(), d.param());
            if d.chance(20) {
                p.dilation = (d.param(), d.param());
            }
            Op::MaxPool(x, p)
        }
        16 => {
            let mut p = AvgPool2dParams::new(d.param(), d.param(), d.param());
            p.count_include_pad = bool_of(d);
            Op::AvgPool(x, p)
        }
        17 => Op::Adaptive(x, (d.param(), d.param())),
        18 => {
            let aux = [0; 4].map(|_| opt_slot(d, len));
            let p = BatchNormParams {
                training: bool_of(d),
                momentum: d.unit(),
                eps: if d.chance(80) { 1e-5 } else { d.float() },
            };
            Op::BatchNorm(x, aux, p, bool_of(d))
        }
        19 => Op::Dropout(x, d.unit(), bool_of(d)),
        20 => Op::Cat((0..d.below(4)).map(|_| d.slot(len)).collect(), d.dim(rank)),
        21 => {
            if d.chance(60) {
                Op::Backward(x, d.chance(20))
            } else {
                Op::InPlace(x, d.slot(len), d.below(4) as u8)
            }
        }
        22 => {
            if d.chance(20) {
                Op::Autocast(d.dtype())
            } else {
                Op::ReadBack(x, d.dtype())
            }
        }
        _ => Op::Optimize(
            (0..1 + d.below(3)).map(|_| d.slot(len)).collect(),
            d.below(3) as u8,
            if d.chance(85) { 0.01 } else { d.float() },
            d.unit(),
            bool_of(d),
        ),
    }
}

fn unary(x: &Tensor, kind: u8, a: f64, b: f64) -> Result<Tensor> {
    match kind {
        0 => x.neg(),
        1 => x.exp(),
        2 => x.log(),
        3 => x.sqrt(),
        4 => x.rsqrt(),
        5 => x.abs(),
        6 => x.square(),
        7 => x.recip(),
        8 => x.relu(),
        9 => x.powf(a),
        10 => x.affine(a, b),
        11 => x.add_scalar(a),
        12 => x.sub_scalar(a),
        13 => x.mul_scalar(a),
        14 => x.div_scalar(a),
        15 => x.zeros_like(),
        16 => x.ones_like(),
        17 => x.deep_copy(),
        _ => x.to_device(Device::Cpu),
    }
}

fn binary(x: &Tensor, y: &Tensor, kind: u8) -> Result<Tensor> {
    match kind {
        0 => x.add(y),
        1 => x.sub(y),
        2 => x.mul(y),
        3 => x.div(y),
        4 => x.maximum(y),
        5 => x.minimum(y),
        _ => x.eq_mask(y),
    }
}

fn reduce(x: &Tensor, kind: u8, dims: &[usize], dim: isize, keep: bool) -> Result<Tensor> {
    match kind {
        0 => x.sum_dims(dims, keep),
        1 => x.mean_dims(dims, keep),
        2 => x.max_dims(dims, keep),
        3 => x.min_dims(dims, keep),
        4 => x.sum(dim, keep),
        5 => x.mean(dim, keep),
        6 => x.max(dim, keep),
        7 => x.sum_all(),
        _ => x.mean_all(),
    }
}

fn view(x: &Tensor, v: &View) -> Result<Tensor> {
    match v {
        View::Transpose(a, b) => x.transpose(*a, *b),
        View::Permute(p) => x.permute(p),
        View::Narrow(d, s, l) => x.narrow(*d, *s, *l),
        View::Reshape(s) => x.reshape(s.clone()),
        View::Flatten(s, e) => x.flatten(*s, *e),
        View::Unsqueeze(d) => x.unsqueeze(*d),
        View::Squeeze(d) => x.squeeze(*d),
        View::Broadcast(s) => x.broadcast_as(s.clone()),
        View::Contiguous => x.contiguous(),
        View::Format(cl) => x.to_memory_format(if *cl {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        }),
        View::ToDtype(t) => x.to_dtype(*t),
        View::ToDevice(dev) => x.to_device(*dev),
        View::Detach => Ok(x.detach()),
    }
}

fn read_back(x: &Tensor, dtype: DType) -> Result<()> {
    match dtype {
        DType::F16 => x.to_vec::<hemi::f16>().map(drop),
        DType::BF16 => x.to_scalar::<hemi::bf16>().map(drop),
        DType::F32 => x.to_vec::<f32>().map(drop),
        DType::F64 => x.item().map(drop),
        DType::I64 => x.to_f64_vec().map(drop),
    }
}

fn optimize(
    pool: &[Tensor],
    slots: &[usize],
    kind: u8,
    lr: f64,
    m: f64,
    fused: bool,
) -> Result<()> {
    let params: Vec<Tensor> = slots.iter().map(|&i| pool[i].clone()).collect();
    let mut opt: Box<dyn Optimizer> = match kind {
        0 => Box::new(Sgd::new(
            params,
            SgdConfig::new(lr).momentum(m).fused(fused),
        )?),
        1 => Box::new(Adam::new(
            params,
            AdamConfig::adam().lr(lr).betas(m, 0.999).fused(fused),
        )?),
        _ => Box::new(Adam::new(
            params,
            AdamConfig::adamw().lr(lr).amsgrad(fused),
        )?),
    };
    opt.step()?;
    opt.set_lr(m * 2.0)?;
    opt.step()?;
    opt.zero_grad();
    Ok(())
}

impl Op {
    /// The op's variant name (for per-op counts).
    pub fn name(&self) -> &'static str {
        match self {
            Op::New { .. } => "new",
            Op::View(_, v) => match v {
                View::Transpose(..) => "transpose",
                View::Permute(..) => "permute",
                View::Narrow(..) => "narrow",
                View::Reshape(..) => "reshape",
                View::Flatten(..) => "flatten",
                View::Unsqueeze(..) => "unsqueeze",
                View::Squeeze(..) => "squeeze",
                View::Broadcast(..) => "broadcast_as",
                View::Contiguous => "contiguous",
                View::Format(..) => "to_memory_format",
                View::ToDtype(..) => "to_dtype",
                View::ToDevice(..) => "to_device",
                View::Detach => "detach",
            },
            Op::Unary(..) => "unary",
            Op::Binary(..) => "binary",
            Op::Reduce(..) => "reduce",
            Op::Softmax(..) => "softmax",
            Op::CrossEntropy(..) => "cross_entropy",
            Op::Mse(..) => "mse_loss",
            Op::Matmul(..) => "matmul",
            Op::Linear(..) => "linear",
            Op::Gemm(..) => "gemm",
            Op::Conv(..) => "conv2d",
            Op::MaxPool(..) => "max_pool2d",
            Op::AvgPool(..) => "avg_pool2d",
            Op::Adaptive(..) => "adaptive_avg_pool2d",
            Op::BatchNorm(..) => "batch_norm",
            Op::Dropout(..) => "dropout",
            Op::Cat(..) => "cat",
            Op::InPlace(..) => "in_place",
            Op::Backward(..) => "backward",
            Op::ReadBack(..) => "read_back",
            Op::Optimize(..) => "optimizer",
            Op::Autocast(..) => "autocast",
        }
    }
}

/// Runs one op on the pool; a produced tensor joins it. Returns how many public API calls the
/// op made (the unit of the fuzz counts) and whether it succeeded.
pub fn run_op(
    op: &Op,
    pool: &mut Vec<Tensor>,
    guards: &mut Vec<hemi::amp::AutocastGuard>,
) -> (usize, bool) {
    let out: Result<Tensor> = (|| {
        let t = |i: usize| pool[i].clone();
        match op {
            Op::New {
                dims,
                dtype,
                device,
                fill,
                value,
                grad,
            } => {
                let x = match fill {
                    0 => Tensor::randn(dims.clone(), *dtype, *device),
                    1 => Tensor::zeros(dims.clone(), *dtype, *device),
                    2 => Tensor::full(dims.clone(), *value, *dtype, *device),
                    _ => {
                        Tensor::randint(-3, 1 + value.abs().min(50.0) as i64, dims.clone(), *device)
                    }
                }?;
                if *grad {
                    x.requires_grad_(true)
                } else {
                    Ok(x)
                }
            }
            Op::View(x, v) => view(&t(*x), v),
            Op::Unary(x, k, a, b) => unary(&t(*x), *k, *a, *b),
            Op::Binary(x, y, k) => binary(&t(*x), &t(*y), *k),
            Op::Reduce(x, k, dims, dim, keep) => reduce(&t(*x), *k, dims, *dim, *keep),
            Op::Softmax(x, dim, log) => {
                if *log {
                    t(*x).log_softmax(*dim)
                } else {
                    t(*x).softmax(*dim)
                }
            }
            Op::CrossEntropy(x, targets, lo, hi, spec) => {
                let logits = t(*x);
                let targets = match targets {
                    Some(i) => t(*i),
                    None => {
                        let n = logits.dims().first().copied().unwrap_or(1);
                        Tensor::randint(*lo, *hi, [n], logits.device())?
                    }
                };
                logits.cross_entropy(&targets, *spec)
            }
            Op::Mse(x, y, r) => t(*x).mse_loss(&t(*y), *r),
            Op::Matmul(x, y) => t(*x).matmul(&t(*y)),
            Op::Linear(x, w, b) => t(*x).linear(&t(*w), b.map(t).as_ref()),
            Op::Gemm(x, y, alpha, beta, c, bias, out, algo) => {
                let mut o = GemmOptions::new(*out);
                o.alpha = *alpha;
                o.beta = *beta;
                o.c = c.map(t);
                o.bias = bias.map(t);
                o.algo = *algo;
                Tensor::gemm(&t(*x), &t(*y), &o)
            }
            Op::Conv(x, w, b, p) => t(*x).conv2d(&t(*w), b.map(t).as_ref(), *p),
            Op::MaxPool(x, p) => t(*x).max_pool2d(*p),
            Op::AvgPool(x, p) => t(*x).avg_pool2d(*p),
            Op::Adaptive(x, hw) => t(*x).adaptive_avg_pool2d(*hw),
            Op::BatchNorm(x, aux, p, relu) => {
                let [m, v, w, b] = aux.map(|i| i.map(t));
                let x = t(*x);
                if *relu {
                    x.batch_norm_relu(m.as_ref(), v.as_ref(), w.as_ref(), b.as_ref(), *p)
                } else {
                    x.batch_norm(m.as_ref(), v.as_ref(), w.as_ref(), b.as_ref(), *p)
                }
            }
            Op::Dropout(x, p, training) => t(*x).dropout(*p, *training),
            Op::Cat(parts, dim) => {
                let parts: Vec<Tensor> = parts.iter().map(|&i| t(i)).collect();
                Tensor::cat(&parts.iter().collect::<Vec<_>>(), *dim)
            }
            Op::InPlace(x, y, k) => {
                let (x, y) = (t(*x), t(*y));
                match k {
                    0 => x.assign(&y)?,
                    1 => x.add_(&y)?,
                    2 => x.zero_grad(),
                    _ => x.set_grad(Some(y))?,
                }
                Ok(x)
            }
            Op::Backward(x, raw) => {
                let x = t(*x);
                if *raw {
                    x.backward()?;
                } else {
                    x.sum_all()?.backward()?;
                }
                Ok(x)
            }
            Op::ReadBack(x, dtype) => {
                read_back(&t(*x), *dtype)?;
                Ok(t(*x))
            }
            Op::Optimize(slots, kind, lr, m, fused) => {
                optimize(pool, slots, *kind, *lr, *m, *fused)?;
                Ok(t(slots[0]))
            }
            Op::Autocast(dtype) => {
                guards.push(autocast(*dtype)?);
                Ok(t(0))
            }
        }
    })();
    let ok = out.is_ok();
    if let Ok(x) = out {
        pool.push(x);
    }
    let calls = match op {
        Op::Optimize(slots, ..) => 4 + slots.len(),
        Op::Backward(..) | Op::CrossEntropy(..) | Op::New { .. } => 2,
        _ => 1,
    };
    (calls, ok)
}
