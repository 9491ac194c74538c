//! Gradients of one optimizer step: collected per parameter from one or more batches (and
//! devices), averaged, measured (global L2 norm) and clipped, without reading anything back
//! from the device.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::host;
use crate::distributed::{Collective, CollectiveError};

/// The gradients of one optimizer step, summed over accumulated batches, by parameter id.
#[derive(Default)]
pub struct GradientSum {
    sums: HashMap<ParamId, Tensor<1>>,
    /// Parameter ids in the module's order, which is the same in every run.
    order: Vec<ParamId>,
    batches: u32,
    /// The squared global norm, when [`Self::exchange`] computed it on the host.
    squared_norm: Option<f64>,
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

    /// Sums the step's gradients over the processes of `world`, so that every rank holds the
    /// gradient of the mean loss over all the step's images (as one process over all their
    /// devices would, up to rounding) and the same bits. Each batch must have been added
    /// with its shares weighted by their images ([`Self::add_shares`] with weights
    /// `images_i`, not `images_i / images`): the sum over ranks, divided by all the step's
    /// images, is then that mean, however the images fell over ranks and batches. The global
    /// norm is then computed here, on the host, in a fixed order, so that every rank clips
    /// alike whatever its device's reductions do.
    ///
    /// `images` are this rank's images in the step, `extra` values to sum alongside (the
    /// step's metrics, stop requests). Returns the images of all ranks. A header of `[has
    /// gradient, per parameter | extra | images]` is summed first, so that only parameters with a gradient on some rank
    /// travel (all of them, unless layers are frozen), then the gradients in buckets of at
    /// most `bucket` values (whole parameters, in the module's order; a larger parameter
    /// alone), each read back from the device in one transfer.
    pub fn exchange<M: Module>(
        &mut self,
        model: &M,
        world: &dyn Collective,
        exchange: Exchange<'_>,
    ) -> Result<u64, CollectiveError> {
        let params = param_sizes(model);
        let mut header: Vec<f32> = params
            .iter()
            .map(|(id, _)| f32::from(u8::from(self.sums.contains_key(id))))
            .collect();
        header.extend_from_slice(exchange.extra);
        header.push(exchange.images as f32);
        world.sum(&mut header)?;
        let total_images = header[header.len() - 1] as u64;
        let extra = &header[params.len()..header.len() - 1];
        exchange.extra.copy_from_slice(extra);
        let present: Vec<(ParamId, usize)> = params
            .iter()
            .zip(&header)
            .filter(|(_, has)| **has > 0.0)
            .map(|(param, _)| *param)
            .collect();
        let scale = 1.0 / total_images.max(1) as f32;
        let mut squared_norm = 0.0f64;
        let mut sums = std::mem::take(&mut self.sums);
        let mut start = 0;
        while start < present.len() {
            let mut end = start + 1;
            let mut len = present[start].1;
            while end < present.len() && len + present[end].1 <= exchange.bucket {
                len += present[end].1;
                end += 1;
            }
            let bucket = &present[start..end];
            let parts: Vec<Tensor<1>> = bucket
                .iter()
                .map(|(id, size)| match sums.remove(id) {
                    Some(sum) => sum,
                    None => Tensor::zeros([*size], exchange.device),
                })
                .collect();
            let mut values: Vec<f32> = Tensor::cat(parts, 0).into_data().iter::<f32>().collect();
            world.sum(&mut values)?;
            values.iter_mut().for_each(|v| *v *= scale);
            squared_norm += host::sum_of_squares(&values);
            let summed = Tensor::<1>::from_data(TensorData::new(values, [len]), exchange.device);
            let mut offset = 0;
            for (id, size) in bucket {
                self.sums
                    .insert(*id, summed.clone().slice(offset..offset + size));
                offset += size;
            }
            start = end;
        }
        self.order = present.into_iter().map(|(id, _)| id).collect();
        // Already the mean over all the step's images.
        self.batches = 1;
        self.squared_norm = Some(squared_norm);
        Ok(total_images)
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
        let norm = match self.squared_norm {
            Some(sum) => Tensor::<1>::from_floats([sum as f32], device),
            None => squared_norm(&self.order, &mut grads, device),
        }
        .sqrt();
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

/// What [`GradientSum::exchange`] sends besides the gradients.
pub struct Exchange<'a> {
    /// This rank's images in the step.
    pub images: u64,
    /// Values summed alongside, replaced by their sums.
    pub extra: &'a mut [f32],
    /// Where the summed gradients go.
    pub device: &'a Device,
    /// Values per bucket ([`crate::distributed::BUCKET`]).
    pub bucket: usize,
}

/// Every float parameter's id and size, in the module's order.
fn param_sizes<M: Module>(model: &M) -> Vec<(ParamId, usize)> {
    struct Sizes(Vec<(ParamId, usize)>);
    impl ModuleVisitor for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id, param.shape().num_elements()));
        }
    }
    let mut sizes = Sizes(Vec::new());
    model.visit(&mut sizes);
    sizes.0
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

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, Tensor};

    use super::*;
    use crate::distributed::CollectiveError;

    /// A world of two where the other rank holds 1.0 in every value it sends (its gradients,
    /// presence flags, extras and image count).
    struct OtherHoldsOnes;

    impl Collective for OtherHoldsOnes {
        fn rank(&self) -> usize {
            0
        }
        fn ranks(&self) -> usize {
            2
        }
        fn describe(&self, rank: usize) -> String {
            format!("rank {rank}")
        }
        fn sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
            values.iter_mut().for_each(|v| *v += 1.0);
            Ok(())
        }
        fn broadcast(&self, _bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
            Ok(())
        }
        fn gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
            Ok(vec![bytes.to_vec(), bytes.to_vec()])
        }
    }

    #[test]
    fn exchanged_gradients_are_weighted_by_images_whatever_the_buckets() {
        let device = Device::flex();
        let model: Linear = LinearConfig::new(3, 2).init(&device);
        let ids: Vec<ParamId> = param_sizes(&model).iter().map(|(id, _)| *id).collect();
        let exchange_with = |bucket: usize| {
            let mut sum = GradientSum::default();
            // The weight's gradient only: the bias has none on this rank but one on the other.
            sum.sums.insert(
                ids[0],
                Tensor::from_floats([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &device),
            );
            sum.order.push(ids[0]);
            sum.batches = 1;
            let mut extra = [7.0f32];
            // Added as [`GradientSum::exchange`] expects: weighted by this rank's 3 images.
            let weighted = sum.sums[&ids[0]].clone().mul_scalar(3.0);
            sum.sums.insert(ids[0], weighted);
            let images = sum
                .exchange(
                    &model,
                    &OtherHoldsOnes,
                    Exchange {
                        images: 3,
                        extra: &mut extra,
                        device: &device,
                        bucket,
                    },
                )
                .expect("exchange");
            assert_eq!((images, extra), (4, [8.0]));
            let order = sum.order.clone();
            order
                .iter()
                .map(|id| sum.sums[id].clone().into_data().iter::<f32>().collect())
                .collect::<Vec<Vec<f32>>>()
        };
        let whole = exchange_with(usize::MAX);
        // (3 images x g + the other's 1) / 4 images; the bias: (0 + 1) / 4.
        let expected: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .map(|g| (3.0 * g + 1.0) / 4.0)
            .collect();
        assert_eq!(whole, vec![expected, vec![0.25, 0.25]]);
        for bucket in [1, 2, 6, 7] {
            assert_eq!(exchange_with(bucket), whole, "buckets of {bucket}");
        }
    }
}
