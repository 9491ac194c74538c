//! The update rules, each written once over [`Arithmetic`]: the fused CPU loop runs them on
//! one `f32` at a time ([`super::host`]), the device path on whole flat tensors. Both
//! evaluate the same f32 expressions in the same order, so they give the same numbers.

use burn::tensor::Tensor;

use crate::config::OptimizerConfig;

/// What a rule computes with: one value, or every value of a flat tensor at once.
pub(super) trait Arithmetic: Clone {
    fn plus(self, other: Self) -> Self;
    fn minus(self, other: Self) -> Self;
    fn times(self, other: Self) -> Self;
    fn divided_by(self, other: Self) -> Self;
    fn scaled(self, factor: f32) -> Self;
    fn shifted(self, offset: f32) -> Self;
    fn root(self) -> Self;
}

impl Arithmetic for f32 {
    #[inline(always)]
    fn plus(self, other: Self) -> Self {
        self + other
    }
    #[inline(always)]
    fn minus(self, other: Self) -> Self {
        self - other
    }
    #[inline(always)]
    fn times(self, other: Self) -> Self {
        self * other
    }
    #[inline(always)]
    fn divided_by(self, other: Self) -> Self {
        self / other
    }
    #[inline(always)]
    fn scaled(self, factor: f32) -> Self {
        self * factor
    }
    #[inline(always)]
    fn shifted(self, offset: f32) -> Self {
        self + offset
    }
    #[inline(always)]
    fn root(self) -> Self {
        self.sqrt()
    }
}

impl Arithmetic for Tensor<1> {
    fn plus(self, other: Self) -> Self {
        Tensor::add(self, other)
    }
    fn minus(self, other: Self) -> Self {
        Tensor::sub(self, other)
    }
    fn times(self, other: Self) -> Self {
        Tensor::mul(self, other)
    }
    fn divided_by(self, other: Self) -> Self {
        Tensor::div(self, other)
    }
    fn scaled(self, factor: f32) -> Self {
        self.mul_scalar(factor)
    }
    fn shifted(self, offset: f32) -> Self {
        self.add_scalar(offset)
    }
    fn root(self) -> Self {
        self.sqrt()
    }
}

/// An update rule with the step's learning rate and the parameter's weight decay, as one
/// expression over [`Arithmetic`] values.
pub(super) trait UpdateRule: Copy + Send + Sync {
    /// The weights and state after one step with gradient `grad`. `ones` makes a value like
    /// `weights` filled with 1 (a state that starts at 1).
    fn apply<V: Arithmetic>(
        &self,
        weights: V,
        grad: V,
        slots: Slots<V>,
        ones: impl FnOnce(&V) -> V,
    ) -> (V, Slots<V>);
}

/// Momentum SGD as `torch.optim.SGD`: `g' = g + decay * w`,
/// `v = momentum * v + (1 - dampening) * g'` (the first step sets `v = g'`),
/// `w -= lr * v` (Nesterov: `w -= lr * (g' + momentum * v)`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Sgd {
    lr: f32,
    momentum: f32,
    undamped: f32,
    nesterov: bool,
    decay: f32,
}

/// SGD without momentum: `w -= lr * (g + decay * w)`, no state. A rule of its own, so that
/// the momentum rule's loop has no branch on it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlainSgd {
    lr: f32,
    decay: f32,
}

/// TensorFlow 1's `RMSPropOptimizer`: `g' = g + decay * w`,
/// `ms = rho * ms + (1 - rho) * g'^2` (`ms` starts at 1),
/// `step = momentum * step + lr * g' / sqrt(ms + epsilon)`, `w -= step`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rmsprop {
    lr: f32,
    momentum: f32,
    rho: f32,
    /// `1 - rho`, rounded from f64 as TensorFlow's constant is.
    fresh: f32,
    epsilon: f32,
    decay: f32,
}

/// One parameter's update: the optimizer's rule for this step.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rule {
    Sgd(Sgd),
    PlainSgd(PlainSgd),
    Rmsprop(Rmsprop),
}

/// A parameter's state slots before or after a step, in [`Rule::slot_names`]' order; `None`
/// where the parameter has not taken a step yet.
pub(super) type Slots<V> = [Option<V>; 2];

impl Rule {
    /// The rule `config` names for one step at `lr`, with weight decay `decay`.
    pub(super) fn new(config: &OptimizerConfig, lr: f64, decay: f64) -> Self {
        let (lr, decay) = (lr as f32, decay as f32);
        match *config {
            OptimizerConfig::Sgd { momentum: 0.0, .. } => Self::PlainSgd(PlainSgd { lr, decay }),
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                ..
            } => Self::Sgd(Sgd {
                lr,
                momentum: momentum as f32,
                undamped: (1.0 - dampening) as f32,
                nesterov,
                decay,
            }),
            OptimizerConfig::Rmsprop {
                momentum,
                decay: rho,
                epsilon,
                ..
            } => Self::Rmsprop(Rmsprop {
                lr,
                momentum: momentum as f32,
                rho: rho as f32,
                fresh: (1.0 - rho) as f32,
                epsilon: epsilon as f32,
                decay,
            }),
        }
    }

    /// The names of the state slots a parameter keeps (the checkpoint's tensor suffixes).
    pub(super) fn slot_names(config: &OptimizerConfig) -> &'static [&'static str] {
        match config {
            OptimizerConfig::Sgd { .. } => &["velocity"],
            OptimizerConfig::Rmsprop { .. } => &["mean_square", "momentum"],
        }
    }
}

impl UpdateRule for Rule {
    fn apply<V: Arithmetic>(
        &self,
        weights: V,
        grad: V,
        slots: Slots<V>,
        ones: impl FnOnce(&V) -> V,
    ) -> (V, Slots<V>) {
        match self {
            Self::Sgd(rule) => rule.apply(weights, grad, slots, ones),
            Self::PlainSgd(rule) => rule.apply(weights, grad, slots, ones),
            Self::Rmsprop(rule) => rule.apply(weights, grad, slots, ones),
        }
    }
}

impl UpdateRule for Sgd {
    #[inline(always)]
    fn apply<V: Arithmetic>(
        &self,
        weights: V,
        grad: V,
        slots: Slots<V>,
        _ones: impl FnOnce(&V) -> V,
    ) -> (V, Slots<V>) {
        let grad = decayed(grad, &weights, self.decay);
        let [velocity, _] = slots;
        let velocity = match velocity {
            Some(velocity) => velocity
                .scaled(self.momentum)
                .plus(grad.clone().scaled(self.undamped)),
            None => grad.clone(),
        };
        let direction = if self.nesterov {
            grad.plus(velocity.clone().scaled(self.momentum))
        } else {
            velocity.clone()
        };
        (
            weights.minus(direction.scaled(self.lr)),
            [Some(velocity), None],
        )
    }
}

impl UpdateRule for PlainSgd {
    #[inline(always)]
    fn apply<V: Arithmetic>(
        &self,
        weights: V,
        grad: V,
        _slots: Slots<V>,
        _ones: impl FnOnce(&V) -> V,
    ) -> (V, Slots<V>) {
        let grad = decayed(grad, &weights, self.decay);
        (weights.minus(grad.scaled(self.lr)), [None, None])
    }
}

impl UpdateRule for Rmsprop {
    #[inline(always)]
    fn apply<V: Arithmetic>(
        &self,
        weights: V,
        grad: V,
        slots: Slots<V>,
        ones: impl FnOnce(&V) -> V,
    ) -> (V, Slots<V>) {
        let grad = decayed(grad, &weights, self.decay);
        let [mean_square, previous] = slots;
        let mean_square = mean_square.unwrap_or_else(|| ones(&weights));
        let mean_square = mean_square
            .scaled(self.rho)
            .plus(grad.clone().times(grad.clone()).scaled(self.fresh));
        let scaled = grad
            .divided_by(mean_square.clone().shifted(self.epsilon).root())
            .scaled(self.lr);
        let step = match previous {
            Some(previous) => previous.scaled(self.momentum).plus(scaled),
            None => scaled,
        };
        (weights.minus(step.clone()), [Some(mean_square), Some(step)])
    }
}

#[inline(always)]
fn decayed<V: Arithmetic>(grad: V, weights: &V, decay: f32) -> V {
    if decay > 0.0 {
        grad.plus(weights.clone().scaled(decay))
    } else {
        grad
    }
}
