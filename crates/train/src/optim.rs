//! The paper's optimizers, written out rather than taken from `burn-optim`: Burn's SGD
//! dampens momentum by 0.1 unless told otherwise, decays every parameter alike, and keys its
//! state by parameter ids that change when a model is rebuilt. Here the state is keyed by the
//! parameter's path in the module (`entry_flow.0.sep1.pointwise.weight`), so a checkpoint
//! can be read into a freshly built model, and each rule is the one the recipes name:
//!
//! - SGD as PyTorch's `torch.optim.SGD` (and TensorFlow's momentum optimizer when dampening
//!   is 0): `g += wd * w; v = mu * v + (1 - dampening) * g` (the first step sets `v = g`);
//!   `w -= lr * v` (Nesterov: `w -= lr * (g + mu * v)`).
//! - RMSprop as TensorFlow 1's `RMSPropOptimizer`, which the paper's JFT runs used: the mean
//!   square starts at 1, `ms = rho * ms + (1 - rho) * g^2`,
//!   `mom = mu * mom + lr * g / sqrt(ms + eps)`, `w -= mom`.
//!
//! Weight decay skips rank-1 parameters (BatchNorm scales and shifts, biases) unless
//! `decay_norm_and_bias` is set, as timm's `param_groups_weight_decay` does.
//!
//! On the CPU devices the rules run as one fused loop over each parameter's values in place
//! (`host`): written as tensor operations, an update makes six to eight passes over the 23M
//! weights and allocates three fresh buffers of their size, which measured 5% of a 96x96
//! training step on flex. The tensor operations remain for the GPU, where they run as kernels.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::OptimizerConfig;

/// The gradients of one optimizer step, summed over accumulated batches, by parameter id.
#[derive(Default)]
pub struct GradientSum {
    sums: HashMap<ParamId, Tensor<1>>,
    /// Parameter ids in the module's order, which is the same in every run.
    order: Vec<ParamId>,
    batches: u32,
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

    /// The mean gradient over the added batches, and its global L2 norm (one sync).
    /// When `clip_norm` is set and the norm exceeds it, the gradients are scaled down to it.
    pub fn finish(self, clip_norm: Option<f64>) -> (HashMap<ParamId, Tensor<1>>, f64) {
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
        let norm = squared_norm(&self.order, &mut grads).sqrt();
        if let Some(max) = clip_norm
            && norm > max
        {
            let factor = max / norm;
            for grad in grads.values_mut() {
                *grad = grad.clone().mul_scalar(factor);
            }
        }
        (grads, norm)
    }
}

/// The sum of the squares of every gradient, taken in `order`.
fn squared_norm(order: &[ParamId], grads: &mut HashMap<ParamId, Tensor<1>>) -> f64 {
    let mut squares = Vec::new();
    let mut total = 0.0;
    for id in order {
        let Some(grad) = grads.remove(id) else {
            continue;
        };
        let grad = if host::Values::can_take(&grad) {
            let values = host::Values::take(grad);
            total += host::sum_of_squares(values.slice());
            values.into_tensor()
        } else {
            squares.push(grad.clone().square().sum());
            grad
        };
        grads.insert(*id, grad);
    }
    if !squares.is_empty() {
        total += Tensor::cat(squares, 0)
            .into_data()
            .convert::<f32>()
            .iter::<f32>()
            .map(f64::from)
            .sum::<f64>();
    }
    total
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

/// SGD or RMSprop with its per-parameter state.
pub struct Optimizer {
    config: OptimizerConfig,
    /// By parameter path: SGD's velocity, or RMSprop's mean square then momentum.
    state: BTreeMap<String, Vec<Tensor<1>>>,
    /// Whether parameters on a CPU device take the fused loop (`host`); off only in tests
    /// that compare it with the tensor operations.
    fused_on_host: bool,
}

/// An optimizer state file that does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A tensor of the file has no parameter in the model, or the wrong size.
    #[error("optimizer state `{key}`: {reason}")]
    Mismatch {
        /// The tensor's name in the state file.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl Optimizer {
    /// A fresh optimizer (empty state).
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            state: BTreeMap::new(),
            fused_on_host: true,
        }
    }

    /// Applies one update with learning rate `lr` to every parameter of `model` that has a
    /// gradient in `grads`, returning the updated model.
    pub fn step<M: Module>(&mut self, model: M, grads: HashMap<ParamId, Tensor<1>>, lr: f64) -> M {
        let mut update = Update {
            config: &self.config,
            state: &mut self.state,
            grads,
            lr,
            path: Vec::new(),
            fused_on_host: self.fused_on_host,
        };
        model.map(&mut update)
    }

    /// The same optimizer, updating with tensor operations on every device (for tests that
    /// compare them with the fused loop).
    #[cfg(test)]
    fn tensor_ops_only(mut self) -> Self {
        self.fused_on_host = false;
        self
    }

    /// The state as named flat tensors: `<param path>.<slot>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor<1>)> {
        let slots = self.slot_names();
        let mut named = Vec::new();
        for (path, tensors) in &self.state {
            for (slot, tensor) in slots.iter().zip(tensors) {
                named.push((format!("{path}.{slot}"), tensor.clone()));
            }
        }
        named
    }

    /// Replaces the state with `tensors` (as written by [`Self::state_tensors`]), checking
    /// each against `model`'s parameters by path and size.
    pub fn load_state<M: Module>(
        &mut self,
        model: &M,
        tensors: BTreeMap<String, TensorData>,
        device: &Device,
    ) -> Result<(), StateError> {
        let shapes = xception_model::interop::shapes_by_path(model);
        let slots = self.slot_names();
        let mut state: BTreeMap<String, Vec<Option<Tensor<1>>>> = BTreeMap::new();
        for (key, data) in tensors {
            let mismatch = |reason: String| StateError::Mismatch {
                key: key.clone(),
                reason,
            };
            let (path, slot) = key
                .rsplit_once('.')
                .ok_or_else(|| mismatch("not a `<parameter>.<slot>` name".into()))?;
            let slot_index = slots.iter().position(|s| *s == slot).ok_or_else(|| {
                mismatch(format!(
                    "slot `{slot}` is not one of {slots:?} of this optimizer"
                ))
            })?;
            let expected: usize = shapes
                .get(path)
                .ok_or_else(|| mismatch("the model has no such parameter".into()))?
                .iter()
                .product();
            let found = data.shape().iter().product::<usize>();
            if data.shape().len() != 1 {
                return Err(mismatch(format!(
                    "shape {:?}, expected a flat tensor",
                    data.shape()
                )));
            }
            if found != expected {
                return Err(mismatch(format!(
                    "{found} values, the parameter has {expected}"
                )));
            }
            let entry = state
                .entry(path.to_string())
                .or_insert_with(|| vec![None; slots.len()]);
            entry[slot_index] = Some(Tensor::<1>::from_data(data, device));
        }
        let mut complete = BTreeMap::new();
        for (path, tensors) in state {
            let tensors: Option<Vec<Tensor<1>>> = tensors.into_iter().collect();
            let tensors = tensors.ok_or_else(|| StateError::Mismatch {
                key: path.clone(),
                reason: format!("some of the slots {slots:?} are missing"),
            })?;
            complete.insert(path, tensors);
        }
        self.state = complete;
        Ok(())
    }

    fn slot_names(&self) -> &'static [&'static str] {
        match self.config {
            OptimizerConfig::Sgd { .. } => &["velocity"],
            OptimizerConfig::Rmsprop { .. } => &["mean_square", "momentum"],
        }
    }
}

struct Update<'a> {
    config: &'a OptimizerConfig,
    state: &'a mut BTreeMap<String, Vec<Tensor<1>>>,
    grads: HashMap<ParamId, Tensor<1>>,
    lr: f64,
    path: Vec<String>,
    fused_on_host: bool,
}

impl Update<'_> {
    /// The weight decay that applies to a parameter of rank `rank`.
    fn decay_for(&self, rank: usize) -> f64 {
        let (weight_decay, decay_norm_and_bias) = match *self.config {
            OptimizerConfig::Sgd {
                weight_decay,
                decay_norm_and_bias,
                ..
            }
            | OptimizerConfig::Rmsprop {
                weight_decay,
                decay_norm_and_bias,
                ..
            } => (weight_decay, decay_norm_and_bias),
        };
        if rank > 1 || decay_norm_and_bias {
            weight_decay
        } else {
            0.0
        }
    }

    /// `weights` after one step with `grad`, through the fused loop when every tensor the
    /// step reads is an f32 tensor on a CPU device, else through tensor operations.
    fn updated(
        &mut self,
        path: String,
        weights: Tensor<1>,
        grad: Tensor<1>,
        rank: usize,
    ) -> Tensor<1> {
        let state_on_host = self
            .state
            .get(&path)
            .is_none_or(|slots| slots.iter().all(host::Values::can_take));
        if !(self.fused_on_host
            && host::Values::can_take(&weights)
            && host::Values::can_take(&grad)
            && state_on_host)
        {
            let delta = self.delta(path, &weights, grad, rank);
            return weights - delta;
        }
        let (decay, lr) = (self.decay_for(rank), self.lr);
        let mut weights = host::Values::take(weights);
        let mut grad = host::Values::take(grad);
        let mut slots: Vec<host::Values> = self
            .state
            .remove(&path)
            .unwrap_or_default()
            .into_iter()
            .map(host::Values::take)
            .collect();
        match *self.config {
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                ..
            } => {
                let rule = host::Sgd {
                    lr,
                    momentum,
                    dampening,
                    nesterov,
                    decay,
                };
                let velocity = slots.first_mut().map(host::Values::slice_mut);
                rule.apply(weights.slice_mut(), grad.slice_mut(), velocity);
                if momentum != 0.0 {
                    // On the first step the gradient's buffer became the velocity.
                    let velocity = if slots.is_empty() {
                        grad
                    } else {
                        slots.remove(0)
                    };
                    self.state.insert(path, vec![velocity.into_tensor()]);
                }
            }
            OptimizerConfig::Rmsprop {
                momentum,
                decay: rho,
                epsilon,
                ..
            } => {
                let rule = host::Rmsprop {
                    lr,
                    momentum,
                    rho,
                    epsilon,
                    decay,
                };
                let (mut mean_square, mut previous) = if slots.len() == 2 {
                    let previous = slots.pop();
                    (slots.remove(0), previous)
                } else {
                    // TensorFlow 1 starts the mean square at 1.
                    (weights.like_filled(1.0), None)
                };
                rule.apply(
                    weights.slice_mut(),
                    grad.slice_mut(),
                    mean_square.slice_mut(),
                    previous.as_mut().map(host::Values::slice_mut),
                );
                // The step is in `previous` when there was one, else in the gradient's buffer.
                let step = previous.unwrap_or(grad);
                self.state
                    .insert(path, vec![mean_square.into_tensor(), step.into_tensor()]);
            }
        }
        weights.into_tensor()
    }

    /// The step to subtract from `weights` (flat, without autodiff) given gradient `grad`.
    fn delta(
        &mut self,
        path: String,
        weights: &Tensor<1>,
        grad: Tensor<1>,
        rank: usize,
    ) -> Tensor<1> {
        let lr = self.lr;
        let decay = self.decay_for(rank);
        match *self.config {
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                ..
            } => {
                let grad = if decay > 0.0 {
                    grad + weights.clone().mul_scalar(decay)
                } else {
                    grad
                };
                if momentum == 0.0 {
                    return grad.mul_scalar(lr);
                }
                let velocity = match self.state.remove(&path) {
                    Some(mut slots) => slots
                        .remove(0)
                        .mul_scalar(momentum)
                        .add(grad.clone().mul_scalar(1.0 - dampening)),
                    None => grad.clone(),
                };
                let direction = if nesterov {
                    grad + velocity.clone().mul_scalar(momentum)
                } else {
                    velocity.clone()
                };
                self.state.insert(path, vec![velocity]);
                direction.mul_scalar(lr)
            }
            OptimizerConfig::Rmsprop {
                momentum,
                decay: rho,
                epsilon,
                ..
            } => {
                let grad = if decay > 0.0 {
                    grad + weights.clone().mul_scalar(decay)
                } else {
                    grad
                };
                let (mean_square, previous) = match self.state.remove(&path) {
                    Some(mut slots) if slots.len() == 2 => {
                        let previous = slots.pop();
                        (slots.remove(0), previous)
                    }
                    _ => (weights.ones_like(), None),
                };
                let mean_square = mean_square
                    .mul_scalar(rho)
                    .add(grad.clone().square().mul_scalar(1.0 - rho));
                let scaled = grad
                    .div(mean_square.clone().add_scalar(epsilon).sqrt())
                    .mul_scalar(lr);
                let step = match previous {
                    Some(previous) => previous.mul_scalar(momentum).add(scaled),
                    None => scaled,
                };
                self.state.insert(path, vec![mean_square, step.clone()]);
                step
            }
        }
    }
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove(&param.id) else {
            return param;
        };
        let path = self.path.join(".");
        param.map(|tensor| {
            let autodiff = tensor.is_autodiff();
            let require_grad = tensor.is_require_grad();
            let dims = tensor.dims();
            let weights = tensor.inner().reshape([dims.iter().product::<usize>()]);
            let updated = self.updated(path, weights, grad.inner(), D).reshape(dims);
            let updated = if autodiff {
                updated.autodiff()
            } else {
                updated
            };
            if require_grad {
                updated.require_grad()
            } else {
                updated
            }
        })
    }
}

/// The update rules as one loop over a parameter's values in this process's memory, for the
/// CPU devices. Each expression is the tensor path's (`Update::delta`), operation for
/// operation in f32, so both paths give the same numbers.
mod host {
    use burn::tensor::{DType, Device, Tensor, TensorData};
    use rayon::prelude::*;

    /// Values per task: large enough that a task outweighs its scheduling.
    const CHUNK: usize = 1 << 14;

    /// A flat f32 tensor's values, moved out of the tensor (flex hands over its buffer without
    /// copying it when nothing else holds it) and back.
    pub(super) struct Values {
        data: TensorData,
        device: Device,
    }

    impl Values {
        /// Whether `tensor` lives in this process's memory as f32 values.
        pub(super) fn can_take(tensor: &Tensor<1>) -> bool {
            #[allow(deprecated)] // ndarray is deprecated upstream; our users asked to keep it
            let cpu = [Device::flex(), Device::ndarray()];
            tensor.dtype() == DType::F32 && cpu.contains(&tensor.device().without_autodiff())
        }

        /// The values of `tensor`, which [`Self::can_take`] accepted.
        pub(super) fn take(tensor: Tensor<1>) -> Self {
            let device = tensor.device();
            let mut data = tensor.into_data();
            if data.as_mut_slice::<f32>().is_err() {
                // A buffer f32 cannot view in place (its alignment): copy it into one that can.
                let values: Vec<f32> = data.iter::<f32>().collect();
                let len = values.len();
                data = TensorData::new(values, [len]);
            }
            Self { data, device }
        }

        /// As many values as `self`, all `value`, on the same device.
        pub(super) fn like_filled(&self, value: f32) -> Self {
            let len = self.data.num_elements();
            Self {
                data: TensorData::new(vec![value; len], [len]),
                device: self.device.clone(),
            }
        }

        pub(super) fn slice(&self) -> &[f32] {
            self.data
                .as_slice::<f32>()
                .expect("`Values::take` made the buffer an f32 view")
        }

        pub(super) fn slice_mut(&mut self) -> &mut [f32] {
            self.data
                .as_mut_slice::<f32>()
                .expect("`Values::take` made the buffer an f32 view")
        }

        /// Back to a tensor on the device it came from.
        pub(super) fn into_tensor(self) -> Tensor<1> {
            Tensor::from_data(self.data, &self.device)
        }
    }

    /// `sum(v^2)`, in f64, in a fixed order of chunks (the same sum on every run).
    pub(super) fn sum_of_squares(values: &[f32]) -> f64 {
        let partial: Vec<f64> = values
            .par_chunks(CHUNK)
            .map(|chunk| chunk.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
            .collect();
        partial.iter().sum()
    }

    /// Momentum SGD: `g' = g + decay * w`, `v = momentum * v + (1 - dampening) * g'` (the
    /// first step sets `v = g'`), `w -= lr * v` (Nesterov: `w -= lr * (g' + momentum * v)`).
    pub(super) struct Sgd {
        pub lr: f64,
        pub momentum: f64,
        pub dampening: f64,
        pub nesterov: bool,
        pub decay: f64,
    }

    impl Sgd {
        /// Updates `weights`; `velocity` is `None` on the first step, when `grad` is left
        /// holding the new velocity (`g'`). Without momentum no velocity is kept.
        pub(super) fn apply(
            &self,
            weights: &mut [f32],
            grad: &mut [f32],
            velocity: Option<&mut [f32]>,
        ) {
            let (lr, momentum, decay) = (self.lr as f32, self.momentum as f32, self.decay as f32);
            let undamped = (1.0 - self.dampening) as f32;
            let (nesterov, with_momentum) = (self.nesterov, self.momentum != 0.0);
            let decayed = move |g: f32, w: f32| if decay > 0.0 { g + w * decay } else { g };
            let direction = move |g: f32, v: f32| if nesterov { g + v * momentum } else { v };
            match velocity {
                Some(velocity) => weights
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks(CHUNK))
                    .zip(velocity.par_chunks_mut(CHUNK))
                    .for_each(|((w, g), v)| {
                        for ((w, &g), v) in w.iter_mut().zip(g).zip(v) {
                            let g = decayed(g, *w);
                            *v = *v * momentum + g * undamped;
                            *w -= direction(g, *v) * lr;
                        }
                    }),
                None => weights
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks_mut(CHUNK))
                    .for_each(|(w, g)| {
                        for (w, g) in w.iter_mut().zip(g) {
                            *g = decayed(*g, *w);
                            let step = if with_momentum { direction(*g, *g) } else { *g };
                            *w -= step * lr;
                        }
                    }),
            }
        }
    }

    /// TensorFlow 1's RMSprop: `g' = g + decay * w`, `ms = rho * ms + (1 - rho) * g'^2`,
    /// `step = momentum * step + lr * g' / sqrt(ms + epsilon)`, `w -= step`.
    pub(super) struct Rmsprop {
        pub lr: f64,
        pub momentum: f64,
        pub rho: f64,
        pub epsilon: f64,
        pub decay: f64,
    }

    impl Rmsprop {
        /// Updates `weights` and `mean_square`; the step goes into `previous` (the last
        /// step), or into `grad` on the first step.
        pub(super) fn apply(
            &self,
            weights: &mut [f32],
            grad: &mut [f32],
            mean_square: &mut [f32],
            previous: Option<&mut [f32]>,
        ) {
            let (lr, momentum, decay) = (self.lr as f32, self.momentum as f32, self.decay as f32);
            let (rho, fresh, epsilon) = (
                self.rho as f32,
                (1.0 - self.rho) as f32,
                self.epsilon as f32,
            );
            let scaled = move |g: &mut f32, w: f32, ms: &mut f32| {
                let decayed = if decay > 0.0 { *g + w * decay } else { *g };
                *ms = *ms * rho + (decayed * decayed) * fresh;
                (decayed / (*ms + epsilon).sqrt()) * lr
            };
            match previous {
                Some(previous) => weights
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks_mut(CHUNK))
                    .zip(mean_square.par_chunks_mut(CHUNK))
                    .zip(previous.par_chunks_mut(CHUNK))
                    .for_each(|(((w, g), ms), p)| {
                        for (((w, g), ms), p) in w.iter_mut().zip(g).zip(ms).zip(p) {
                            *p = *p * momentum + scaled(g, *w, ms);
                            *w -= *p;
                        }
                    }),
                None => weights
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks_mut(CHUNK))
                    .zip(mean_square.par_chunks_mut(CHUNK))
                    .for_each(|((w, g), ms)| {
                        for ((w, g), ms) in w.iter_mut().zip(g).zip(ms) {
                            *g = scaled(g, *w, ms);
                            *w -= *g;
                        }
                    }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Tolerance;

    #[derive(Module, Debug)]
    struct Tiny {
        linear: Linear,
    }

    fn tiny(device: &Device) -> Tiny {
        Tiny {
            linear: LinearConfig::new(2, 2).init(device),
        }
    }

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
        tensor
            .into_data()
            .convert::<f32>()
            .iter::<f32>()
            .map(f64::from)
            .collect()
    }

    /// Gradients for the tiny model: the weight gets `gw`, the bias `gb`.
    fn grads(
        model: &Tiny,
        gw: [f32; 4],
        gb: [f32; 2],
        device: &Device,
    ) -> HashMap<ParamId, Tensor<1>> {
        HashMap::from([
            (model.linear.weight.id, Tensor::from_floats(gw, device)),
            (
                model.linear.bias.as_ref().expect("bias").id,
                Tensor::from_floats(gb, device),
            ),
        ])
    }

    fn sgd(nesterov: bool) -> OptimizerConfig {
        OptimizerConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov,
            weight_decay: 0.1,
            decay_norm_and_bias: false,
        }
    }

    fn assert_close(found: &[f64], expected: &[f64]) {
        assert_eq!(found.len(), expected.len());
        for (f, e) in found.iter().zip(expected) {
            assert!((f - e).abs() < 1e-6, "{found:?} vs {expected:?}");
        }
    }

    #[test]
    fn sgd_follows_pytorch_with_decay_on_weights_only() {
        let device = Device::flex();
        for (nesterov, fused) in [(false, true), (true, true), (false, false), (true, false)] {
            let model = tiny(&device);
            let w0 = values(model.linear.weight.val());
            let b0 = values(model.linear.bias.as_ref().expect("bias").val());
            let (gw1, gb1) = ([0.1, -0.2, 0.3, 0.4], [0.5, -0.5]);
            let (gw2, gb2) = ([-0.3, 0.1, 0.2, -0.1], [0.25, 0.75]);
            let mut optimizer = Optimizer::new(sgd(nesterov));
            if !fused {
                optimizer = optimizer.tensor_ops_only();
            }
            let g = grads(&model, gw1, gb1, &device);
            let model = optimizer.step(model, g, 0.1);
            let g = grads(&model, gw2, gb2, &device);
            let model = optimizer.step(model, g, 0.05);

            // By hand, in f64: g' = g + wd * w (weights only); v = g' then v = mu v + g';
            // step = v, or g' + mu v with Nesterov.
            let run = |w0: &[f64], g1: &[f32], g2: &[f32], wd: f64| {
                let mut w = w0.to_vec();
                let mut v = vec![0.0; w.len()];
                for (step, (g, lr)) in [(g1, 0.1), (g2, 0.05)].into_iter().enumerate() {
                    for i in 0..w.len() {
                        let g = f64::from(g[i]) + wd * w[i];
                        v[i] = if step == 0 { g } else { 0.9 * v[i] + g };
                        let d = if nesterov { g + 0.9 * v[i] } else { v[i] };
                        w[i] -= lr * d;
                    }
                }
                w
            };
            assert_close(
                &values(model.linear.weight.val()),
                &run(&w0, &gw1, &gw2, 0.1),
            );
            let bias = model.linear.bias.as_ref().expect("bias").val();
            assert_close(&values(bias), &run(&b0, &gb1, &gb2, 0.0));
        }
    }

    #[test]
    fn rmsprop_follows_tensorflow_1() {
        for fused in [true, false] {
            rmsprop_follows_tensorflow_1_on(fused);
        }
    }

    fn rmsprop_follows_tensorflow_1_on(fused: bool) {
        let device = Device::flex();
        let model = tiny(&device);
        let w0 = values(model.linear.weight.val());
        let config = OptimizerConfig::Rmsprop {
            momentum: 0.9,
            decay: 0.9,
            epsilon: 1.0,
            weight_decay: 0.0,
            decay_norm_and_bias: false,
        };
        let mut optimizer = Optimizer::new(config);
        if !fused {
            optimizer = optimizer.tensor_ops_only();
        }
        let (gw1, gw2) = ([0.1, -0.2, 0.3, 0.4], [-0.3, 0.1, 0.2, -0.1]);
        let g = grads(&model, gw1, [0.0, 0.0], &device);
        let model = optimizer.step(model, g, 0.01);
        let g = grads(&model, gw2, [0.0, 0.0], &device);
        let model = optimizer.step(model, g, 0.001);
        let mut expected = w0.clone();
        for i in 0..4 {
            let (mut ms, mut mom) = (1.0, 0.0);
            for (g, lr) in [(f64::from(gw1[i]), 0.01), (f64::from(gw2[i]), 0.001)] {
                ms = 0.9 * ms + 0.1 * g * g;
                mom = 0.9 * mom + lr * g / (ms + 1.0f64).sqrt();
                expected[i] -= mom;
            }
        }
        assert_close(&values(model.linear.weight.val()), &expected);
    }

    #[test]
    fn state_reloads_into_a_fresh_model_by_path() {
        let device = Device::flex();
        let model = tiny(&device);
        let mut optimizer = Optimizer::new(sgd(false));
        let g = grads(&model, [0.1, 0.2, 0.3, 0.4], [0.5, 0.6], &device);
        let model = optimizer.step(model, g, 0.1);
        let saved: BTreeMap<String, TensorData> = optimizer
            .state_tensors()
            .into_iter()
            .map(|(name, tensor)| (name, tensor.into_data()))
            .collect();
        assert_eq!(
            saved.keys().collect::<Vec<_>>(),
            ["linear.bias.velocity", "linear.weight.velocity"]
        );

        // A model rebuilt from the same weights has new parameter ids.
        let rebuilt = Tiny {
            linear: LinearConfig::new(2, 2).init(&device),
        }
        .load_record(model.clone().into_record());
        let mut reloaded = Optimizer::new(sgd(false));
        reloaded
            .load_state(&rebuilt, saved.clone(), &device)
            .expect("fits");
        let g = grads(&model, [0.0, 0.1, 0.0, 0.1], [0.1, 0.0], &device);
        let continued = optimizer.step(model, g, 0.1);
        let g = grads(&rebuilt, [0.0, 0.1, 0.0, 0.1], [0.1, 0.0], &device);
        let from_file = reloaded.step(rebuilt, g, 0.1);
        from_file
            .linear
            .weight
            .val()
            .into_data()
            .assert_approx_eq::<f32>(
                &continued.linear.weight.val().into_data(),
                Tolerance::absolute(0.0),
            );

        let mut wrong = saved.clone();
        wrong.insert(
            "linear.gamma.velocity".into(),
            TensorData::new(vec![0f32; 2], [2]),
        );
        let error = reloaded
            .load_state(&from_file, wrong, &device)
            .expect_err("unknown");
        assert!(
            error.to_string().contains("linear.gamma.velocity"),
            "{error}"
        );
        let mut short = saved;
        short.insert(
            "linear.weight.velocity".into(),
            TensorData::new(vec![0f32; 3], [3]),
        );
        let error = reloaded
            .load_state(&from_file, short, &device)
            .expect_err("size");
        assert!(
            error.to_string().contains("3 values, the parameter has 4"),
            "{error}"
        );
    }

    #[test]
    fn accumulated_gradients_are_averaged_and_clipped_by_global_norm() {
        let device = Device::flex().autodiff();
        let model = tiny(&device);
        let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
        let mut sum = GradientSum::default();
        for scale in [1.0, 3.0] {
            let loss = model.linear.forward(x.clone()).sum().mul_scalar(scale);
            sum.add(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        assert_eq!(sum.batches(), 2);
        // d(sum(W x + b))/dW = x for each output row, /db = 1; mean scale 2.
        let expected_norm = (2.0f64 * 2.0 * (1.0 + 4.0) * 2.0 + 2.0 * 2.0 * 2.0).sqrt();
        let (grads, norm) = sum.finish(Some(1.0));
        assert!(
            (norm - expected_norm).abs() < 1e-5,
            "{norm} vs {expected_norm}"
        );
        let clipped: f64 = grads
            .values()
            .map(|g| values(g.clone()).iter().map(|v| v * v).sum::<f64>())
            .sum::<f64>()
            .sqrt();
        assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    }

    /// A model with a large weight (several of the fused loop's chunks, not a multiple of
    /// them) and a rank-1 parameter.
    #[derive(Module, Debug)]
    struct Wide {
        linear: Linear,
    }

    fn wide(device: &Device) -> Wide {
        Wide {
            linear: LinearConfig::new(300, 123).init(device),
        }
    }

    #[test]
    fn fused_loop_and_tensor_operations_give_the_same_numbers() {
        let device = Device::flex();
        let configs = [
            OptimizerConfig::default(),
            sgd(true),
            OptimizerConfig::Sgd {
                momentum: 0.5,
                dampening: 0.3,
                nesterov: false,
                weight_decay: 1e-3,
                decay_norm_and_bias: true,
            },
            OptimizerConfig::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 1e-2,
                decay_norm_and_bias: false,
            },
            OptimizerConfig::Rmsprop {
                momentum: 0.9,
                decay: 0.9,
                epsilon: 1.0,
                weight_decay: 1e-4,
                decay_norm_and_bias: false,
            },
        ];
        for config in configs {
            let start = wide(&device);
            let (mut fused, mut tensor_ops) = (start.clone(), start);
            let mut fused_optimizer = Optimizer::new(config.clone());
            let mut tensor_optimizer = Optimizer::new(config.clone()).tensor_ops_only();
            for (step, lr) in [0.1, 0.05, 0.02].into_iter().enumerate() {
                let gradients = |model: &Wide| {
                    let weight = &model.linear.weight;
                    let bias = model.linear.bias.as_ref().expect("bias");
                    let g = |n: usize, salt: usize| -> Tensor<1> {
                        let values: Vec<f32> = (0..n)
                            .map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 - 500.0) / 700.0)
                            .collect();
                        Tensor::from_data(TensorData::new(values, [n]), &device)
                    };
                    HashMap::from([
                        (weight.id, g(300 * 123, step)),
                        (bias.id, g(123, step + 10)),
                    ])
                };
                let g = gradients(&fused);
                fused = fused_optimizer.step(fused, g, lr);
                let g = gradients(&tensor_ops);
                tensor_ops = tensor_optimizer.step(tensor_ops, g, lr);
            }
            fused
                .linear
                .weight
                .val()
                .into_data()
                .assert_approx_eq::<f32>(
                    &tensor_ops.linear.weight.val().into_data(),
                    Tolerance::absolute(1e-7),
                );
            let bias = |m: &Wide| m.linear.bias.as_ref().expect("bias").val().into_data();
            bias(&fused).assert_approx_eq::<f32>(&bias(&tensor_ops), Tolerance::absolute(1e-7));
            let state = |o: &Optimizer| {
                o.state_tensors()
                    .into_iter()
                    .map(|(n, t)| (n, t.into_data()))
            };
            for ((name, a), (other, b)) in state(&fused_optimizer).zip(state(&tensor_optimizer)) {
                assert_eq!(name, other);
                a.assert_approx_eq::<f32>(&b, Tolerance::absolute(1e-7));
            }
            assert_eq!(
                fused_optimizer.state_tensors().len(),
                tensor_optimizer.state_tensors().len(),
                "{config:?}"
            );
        }
    }
}
