//! Gradients of one optimizer step: collected per parameter from one or more batches (and
//! devices), averaged, measured (global L2 norm) and clipped, without reading anything back
//! from the device.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use super::host;

/// The gradients of one optimizer step, summed over accumulated batches, by parameter id.
#[derive(Default)]
pub struct GradientSum {
    sums: HashMap<ParamId, Tensor<1>>,
    /// Parameter ids in the module's order, which is the same in every run.
    order: Vec<ParamId>,
    batches: u32,
}

/// A step's gradients, ready for [`super::Optimizer::step`].
pub struct StepGradients {
    /// The mean gradient over the step's batches (clipped when asked), by parameter id.
    pub grads: HashMap<ParamId, Tensor<1>>,
    /// The global L2 norm before clipping, a one-element tensor on the gradients' device.
    pub norm: Tensor<1>,
}

impl GradientSum {
    /// Adds the gradients of one batch's mean loss for every parameter of `model`.
    pub fn add<M: Module>(&mut self, model: &M, grads: GradientsParams) {
        self.add_shares(model, vec![(grads, 1.0)]);
    }

    /// Adds one batch computed in shares (one per device): `sum_i weight_i * grads_i`, where
    /// each `grads_i` is the gradient of its share's mean loss and `weight_i` the share's
    /// fraction of the batch, is the gradient of the whole batch's mean loss. Shares are
    /// summed in the order given, so the result does not depend on which device finished
    /// first.
    pub fn add_shares<M: Module>(&mut self, model: &M, shares: Vec<(GradientsParams, f64)>) {
        for (mut grads, weight) in shares {
            let mut take = TakeGradients {
                grads: &mut grads,
                sums: &mut self.sums,
                order: &mut self.order,
                weight,
            };
            model.visit(&mut take);
        }
        self.batches += 1;
    }

    /// Batches added since the last step.
    pub fn batches(&self) -> u32 {
        self.batches
    }

    /// The mean gradient over the added batches and its global L2 norm, both left on the
    /// device. When `clip_norm` is set and the norm exceeds it, the gradients are scaled down
    /// to it (on the device: `min(1, clip_norm / norm)`).
    /// `device` holds the norm when no parameter has a gradient.
    pub fn finish(self, clip_norm: Option<f64>, device: &Device) -> StepGradients {
        let scale = 1.0 / f64::from(self.batches.max(1));
        let mut grads: HashMap<ParamId, Tensor<1>> = self
            .sums
            .into_iter()
            .map(|(id, sum)| {
                (
                    id,
                    if scale == 1.0 {
                        sum
                    } else {
                        sum.mul_scalar(scale)
                    },
                )
            })
            .collect();
        // Summed in the module's order, so that the norm, and the clipping it decides, are
        // the same from run to run (and after a resume).
        let norm = squared_norm(&self.order, &mut grads, device).sqrt();
        if let Some(max) = clip_norm {
            let factor = norm.clone().recip().mul_scalar(max).clamp_max(1.0);
            for grad in grads.values_mut() {
                let len = grad.dims()[0];
                *grad = grad.clone() * factor.clone().expand([len]);
            }
        }
        StepGradients { grads, norm }
    }
}

/// The sum of the squares of every gradient, taken in `order`, as a one-element tensor on
/// the gradients' device. Gradients in this process's memory are summed there (in f64, in
/// a fixed order of chunks), the others by the device.
fn squared_norm(
    order: &[ParamId],
    grads: &mut HashMap<ParamId, Tensor<1>>,
    fallback: &Device,
) -> Tensor<1> {
    let mut on_device = Vec::new();
    let mut on_host: Option<f64> = None;
    let mut device: Option<Device> = None;
    for id in order {
        let Some(grad) = grads.remove(id) else {
            continue;
        };
        device.get_or_insert_with(|| grad.device());
        let grad = if host::Values::can_take(&grad) {
            let values = host::Values::take(grad);
            *on_host.get_or_insert(0.0) += host::sum_of_squares(values.slice());
            values.into_tensor()
        } else {
            on_device.push(grad.clone().square().sum());
            grad
        };
        grads.insert(*id, grad);
    }
    let device = device.unwrap_or_else(|| fallback.clone());
    let host_part = |sum: f64| Tensor::<1>::from_floats([sum as f32], &device);
    match (on_device.is_empty(), on_host) {
        (true, sum) => host_part(sum.unwrap_or(0.0)),
        (false, None) => Tensor::cat(on_device, 0).sum(),
        (false, Some(sum)) => Tensor::cat(on_device, 0).sum() + host_part(sum),
    }
}

struct TakeGradients<'a> {
    grads: &'a mut GradientsParams,
    sums: &'a mut HashMap<ParamId, Tensor<1>>,
    order: &'a mut Vec<ParamId>,
    weight: f64,
}

impl ModuleVisitor for TakeGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let elements = grad.shape().num_elements();
        let mut grad = grad.reshape([elements]);
        if self.weight != 1.0 {
            grad = grad.mul_scalar(self.weight);
        }
        let sum = match self.sums.remove(&param.id) {
            Some(sum) => sum + grad,
            None => {
                self.order.push(param.id);
                grad
            }
        };
        self.sums.insert(param.id, sum);
    }
}
