//! Gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`).

use crate::{no_grad, DType, Error, Result, Tensor};

/// Scales the gradients of `params` in place so their global `norm_type`-norm is at most
/// `max_norm`; returns the norm before clipping (F32 `[]`, on the parameters' device).
/// As PyTorch: the factor is `min(1, max_norm / (norm + 1e-6))`, applied without a host
/// read; a non-finite norm propagates into the gradients. Parameters without a gradient are
/// skipped. With AMP, call it after `GradScaler::unscale_`.
pub fn clip_grad_norm_(params: &[Tensor], max_norm: f64, norm_type: f64) -> Result<Tensor> {
    if norm_type.is_nan() || norm_type <= 0.0 {
        return Err(Error::InvalidArgument {
            op: "clip_grad_norm_",
            msg: format!("norm_type must be positive (or inf), got {norm_type}"),
        });
    }
    let _g = no_grad();
    let grads: Vec<(&Tensor, Tensor)> = params
        .iter()
        .filter_map(|p| p.grad().map(|g| (p, g)))
        .collect();
    let Some((first, _)) = grads.first() else {
        return Tensor::zeros(
            (),
            DType::F32,
            params.first().map_or(crate::Device::Cpu, |p| p.device()),
        );
    };
    let device = first.device();
    let per_param = grads
        .iter()
        .map(|(_, g)| {
            let a = g.to_dtype(DType::F32)?.abs()?;
            if norm_type.is_infinite() {
                a.flatten(0, -1)?.max(0, false)
            } else {
                a.powf(norm_type)?.sum_all()
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let stacked = Tensor::cat(
        &per_param
            .iter()
            .map(|t| t.reshape([1]))
            .collect::<Result<Vec<_>>>()?
            .iter()
            .collect::<Vec<_>>(),
        0,
    )?;
    let total = if norm_type.is_infinite() {
        stacked.max(0, false)?
    } else {
        stacked.sum_all()?.powf(1.0 / norm_type)?
    };
    let coef = total
        .add_scalar(1e-6)?
        .recip()?
        .mul_scalar(max_norm)?
        .minimum(&Tensor::ones((), DType::F32, device)?)?;
    for (p, g) in &grads {
        p.set_grad(Some(g.mul(&coef.to_dtype(g.dtype())?)?))?;
    }
    Ok(total)
}
