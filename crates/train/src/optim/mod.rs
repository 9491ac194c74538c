//! The paper's optimizers, written out rather than taken from `burn-optim`: Burn's SGD
//! dampens momentum by 0.1 unless told otherwise, decays every parameter alike, and keys its
//! state by parameter ids that change when a model is rebuilt. Here the state is keyed by the
//! parameter's path in the module (`entry_flow.0.sep1.pointwise.weight`), so a checkpoint
//! can be read into a freshly built model, and each rule is the one the recipes name
//! ([`rules`]): SGD as PyTorch's `torch.optim.SGD` (TensorFlow's momentum optimizer when
//! dampening is 0), RMSprop as TensorFlow 1's `RMSPropOptimizer`, which the paper's JFT runs
//! used.
//!
//! Weight decay skips rank-1 parameters (BatchNorm scales and shifts, biases) unless
//! `decay_norm_and_bias` is set, as timm's `param_groups_weight_decay` does.
//!
//! Each rule is written once and runs two ways: on the CPU devices as one fused loop over a
//! parameter's values in place ([`host`]), elsewhere as tensor operations, which a GPU runs
//! as kernels. A step can be guarded by a flag computed on the device (the loss and gradient
//! norm are finite): when it is false the weights stay as they were, with nothing read back
//! to the host on a GPU ([`Optimizer::step_if`] says what becomes of the state).

mod gradients;
mod host;
mod rules;

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Bool, Device, Tensor, TensorData};
use xception_model::path::ModulePath;

pub use gradients::{Exchange, GradientSum, StepGradients};
use rules::{Rule, Slots, UpdateRule};

use crate::config::OptimizerConfig;

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
        self.update(model, grads, lr, None)
    }

    /// [`Self::step`], applied only where `apply` (a one-element flag on the gradients'
    /// device) is true: otherwise every weight keeps its value. On a GPU the flag is never
    /// read back, and the optimizer state after a skipped step is not to be used (it may hold
    /// the step's non-finite values); on the CPU devices the flag is read once and the state
    /// keeps its value too.
    pub fn step_if<M: Module>(
        &mut self,
        model: M,
        grads: HashMap<ParamId, Tensor<1>>,
        lr: f64,
        apply: Tensor<1, Bool>,
    ) -> M {
        self.update(model, grads, lr, Some(Guard::new(apply)))
    }

    fn update<M: Module>(
        &mut self,
        model: M,
        grads: HashMap<ParamId, Tensor<1>>,
        lr: f64,
        guard: Option<Guard>,
    ) -> M {
        let mut update = Update {
            config: &self.config,
            state: &mut self.state,
            grads,
            lr,
            guard,
            path: ModulePath::default(),
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
        let slots = Rule::slot_names(&self.config);
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
        let slots = Rule::slot_names(&self.config);
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
}

/// The device flag of a guarded step, read at most once (by the fused CPU loop).
struct Guard {
    apply: Tensor<1, Bool>,
    read: Option<bool>,
}

impl Guard {
    fn new(apply: Tensor<1, Bool>) -> Self {
        Self { apply, read: None }
    }

    fn on_host(&mut self) -> bool {
        *self
            .read
            .get_or_insert_with(|| self.apply.clone().int().into_scalar::<i64>() != 0)
    }

    /// The flag broadcast to `len` values, for choosing between old and new tensors.
    fn mask(&self, len: usize) -> Tensor<1, Bool> {
        self.apply.clone().expand([len])
    }
}

struct Update<'a> {
    config: &'a OptimizerConfig,
    state: &'a mut BTreeMap<String, Vec<Tensor<1>>>,
    grads: HashMap<ParamId, Tensor<1>>,
    lr: f64,
    guard: Option<Guard>,
    path: ModulePath,
    fused_on_host: bool,
}

impl Update<'_> {
    /// The rule for a parameter of rank `rank`: weight decay skips rank-1 parameters unless
    /// `decay_norm_and_bias` is set.
    fn rule_for(&self, rank: usize) -> Rule {
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
        let decay = if rank > 1 || decay_norm_and_bias {
            weight_decay
        } else {
            0.0
        };
        Rule::new(self.config, self.lr, decay)
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
        let rule = self.rule_for(rank);
        let slots = self.state.remove(&path).unwrap_or_default();
        let on_host = self.fused_on_host
            && host::Values::can_take(&weights)
            && host::Values::can_take(&grad)
            && slots.iter().all(host::Values::can_take);
        let (weights, slots) = if on_host {
            self.on_host(&rule, weights, grad, slots)
        } else {
            self.on_device(&rule, weights, grad, slots)
        };
        if !slots.is_empty() {
            self.state.insert(path, slots);
        }
        weights
    }

    fn on_host(
        &mut self,
        rule: &Rule,
        weights: Tensor<1>,
        grad: Tensor<1>,
        slots: Vec<Tensor<1>>,
    ) -> (Tensor<1>, Vec<Tensor<1>>) {
        if self.guard.as_mut().is_some_and(|guard| !guard.on_host()) {
            return (weights, slots);
        }
        let mut values = host::Values::take(weights);
        let slots = slots.into_iter().map(host::Values::take).collect();
        let slots = host::apply(rule, &mut values, host::Values::take(grad), slots);
        (
            values.into_tensor(),
            slots.into_iter().map(host::Values::into_tensor).collect(),
        )
    }

    fn on_device(
        &self,
        rule: &Rule,
        weights: Tensor<1>,
        grad: Tensor<1>,
        slots: Vec<Tensor<1>>,
    ) -> (Tensor<1>, Vec<Tensor<1>>) {
        let mut old = slots.into_iter();
        let old: Slots<Tensor<1>> = [old.next(), old.next()];
        let (updated, new) = rule.apply(weights.clone(), grad, old, |w| w.ones_like());
        let Some(guard) = &self.guard else {
            return (updated, new.into_iter().flatten().collect());
        };
        // A skipped step keeps the weights as they were. The state is not masked (one more
        // kernel per tensor, every step): after a skipped step it may hold non-finite values,
        // which the trainer never uses or saves (it stops at the next read of its metrics).
        let weights = weights.mask_where(guard.mask(updated.dims()[0]), updated);
        (weights, new.into_iter().flatten().collect())
    }
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove(&param.id) else {
            return param;
        };
        let path = self.path.current();
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
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
        let StepGradients { grads, norm } = sum.finish(Some(1.0), &Device::flex());
        let norm = f64::from(norm.into_scalar::<f32>());
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

    #[test]
    fn the_fused_loop_runs_on_the_cpu_devices() {
        let tensor = Tensor::<1>::from_floats([1.0, 2.0], &Device::flex());
        assert!(host::Values::can_take(&tensor));
        assert!(host::Values::can_take(&tensor.clone().autodiff()));
    }

    #[test]
    fn a_step_whose_flag_is_false_changes_nothing() {
        let device = Device::flex();
        for fused in [true, false] {
            for config in [
                sgd(true),
                OptimizerConfig::Rmsprop {
                    momentum: 0.9,
                    decay: 0.9,
                    epsilon: 1.0,
                    weight_decay: 0.1,
                    decay_norm_and_bias: false,
                },
            ] {
                let model = tiny(&device);
                let mut optimizer = Optimizer::new(config);
                if !fused {
                    optimizer = optimizer.tensor_ops_only();
                }
                let flag =
                    |value: bool| Tensor::<1, Bool>::from_data(TensorData::from([value]), &device);
                let g = grads(&model, [0.1, -0.2, 0.3, 0.4], [0.5, -0.5], &device);
                let model = optimizer.step_if(model, g, 0.1, flag(true));
                let before = values(model.linear.weight.val());
                let state_before: Vec<Vec<f64>> = optimizer
                    .state_tensors()
                    .into_iter()
                    .map(|(_, t)| values(t))
                    .collect();
                let nan = [f32::NAN, 1.0, f32::INFINITY, 0.0];
                let g = grads(&model, nan, [0.5, -0.5], &device);
                let model = optimizer.step_if(model, g, 0.1, flag(false));
                assert_eq!(values(model.linear.weight.val()), before, "fused {fused}");
                if fused {
                    let state_after: Vec<Vec<f64>> = optimizer
                        .state_tensors()
                        .into_iter()
                        .map(|(_, t)| values(t))
                        .collect();
                    assert_eq!(state_after, state_before);
                }
            }
        }
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
