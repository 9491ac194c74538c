//! The Xception network as a Burn module, following Keras' `applications/xception.py`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::tensor::activation::{elu, relu};
use burn::tensor::{Device, Tensor};

use crate::architecture::{BlockKind, BlockPlan, plan};
use crate::config::{ConfigError, MidActivation, XceptionConfig};
use crate::fold::{BatchNormStatistics, fold_batch_norm};
use crate::fused::{self, PackedWeights};

/// Keras' BatchNormalization epsilon, which the official weights were trained with.
pub const BN_EPSILON: f64 = 1e-3;
/// BatchNorm with Keras' epsilon and `keras_momentum` (`model.bn_momentum`: the weight of the
/// running statistics), which is `1 - momentum` in Burn's convention (the new batch's weight).
fn batch_norm(channels: usize, keras_momentum: f64, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BN_EPSILON)
        .with_momentum(1.0 - keras_momentum)
        .init(device)
}

/// He initialisation scaled by fan-out, as timm initialises Xception; fan-out counts one
/// group's outputs, so depthwise kernels start at a sensible scale.
pub(crate) fn conv_initializer() -> Initializer {
    Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: true,
    }
}

fn conv(
    (c_in, c_out): (usize, usize),
    kernel: usize,
    stride: usize,
    groups: usize,
    padding: PaddingConfig2d,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(padding)
        .with_bias(false)
        .with_initializer(conv_initializer())
        .init(device)
}

/// A dense convolution followed by BatchNorm (the stem convolutions, the residual branches).
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution, without bias.
    pub conv: Conv2d,
    /// BatchNorm with Keras' epsilon and momentum.
    pub bn: BatchNorm,
    /// Whether `bn` is folded into `conv` (inference only, [`crate::Network::folded`]).
    #[module(skip)]
    pub folded: bool,
    /// `conv`'s folded weights packed for the fused inference kernel, if it runs here: a
    /// copy taken by [Self::folded], which weights changed afterwards do not reach.
    #[module(skip)]
    pub packed: PackedWeights,
}

impl ConvBn {
    fn new(
        channels: (usize, usize),
        (kernel, stride, padding): (usize, usize, PaddingConfig2d),
        bn_momentum: f64,
        device: &Device,
    ) -> Self {
        Self {
            conv: conv(channels, kernel, stride, 1, padding, device),
            bn: batch_norm(channels.1, bn_momentum, device),
            folded: false,
            packed: PackedWeights::default(),
        }
    }

    /// Convolution then BatchNorm.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv.forward(x);
        if self.folded { x } else { self.bn.forward(x) }
    }

    /// [Self::forward], then its ReLU with `relu_output`. With the BatchNorm folded, on the
    /// flex device, one fused kernel (`crate::fused`) computes it all; otherwise the ops run
    /// one by one.
    pub fn forward_with(&self, x: Tensor<4>, relu_output: bool) -> Tensor<4> {
        let x = if self.folded {
            match fused::conv2d(x, (&self.conv, &self.packed), relu_output) {
                Ok(y) => return y,
                Err(x) => x,
            }
        } else {
            x
        };
        let y = self.forward(x);
        if relu_output { relu(y) } else { y }
    }

    /// The BatchNorm folded into the convolution (inference only), whose weights are then
    /// packed for the fused kernel where it runs.
    pub fn folded(mut self) -> Self {
        fold_batch_norm(&mut self.conv, statistics(&self.bn));
        self.folded = true;
        self.packed = PackedWeights::new(&self.conv);
        self
    }
}

/// A Burn BatchNorm's inference-mode parameters.
fn statistics(bn: &BatchNorm) -> BatchNormStatistics {
    BatchNormStatistics {
        gamma: Some(bn.gamma.val()),
        beta: bn.beta.val(),
        mean: bn.running_mean.value(),
        var: bn.running_var.value(),
        epsilon: bn.epsilon,
    }
}

/// Keras' `SeparableConv2D(3x3, padding='same', use_bias=False)` followed by BatchNorm.
#[derive(Module, Debug)]
pub struct SepConvBn {
    /// 3x3 depthwise convolution, one filter per input channel.
    pub depthwise: Conv2d,
    /// 1x1 convolution mixing channels.
    pub pointwise: Conv2d,
    /// BatchNorm after the pointwise convolution.
    pub bn: BatchNorm,
    /// Activation between depthwise and pointwise (the paper's section 4.7 ablation).
    #[module(skip)]
    pub mid_activation: MidActivation,
    /// Whether `bn` is folded into `pointwise` (inference only).
    #[module(skip)]
    pub folded: bool,
    /// `pointwise`'s folded weights packed for the fused inference kernel, if it runs here:
    /// a copy taken by [Self::folded], which weights changed afterwards do not reach (fold
    /// last, on the network that will run inference).
    #[module(skip)]
    pub packed: PackedWeights,
}

impl SepConvBn {
    fn new((c_in, c_out): (usize, usize), config: &XceptionConfig, device: &Device) -> Self {
        let mid_activation = config.mid_activation;
        Self {
            depthwise: conv((c_in, c_in), 3, 1, c_in, PaddingConfig2d::Same, device),
            pointwise: conv((c_in, c_out), 1, 1, 1, PaddingConfig2d::Valid, device),
            bn: batch_norm(c_out, config.bn_momentum, device),
            mid_activation,
            folded: false,
            packed: PackedWeights::default(),
        }
    }

    /// The BatchNorm folded into the pointwise convolution (inference only), whose weights
    /// are then packed for the fused kernel where it runs.
    pub fn folded(mut self) -> Self {
        fold_batch_norm(&mut self.pointwise, statistics(&self.bn));
        self.folded = true;
        self.packed = PackedWeights::new(&self.pointwise);
        self
    }

    /// [Self::forward] of `relu(x)` (with `relu_input`, else of `x`) plus `residual`. With
    /// the BatchNorm folded and no activation between the convolutions, on the flex device,
    /// one fused kernel (`crate::fused`) computes it all; otherwise the ops run one by one.
    pub fn forward_with(
        &self,
        x: Tensor<4>,
        relu_input: bool,
        residual: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let x = if self.folded && matches!(self.mid_activation, MidActivation::None) {
            match fused::separable_conv2d(
                x,
                relu_input,
                &self.depthwise,
                (&self.pointwise, &self.packed),
                residual.as_ref(),
            ) {
                Ok(y) => return y,
                Err(x) => x,
            }
        } else {
            x
        };
        let y = self.forward(if relu_input { relu(x) } else { x });
        match residual {
            Some(residual) => y + residual,
            None => y,
        }
    }

    /// Depthwise, optional activation, pointwise, BatchNorm.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.depthwise.forward(x);
        let x = match self.mid_activation {
            MidActivation::None => x,
            MidActivation::Relu => relu(x),
            MidActivation::Elu => elu(x, 1.0),
        };
        let x = self.pointwise.forward(x);
        if self.folded { x } else { self.bn.forward(x) }
    }
}

/// Keras' `block1`: two 3x3 convolutions with valid padding, each followed by BN and ReLU.
#[derive(Module, Debug)]
pub struct Stem {
    /// 3x3 stride-2 convolution.
    pub conv1: ConvBn,
    /// 3x3 stride-1 convolution.
    pub conv2: ConvBn,
}

impl Stem {
    /// Both convolutions, each followed by ReLU.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv1.forward_with(x, true);
        self.conv2.forward_with(x, true)
    }
}

/// A downsampling block (Keras `block2`-`block4` and `block13`): separable convolutions, a
/// 3x3 stride-2 max-pool, and a 1x1 stride-2 convolution on the residual branch, added after
/// the pool.
#[derive(Module, Debug)]
pub struct DownsampleBlock {
    /// Whether a ReLU precedes the first separable convolution (not in `block2`).
    pub relu_first: bool,
    /// First separable convolution, followed by ReLU.
    pub sepconv1: SepConvBn,
    /// Second separable convolution.
    pub sepconv2: SepConvBn,
    /// 3x3 stride-2 max-pool with TensorFlow 'same' padding.
    pub pool: MaxPool2d,
    /// 1x1 stride-2 convolution + BN on the shortcut; absent in the non-residual ablation.
    pub residual: Option<ConvBn>,
}

impl DownsampleBlock {
    /// The block's output for input `x`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = self
            .residual
            .as_ref()
            .map(|residual| residual.forward_with(x.clone(), false));
        let x = self.sepconv1.forward_with(x, self.relu_first, None);
        let x = self.sepconv2.forward_with(x, true, None);
        let Some(shortcut) = shortcut else {
            return self.pool.forward(x);
        };
        match fused::max_pool2d_add(x, &self.pool, shortcut) {
            Ok(y) => y,
            Err((x, shortcut)) => self.pool.forward(x) + shortcut,
        }
    }
}

/// A middle-flow block: three ReLU + separable convolution + BN units and an identity shortcut.
#[derive(Module, Debug)]
pub struct MiddleBlock {
    /// The three separable convolutions, each preceded by ReLU.
    pub sepconvs: Vec<SepConvBn>,
    /// Whether the input is added to the output.
    pub residual: bool,
}

impl MiddleBlock {
    /// The block's output for input `x`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let Some((last, first)) = self.sepconvs.split_last() else {
            return if self.residual { x.clone() + x } else { x };
        };
        let y = first
            .iter()
            .fold(x.clone(), |y, sepconv| sepconv.forward_with(y, true, None));
        last.forward_with(y, true, self.residual.then_some(x))
    }
}

/// Keras' `block14`: two separable convolutions, each followed by BN and ReLU.
#[derive(Module, Debug)]
pub struct FinalBlock {
    /// Separable convolution to 1536 channels (at width 1).
    pub sepconv1: SepConvBn,
    /// Separable convolution to 2048 channels (at width 1).
    pub sepconv2: SepConvBn,
}

impl FinalBlock {
    /// The block's output for input `x`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.sepconv1.forward_with(x, false, None);
        relu(self.sepconv2.forward_with(x, true, None))
    }
}

/// The Xception network: entry flow, middle flow, exit flow, global average pooling, dropout
/// and a linear classifier producing logits.
#[derive(Module, Debug)]
pub struct Xception {
    /// Keras `block1`.
    pub stem: Stem,
    /// Keras `block2`-`block4`.
    pub entry_flow: Vec<DownsampleBlock>,
    /// Keras `block5`-`block12` (as many as `middle_blocks`).
    pub middle_flow: Vec<MiddleBlock>,
    /// Keras `block13`.
    pub exit_block: DownsampleBlock,
    /// Keras `block14`.
    pub final_block: FinalBlock,
    /// Dropout before the classifier, active only in training.
    pub dropout: Dropout,
    /// The classifier (Keras `predictions`, without the softmax).
    pub predictions: Linear,
}

impl Xception {
    /// Builds a freshly initialised network on `device`.
    pub fn new(config: &XceptionConfig, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut stem = None;
        let mut downsample = Vec::new();
        let mut middle_flow = Vec::new();
        let mut final_block = None;
        let sepconv = |channels, device| SepConvBn::new(channels, config, device);
        let conv_bn =
            |channels, layer, device| ConvBn::new(channels, layer, config.bn_momentum, device);
        for BlockPlan {
            kind,
            in_channels: c_in,
            mid_channels: c_mid,
            out_channels: c_out,
            ..
        } in plan(config)
        {
            match kind {
                BlockKind::Stem => {
                    stem = Some(Stem {
                        conv1: conv_bn((c_in, c_mid), (3, 2, PaddingConfig2d::Valid), device),
                        conv2: conv_bn((c_mid, c_out), (3, 1, PaddingConfig2d::Valid), device),
                    })
                }
                BlockKind::Downsample { relu_first } => downsample.push(DownsampleBlock {
                    relu_first,
                    sepconv1: sepconv((c_in, c_mid), device),
                    sepconv2: sepconv((c_mid, c_out), device),
                    pool: MaxPool2dConfig::new([3, 3])
                        .with_strides([2, 2])
                        .with_padding(PaddingConfig2d::Same)
                        .init(),
                    residual: config
                        .residual
                        .then(|| conv_bn((c_in, c_out), (1, 2, PaddingConfig2d::Same), device)),
                }),
                BlockKind::Middle => middle_flow.push(MiddleBlock {
                    sepconvs: (0..3).map(|_| sepconv((c_in, c_out), device)).collect(),
                    residual: config.residual,
                }),
                BlockKind::Final => {
                    final_block = Some(FinalBlock {
                        sepconv1: sepconv((c_in, c_mid), device),
                        sepconv2: sepconv((c_mid, c_out), device),
                    })
                }
            }
        }
        let (Some(stem), Some(exit_block), Some(final_block)) =
            (stem, downsample.pop(), final_block)
        else {
            unreachable!("the plan always has a stem, an exit block and a final block")
        };
        let features = final_block.sepconv2.bn.gamma.dims()[0];
        Ok(Self {
            stem,
            entry_flow: downsample,
            middle_flow,
            exit_block,
            final_block,
            dropout: DropoutConfig::new(config.dropout).init(),
            predictions: LinearConfig::new(features, config.num_classes).init(device),
        })
    }

    /// Logits `[N, num_classes]` for images `[N, 3, H, W]` scaled to `[-1, 1]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.classify(self.forward_features(images))
    }

    /// The exit flow's feature map `[N, 2048 * width, h, w]`, before pooling.
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<4> {
        self.forward_features_traced(images, |_, _| {})
    }

    /// Like [`Self::forward_features`], calling `observe` with each block's Keras name
    /// (`block1` ... `block14`) and output.
    pub fn forward_features_traced(
        &self,
        images: Tensor<4>,
        mut observe: impl FnMut(&str, &Tensor<4>),
    ) -> Tensor<4> {
        let mut index = 0;
        let mut step = |x: Tensor<4>| {
            index += 1;
            observe(&format!("block{index}"), &x);
            x
        };
        let mut x = step(self.stem.forward(images));
        for block in &self.entry_flow {
            x = step(block.forward(x));
        }
        for block in &self.middle_flow {
            x = step(block.forward(x));
        }
        x = step(self.exit_block.forward(x));
        step(self.final_block.forward(x))
    }

    /// Global average pooling, dropout and the classifier.
    pub fn classify(&self, features: Tensor<4>) -> Tensor<2> {
        let pooled: Tensor<2> = features.mean_dims(&[2, 3]).flatten(1, 3);
        self.predictions.forward(self.dropout.forward(pooled))
    }

    /// Every BatchNorm folded into its convolution: the same logits in inference mode, one
    /// pass less per layer. For inference only (a folded network must not train).
    pub fn folded(self) -> Self {
        let downsample = |block: DownsampleBlock| DownsampleBlock {
            sepconv1: block.sepconv1.folded(),
            sepconv2: block.sepconv2.folded(),
            residual: block.residual.map(ConvBn::folded),
            ..block
        };
        Self {
            stem: Stem {
                conv1: self.stem.conv1.folded(),
                conv2: self.stem.conv2.folded(),
            },
            entry_flow: self.entry_flow.into_iter().map(downsample).collect(),
            middle_flow: self
                .middle_flow
                .into_iter()
                .map(|block| MiddleBlock {
                    sepconvs: block.sepconvs.into_iter().map(SepConvBn::folded).collect(),
                    ..block
                })
                .collect(),
            exit_block: downsample(self.exit_block),
            final_block: FinalBlock {
                sepconv1: self.final_block.sepconv1.folded(),
                sepconv2: self.final_block.sepconv2.folded(),
            },
            ..self
        }
    }

    /// Parameter counts of this module, split as Keras splits them.
    pub fn param_counts(&self) -> ParamCounts {
        param_counts(self)
    }
}

/// Parameter counts of any module, split as Keras splits them.
pub(crate) fn param_counts<M: Module>(module: &M) -> ParamCounts {
    let mut counter = ParamCounter::default();
    module.visit(&mut counter);
    counter.counts
}

/// Trainable and non-trainable parameter counts of a module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParamCounts {
    /// Weights, biases and BatchNorm scale and shift.
    pub trainable: u64,
    /// BatchNorm running mean and variance.
    pub non_trainable: u64,
}

#[derive(Default)]
struct ParamCounter {
    field: crate::path::ModulePath,
    counts: ParamCounts,
}

impl ModuleVisitor for ParamCounter {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.field.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.field.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let elements = param.lazy_shape().num_elements() as u64;
        match self.field.last() {
            Some("running_mean" | "running_var") => self.counts.non_trainable += elements,
            _ => self.counts.trainable += elements,
        }
    }
}

/// Parameter counts of every top-level block of `model`, keyed by Keras block name; used to
/// check the analytic summary against the real module.
pub fn block_param_counts(model: &Xception) -> Vec<(String, ParamCounts)> {
    let count = |module: &dyn Fn(&mut ParamCounter)| {
        let mut counter = ParamCounter::default();
        module(&mut counter);
        counter.counts
    };
    let mut blocks = vec![count(&|c| model.stem.visit(c))];
    for block in &model.entry_flow {
        blocks.push(count(&|c| block.visit(c)));
    }
    for block in &model.middle_flow {
        blocks.push(count(&|c| block.visit(c)));
    }
    blocks.push(count(&|c| model.exit_block.visit(c)));
    blocks.push(count(&|c| model.final_block.visit(c)));
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, counts)| (format!("block{}", i + 1), counts))
        .collect()
}
