//! The matmul family.

use super::{check_bounds, BackendDevice};
use crate::{DType, Error, Layout, Result, StorageRef};

/// Checks the arguments of [`MatmulOps::matmul`]: both layouts inside their buffers, `lhs`
/// of dims `[batch, m, k]` and `rhs` of dims `[batch, k, n]`, an output size that fits.
pub fn check_matmul(
    lhs: &StorageRef,
    ll: &Layout,
    rhs: &StorageRef,
    rl: &Layout,
    spec: &MatmulSpec,
) -> Result<()> {
    check_bounds("matmul", lhs, ll)?;
    check_bounds("matmul", rhs, rl)?;
    let MatmulSpec { batch, m, n, k } = *spec;
    if ll.dims() != [batch, m, k] || rl.dims() != [batch, k, n] {
        return Err(Error::shape(
            "matmul",
            format!(
                "lhs {:?} and rhs {:?} do not match batch {batch}, m {m}, k {k}, n {n}",
                ll.dims(),
                rl.dims()
            ),
        ));
    }
    batch
        .checked_mul(m)
        .and_then(|x| x.checked_mul(n))
        .ok_or_else(|| Error::shape("matmul", "output size overflows"))?;
    Ok(())
}

/// A batched matrix product `out[b] = lhs[b] · rhs[b]`, `lhs` viewed as `[batch, m, k]` and
/// `rhs` as `[batch, k, n]` with arbitrary element strides (a batch stride of 0 broadcasts).
/// The output is contiguous `[batch, m, n]` of the inputs' dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulSpec {
    /// Number of independent products.
    pub batch: usize,
    /// Rows of lhs and out.
    pub m: usize,
    /// Columns of rhs and out.
    pub n: usize,
    /// The contracted dim.
    pub k: usize,
}

/// Matrix products.
pub trait MatmulOps: BackendDevice {
    /// Batched matrix product, see [`MatmulSpec`] (layouts are rank 3).
    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef>;
    /// The general product `out = alpha · lhs·rhs + beta · c + bias`, see [`GemmEpilogue`];
    /// contiguous `[batch, m, n]` output in `epilogue.out_dtype`. Accumulates in f32 (f64 for
    /// F64) and rounds once at the output.
    fn gemm(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
        epilogue: &GemmEpilogue,
    ) -> Result<StorageRef>;
}

/// Which kernel a device runs for a product: a hint for devices with several (the CUDA
/// backend's three tiers); the CPU has one algorithm and ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmAlgo {
    /// The device's choice (what `matmul` uses).
    #[default]
    Auto,
    /// (iii) tiled fp32 SIMT (F32 inputs).
    SimtF32,
    /// (i) `nvcuda::wmma` Tensor-Core kernel (F16 or BF16 inputs).
    Wmma,
    /// (ii) `mma.sync.m16n8k16` + `ldmatrix` + `cp.async` pipeline (F16 or BF16 inputs, a
    /// k-contiguous A and a k- or n-contiguous B).
    MmaPipeline,
}

/// The epilogue of [`MatmulOps::gemm`]: `out = alpha · acc + beta · c + bias[col]` in f32
/// (in that order), rounded once into `out_dtype`.
#[derive(Debug, Clone)]
pub struct GemmEpilogue {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `c` (unused without `c`).
    pub beta: f32,
    /// The added matrix: a view of dims `[batch, m, n]` in `out_dtype` (stride 0 broadcasts).
    pub c: Option<(StorageRef, Layout)>,
    /// Per-column bias, F32 `[n]`.
    pub bias: Option<StorageRef>,
    /// F32, F16 or BF16 (F64 for F64 inputs on the CPU).
    pub out_dtype: DType,
    /// Kernel hint.
    pub algo: GemmAlgo,
}

impl GemmEpilogue {
    /// `alpha = 1`, no `c`, no bias: the plain product in `out_dtype`.
    pub fn plain(out_dtype: DType) -> Self {
        GemmEpilogue {
            alpha: 1.0,
            beta: 0.0,
            c: None,
            bias: None,
            out_dtype,
            algo: GemmAlgo::Auto,
        }
    }
}

/// Checks the arguments of [`MatmulOps::gemm`]: those of [`check_matmul`], then `c` of dims
/// `[batch, m, n]` inside its buffer in the output dtype, an F32 bias of `n`, a float output.
pub fn check_gemm(
    lhs: &StorageRef,
    ll: &Layout,
    rhs: &StorageRef,
    rl: &Layout,
    spec: &MatmulSpec,
    ep: &GemmEpilogue,
) -> Result<()> {
    check_matmul(lhs, ll, rhs, rl, spec)?;
    if !ep.out_dtype.is_float() {
        return Err(Error::dtype(
            "gemm",
            format!("output dtype {}", ep.out_dtype),
        ));
    }
    let MatmulSpec { batch, m, n, .. } = *spec;
    if let Some((c, cl)) = &ep.c {
        check_bounds("gemm", c, cl)?;
        if cl.dims() != [batch, m, n] || c.dtype() != ep.out_dtype {
            return Err(Error::shape(
                "gemm",
                format!(
                    "c {:?} ({}) for an output [{batch}, {m}, {n}] ({})",
                    cl.dims(),
                    c.dtype(),
                    ep.out_dtype
                ),
            ));
        }
    }
    if let Some(b) = &ep.bias {
        if b.len() != n || b.dtype() != DType::F32 {
            return Err(Error::shape(
                "gemm",
                format!(
                    "bias of {} {} for {n} columns (want F32)",
                    b.len(),
                    b.dtype()
                ),
            ));
        }
    }
    Ok(())
}
