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
            .map(|(id, sum)| (id, sum.mul_scalar(scale)))
            .collect();
        // Summed on the host in the module's order, so that the norm, and the clipping it
        // decides, are the same from run to run (and after a resume).
        let squares: Vec<Tensor<1>> = self
            .order
            .iter()
            .filter_map(|id| grads.get(id))
            .map(|g| g.clone().square().sum())
            .collect();
        let norm = if squares.is_empty() {
            0.0
        } else {
            Tensor::cat(squares, 0)
                .into_data()
                .convert::<f32>()
                .iter::<f32>()
                .map(f64::from)
                .sum::<f64>()
                .sqrt()
        };
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
        };
        model.map(&mut update)
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
}

impl Update<'_> {
    /// The step to subtract from `weights` (flat, without autodiff) given gradient `grad`.
    fn delta(
        &mut self,
        path: String,
        weights: &Tensor<1>,
        grad: Tensor<1>,
        rank: usize,
    ) -> Tensor<1> {
        let lr = self.lr;
        let decay = |weight_decay: f64, decay_norm_and_bias: bool| {
            if rank > 1 || decay_norm_and_bias {
                weight_decay
            } else {
                0.0
            }
        };
        match *self.config {
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
                decay_norm_and_bias,
            } => {
                let decay = decay(weight_decay, decay_norm_and_bias);
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
                weight_decay,
                decay_norm_and_bias,
            } => {
                let decay = decay(weight_decay, decay_norm_and_bias);
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
            let delta = self.delta(path, &weights, grad.inner(), D);
            let updated = (weights - delta).reshape(dims);
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
        for nesterov in [false, true] {
            let model = tiny(&device);
            let w0 = values(model.linear.weight.val());
            let b0 = values(model.linear.bias.as_ref().expect("bias").val());
            let (gw1, gb1) = ([0.1, -0.2, 0.3, 0.4], [0.5, -0.5]);
            let (gw2, gb2) = ([-0.3, 0.1, 0.2, -0.1], [0.25, 0.75]);
            let mut optimizer = Optimizer::new(sgd(nesterov));
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
}
