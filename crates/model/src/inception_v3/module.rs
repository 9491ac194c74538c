//! Inception V3 as a Burn module, following Keras' `applications/inception_v3.py`; the fields
//! carry timm's names (`mixed_5b.branch7x7dbl_3` is timm's `Mixed_5b.branch7x7dbl_3`).

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::{Device, Tensor};

use super::config::InceptionV3Config;
use super::plan::{AUX_INPUT_BLOCK, BlockPlan, ConvPlan, Padding, aux_convs, plan};
use crate::config::ConfigError;
use crate::fold::{BatchNormStatistics, fold_batch_norm};
use crate::xception::BN_EPSILON;

/// Keras' `BatchNormalization`, whose scale (gamma) is optional: Inception V3 has none
/// (`scale=False`); with `model.bn_scale` it learns one, as torchvision's weights did.
#[derive(Module, Debug)]
pub struct KerasBatchNorm {
    /// Scale, when the layer has one.
    pub gamma: Option<Param<Tensor<1>>>,
    /// Shift.
    pub beta: Param<Tensor<1>>,
    /// Running mean, used at inference.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running variance, used at inference.
    pub running_var: RunningState<Tensor<1>>,
    /// Weight of the new batch in each running-statistics update (Burn's convention).
    pub momentum: f64,
    /// Added to the variance.
    pub epsilon: f64,
}

impl KerasBatchNorm {
    fn new(channels: usize, scale: bool, keras_momentum: f64, device: &Device) -> Self {
        Self {
            gamma: scale.then(|| Initializer::Ones.init([channels], device)),
            beta: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 1.0 - keras_momentum,
            epsilon: BN_EPSILON,
        }
    }

    fn gamma(&self, device: &Device) -> Tensor<1> {
        match &self.gamma {
            Some(gamma) => gamma.val(),
            None => Tensor::ones(self.beta.shape(), device),
        }
    }

    /// Batch statistics (and a running-statistics update) when training on an autodiff
    /// device, running statistics otherwise, as Burn's `BatchNorm`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let device = input.device();
        let gamma = self.gamma(&device);
        if !device.is_autodiff() {
            let mean = self.running_mean.value().to_device(&device);
            let var = self.running_var.value().to_device(&device);
            return batch_norm(input, gamma, self.beta.val(), mean, var, self.epsilon);
        }
        let result = batch_norm_train(input, gamma, self.beta.val(), self.epsilon);
        let update = |running: &RunningState<Tensor<1>>, batch: Tensor<1>| {
            let old = running.value_sync().to_device(&device);
            let new = old
                .mul_scalar(1.0 - self.momentum)
                .add(batch.detach().mul_scalar(self.momentum));
            running.update(new.detach());
        };
        update(&self.running_mean, result.mean);
        update(&self.running_var, result.variance);
        result.output
    }
}

/// Keras' `conv2d_bn`: convolution without bias, BatchNorm, ReLU (timm's `BasicConv2d`).
#[derive(Module, Debug)]
pub struct BasicConv {
    /// The convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: KerasBatchNorm,
    /// Whether `bn` is folded into `conv` (inference only, [`crate::Network::folded`]).
    #[module(skip)]
    pub folded: bool,
}

impl BasicConv {
    fn new(plan: &ConvPlan, config: &InceptionV3Config, device: &Device) -> Self {
        let [kh, kw] = plan.kernel;
        let padding = match plan.padding {
            Padding::Valid => PaddingConfig2d::Valid,
            Padding::Same => PaddingConfig2d::Explicit(kh / 2, kw / 2, kh / 2, kw / 2),
        };
        let conv = Conv2dConfig::new([plan.in_channels, plan.out_channels], plan.kernel)
            .with_stride([plan.stride, plan.stride])
            .with_padding(padding)
            .with_bias(false)
            .with_initializer(crate::xception::conv_initializer())
            .init(device);
        Self {
            conv,
            bn: KerasBatchNorm::new(
                plan.out_channels,
                config.bn_scale,
                config.bn_momentum,
                device,
            ),
            folded: false,
        }
    }

    /// Convolution, BatchNorm, ReLU.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv.forward(x);
        relu(if self.folded { x } else { self.bn.forward(x) })
    }

    /// The BatchNorm folded into the convolution (inference only).
    pub fn folded(mut self) -> Self {
        let bn = &self.bn;
        let statistics = BatchNormStatistics {
            gamma: bn.gamma.as_ref().map(Param::val),
            beta: bn.beta.val(),
            mean: bn.running_mean.value(),
            var: bn.running_var.value(),
            epsilon: bn.epsilon,
        };
        fold_batch_norm(&mut self.conv, statistics);
        self.folded = true;
        self
    }
}

/// Builds a block's convolutions by field name from its plan.
struct Builder<'a> {
    convs: &'a [ConvPlan],
    config: &'a InceptionV3Config,
    device: &'a Device,
}

impl Builder<'_> {
    fn conv(&self, field: &str) -> BasicConv {
        let plan = self
            .convs
            .iter()
            .find(|c| c.field == field)
            .unwrap_or_else(|| unreachable!("the plan has no convolution `{field}`"));
        BasicConv::new(plan, self.config, self.device)
    }
}

fn max_pool() -> MaxPool2d {
    MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).init()
}

/// Keras' `AveragePooling2D((3, 3), strides=(1, 1), padding='same')`: TensorFlow averages over
/// the window's pixels inside the image only.
fn same_avg_pool() -> AvgPool2d {
    AvgPool2dConfig::new([3, 3])
        .with_strides([1, 1])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_count_include_pad(false)
        .init()
}

/// The stem: 299x299x3 -> 35x35x192.
#[derive(Module, Debug)]
pub struct Stem {
    /// 3x3 stride-2 valid, 32 channels.
    pub conv_1a_3x3: BasicConv,
    /// 3x3 valid, 32 channels.
    pub conv_2a_3x3: BasicConv,
    /// 3x3 same, 64 channels.
    pub conv_2b_3x3: BasicConv,
    /// 1x1, 80 channels.
    pub conv_3b_1x1: BasicConv,
    /// 3x3 valid, 192 channels.
    pub conv_4a_3x3: BasicConv,
    /// 3x3 stride-2 valid max-pool (used twice).
    pub pool: MaxPool2d,
}

impl Stem {
    fn folded(self) -> Self {
        Self {
            conv_1a_3x3: self.conv_1a_3x3.folded(),
            conv_2a_3x3: self.conv_2a_3x3.folded(),
            conv_2b_3x3: self.conv_2b_3x3.folded(),
            conv_3b_1x1: self.conv_3b_1x1.folded(),
            conv_4a_3x3: self.conv_4a_3x3.folded(),
            ..self
        }
    }
}

impl Stem {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv_1a_3x3.forward(x);
        let x = self.conv_2a_3x3.forward(x);
        let x = self.pool.forward(self.conv_2b_3x3.forward(x));
        let x = self.conv_3b_1x1.forward(x);
        self.pool.forward(self.conv_4a_3x3.forward(x))
    }
}

/// The 35x35 module (Keras `mixed0`-`mixed2`).
#[derive(Module, Debug)]
pub struct InceptionA {
    /// 1x1 branch.
    pub branch1x1: BasicConv,
    /// 5x5 branch: 1x1 then 5x5.
    pub branch5x5_1: BasicConv,
    /// 5x5 branch, second convolution.
    pub branch5x5_2: BasicConv,
    /// Double 3x3 branch: 1x1, 3x3, 3x3.
    pub branch3x3dbl_1: BasicConv,
    /// Double 3x3 branch, second convolution.
    pub branch3x3dbl_2: BasicConv,
    /// Double 3x3 branch, third convolution.
    pub branch3x3dbl_3: BasicConv,
    /// Pool branch: 3x3 average pool then 1x1.
    pub branch_pool: BasicConv,
    /// The pool branch's pool.
    pub pool: AvgPool2d,
}

impl InceptionA {
    fn folded(self) -> Self {
        Self {
            branch1x1: self.branch1x1.folded(),
            branch5x5_1: self.branch5x5_1.folded(),
            branch5x5_2: self.branch5x5_2.folded(),
            branch3x3dbl_1: self.branch3x3dbl_1.folded(),
            branch3x3dbl_2: self.branch3x3dbl_2.folded(),
            branch3x3dbl_3: self.branch3x3dbl_3.folded(),
            branch_pool: self.branch_pool.folded(),
            ..self
        }
    }
}

impl InceptionA {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self
            .branch5x5_2
            .forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_1.forward(x.clone());
        let b3 = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(b3));
        let bp = self.branch_pool.forward(self.pool.forward(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// The 35 -> 17 reduction (Keras `mixed3`).
#[derive(Module, Debug)]
pub struct InceptionB {
    /// 3x3 stride-2 branch.
    pub branch3x3: BasicConv,
    /// Double 3x3 branch: 1x1, 3x3, 3x3 stride 2.
    pub branch3x3dbl_1: BasicConv,
    /// Double 3x3 branch, second convolution.
    pub branch3x3dbl_2: BasicConv,
    /// Double 3x3 branch, third convolution (stride 2).
    pub branch3x3dbl_3: BasicConv,
    /// The max-pool branch.
    pub pool: MaxPool2d,
}

impl InceptionB {
    fn folded(self) -> Self {
        Self {
            branch3x3: self.branch3x3.folded(),
            branch3x3dbl_1: self.branch3x3dbl_1.folded(),
            branch3x3dbl_2: self.branch3x3dbl_2.folded(),
            branch3x3dbl_3: self.branch3x3dbl_3.folded(),
            ..self
        }
    }
}

impl InceptionB {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(bd));
        Tensor::cat(vec![b3, bd, self.pool.forward(x)], 1)
    }
}

/// The 17x17 module with factorised 7x7 convolutions (Keras `mixed4`-`mixed7`).
#[derive(Module, Debug)]
pub struct InceptionC {
    /// 1x1 branch.
    pub branch1x1: BasicConv,
    /// 7x7 branch: 1x1, 1x7, 7x1.
    pub branch7x7_1: BasicConv,
    /// 7x7 branch, 1x7.
    pub branch7x7_2: BasicConv,
    /// 7x7 branch, 7x1.
    pub branch7x7_3: BasicConv,
    /// Double 7x7 branch: 1x1, 7x1, 1x7, 7x1, 1x7.
    pub branch7x7dbl_1: BasicConv,
    /// Double 7x7 branch, 7x1.
    pub branch7x7dbl_2: BasicConv,
    /// Double 7x7 branch, 1x7.
    pub branch7x7dbl_3: BasicConv,
    /// Double 7x7 branch, 7x1.
    pub branch7x7dbl_4: BasicConv,
    /// Double 7x7 branch, 1x7.
    pub branch7x7dbl_5: BasicConv,
    /// Pool branch: 3x3 average pool then 1x1.
    pub branch_pool: BasicConv,
    /// The pool branch's pool.
    pub pool: AvgPool2d,
}

impl InceptionC {
    fn folded(self) -> Self {
        Self {
            branch1x1: self.branch1x1.folded(),
            branch7x7_1: self.branch7x7_1.folded(),
            branch7x7_2: self.branch7x7_2.folded(),
            branch7x7_3: self.branch7x7_3.folded(),
            branch7x7dbl_1: self.branch7x7dbl_1.folded(),
            branch7x7dbl_2: self.branch7x7dbl_2.folded(),
            branch7x7dbl_3: self.branch7x7dbl_3.folded(),
            branch7x7dbl_4: self.branch7x7dbl_4.folded(),
            branch7x7dbl_5: self.branch7x7dbl_5.folded(),
            branch_pool: self.branch_pool.folded(),
            ..self
        }
    }
}

impl InceptionC {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = [&self.branch7x7_1, &self.branch7x7_2, &self.branch7x7_3]
            .iter()
            .fold(x.clone(), |y, conv| conv.forward(y));
        let bd = [
            &self.branch7x7dbl_1,
            &self.branch7x7dbl_2,
            &self.branch7x7dbl_3,
            &self.branch7x7dbl_4,
            &self.branch7x7dbl_5,
        ]
        .iter()
        .fold(x.clone(), |y, conv| conv.forward(y));
        let bp = self.branch_pool.forward(self.pool.forward(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// The 17 -> 8 reduction (Keras `mixed8`).
#[derive(Module, Debug)]
pub struct InceptionD {
    /// 3x3 branch: 1x1, 3x3 stride 2.
    pub branch3x3_1: BasicConv,
    /// 3x3 branch, stride-2 convolution.
    pub branch3x3_2: BasicConv,
    /// 7x7x3 branch: 1x1, 1x7, 7x1, 3x3 stride 2.
    pub branch7x7x3_1: BasicConv,
    /// 7x7x3 branch, 1x7.
    pub branch7x7x3_2: BasicConv,
    /// 7x7x3 branch, 7x1.
    pub branch7x7x3_3: BasicConv,
    /// 7x7x3 branch, stride-2 convolution.
    pub branch7x7x3_4: BasicConv,
    /// The max-pool branch.
    pub pool: MaxPool2d,
}

impl InceptionD {
    fn folded(self) -> Self {
        Self {
            branch3x3_1: self.branch3x3_1.folded(),
            branch3x3_2: self.branch3x3_2.folded(),
            branch7x7x3_1: self.branch7x7x3_1.folded(),
            branch7x7x3_2: self.branch7x7x3_2.folded(),
            branch7x7x3_3: self.branch7x7x3_3.folded(),
            branch7x7x3_4: self.branch7x7x3_4.folded(),
            ..self
        }
    }
}

impl InceptionD {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self
            .branch3x3_2
            .forward(self.branch3x3_1.forward(x.clone()));
        let b7 = [
            &self.branch7x7x3_1,
            &self.branch7x7x3_2,
            &self.branch7x7x3_3,
            &self.branch7x7x3_4,
        ]
        .iter()
        .fold(x.clone(), |y, conv| conv.forward(y));
        Tensor::cat(vec![b3, b7, self.pool.forward(x)], 1)
    }
}

/// The 8x8 module with expanded 1x3 / 3x1 branches (Keras `mixed9`, `mixed10`).
#[derive(Module, Debug)]
pub struct InceptionE {
    /// 1x1 branch.
    pub branch1x1: BasicConv,
    /// 3x3 branch: 1x1, then 1x3 and 3x1 side by side.
    pub branch3x3_1: BasicConv,
    /// 3x3 branch, 1x3.
    pub branch3x3_2a: BasicConv,
    /// 3x3 branch, 3x1.
    pub branch3x3_2b: BasicConv,
    /// Double 3x3 branch: 1x1, 3x3, then 1x3 and 3x1 side by side.
    pub branch3x3dbl_1: BasicConv,
    /// Double 3x3 branch, 3x3.
    pub branch3x3dbl_2: BasicConv,
    /// Double 3x3 branch, 1x3.
    pub branch3x3dbl_3a: BasicConv,
    /// Double 3x3 branch, 3x1.
    pub branch3x3dbl_3b: BasicConv,
    /// Pool branch: 3x3 average pool then 1x1.
    pub branch_pool: BasicConv,
    /// The pool branch's pool.
    pub pool: AvgPool2d,
}

impl InceptionE {
    fn folded(self) -> Self {
        Self {
            branch1x1: self.branch1x1.folded(),
            branch3x3_1: self.branch3x3_1.folded(),
            branch3x3_2a: self.branch3x3_2a.folded(),
            branch3x3_2b: self.branch3x3_2b.folded(),
            branch3x3dbl_1: self.branch3x3dbl_1.folded(),
            branch3x3dbl_2: self.branch3x3dbl_2.folded(),
            branch3x3dbl_3a: self.branch3x3dbl_3a.folded(),
            branch3x3dbl_3b: self.branch3x3dbl_3b.folded(),
            branch_pool: self.branch_pool.folded(),
            ..self
        }
    }
}

impl InceptionE {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3a = self.branch3x3_2a.forward(b3.clone());
        let b3b = self.branch3x3_2b.forward(b3);
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_2.forward(bd);
        let bda = self.branch3x3dbl_3a.forward(bd.clone());
        let bdb = self.branch3x3dbl_3b.forward(bd);
        let bp = self.branch_pool.forward(self.pool.forward(x));
        Tensor::cat(vec![b1, b3a, b3b, bda, bdb, bp], 1)
    }
}

/// The auxiliary classifier on the 17x17 grid (timm's `InceptionAux`).
#[derive(Module, Debug)]
pub struct AuxHead {
    /// 5x5 stride-3 valid average pool.
    pub pool: AvgPool2d,
    /// 1x1 convolution to 128 channels after a 5x5 stride-3 average pool.
    pub conv0: BasicConv,
    /// 5x5 valid convolution to 768 channels.
    pub conv1: BasicConv,
    /// The classifier.
    pub fc: Linear,
}

impl AuxHead {
    fn folded(self) -> Self {
        Self {
            conv0: self.conv0.folded(),
            conv1: self.conv1.folded(),
            ..self
        }
    }
}

impl AuxHead {
    fn forward(&self, grid: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(grid);
        let x = self.conv1.forward(self.conv0.forward(x));
        self.fc.forward(x.mean_dims(&[2, 3]).flatten(1, 3))
    }
}

/// Inception V3: stem, eleven mixed blocks, global average pooling, dropout and a linear
/// classifier producing logits; optionally the auxiliary classifier used in training.
#[derive(Module, Debug)]
pub struct InceptionV3 {
    /// 299x299 -> 35x35.
    pub stem: Stem,
    /// Keras `mixed0`.
    pub mixed_5b: InceptionA,
    /// Keras `mixed1`.
    pub mixed_5c: InceptionA,
    /// Keras `mixed2`.
    pub mixed_5d: InceptionA,
    /// Keras `mixed3`.
    pub mixed_6a: InceptionB,
    /// Keras `mixed4`.
    pub mixed_6b: InceptionC,
    /// Keras `mixed5`.
    pub mixed_6c: InceptionC,
    /// Keras `mixed6`.
    pub mixed_6d: InceptionC,
    /// Keras `mixed7`.
    pub mixed_6e: InceptionC,
    /// The auxiliary classifier (training only), when configured.
    pub aux_logits: Option<AuxHead>,
    /// Keras `mixed8`.
    pub mixed_7a: InceptionD,
    /// Keras `mixed9`.
    pub mixed_7b: InceptionE,
    /// Keras `mixed10`.
    pub mixed_7c: InceptionE,
    /// Dropout before the classifier, active only in training.
    pub dropout: Dropout,
    /// The classifier (Keras `predictions`, without the softmax).
    pub fc: Linear,
}

fn block<'a>(blocks: &'a [BlockPlan], field: &str) -> &'a BlockPlan {
    blocks
        .iter()
        .find(|b| b.field == field)
        .unwrap_or_else(|| unreachable!("the plan has no block `{field}`"))
}

impl InceptionV3 {
    /// Builds a freshly initialised network on `device`.
    pub fn new(config: &InceptionV3Config, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        let blocks = plan(config);
        let builder = |field| Builder {
            convs: &block(&blocks, field).convs,
            config,
            device,
        };
        let stem = builder("stem");
        let a = |field| {
            let b = builder(field);
            InceptionA {
                branch1x1: b.conv("branch1x1"),
                branch5x5_1: b.conv("branch5x5_1"),
                branch5x5_2: b.conv("branch5x5_2"),
                branch3x3dbl_1: b.conv("branch3x3dbl_1"),
                branch3x3dbl_2: b.conv("branch3x3dbl_2"),
                branch3x3dbl_3: b.conv("branch3x3dbl_3"),
                branch_pool: b.conv("branch_pool"),
                pool: same_avg_pool(),
            }
        };
        let c = |field| {
            let b = builder(field);
            InceptionC {
                branch1x1: b.conv("branch1x1"),
                branch7x7_1: b.conv("branch7x7_1"),
                branch7x7_2: b.conv("branch7x7_2"),
                branch7x7_3: b.conv("branch7x7_3"),
                branch7x7dbl_1: b.conv("branch7x7dbl_1"),
                branch7x7dbl_2: b.conv("branch7x7dbl_2"),
                branch7x7dbl_3: b.conv("branch7x7dbl_3"),
                branch7x7dbl_4: b.conv("branch7x7dbl_4"),
                branch7x7dbl_5: b.conv("branch7x7dbl_5"),
                branch_pool: b.conv("branch_pool"),
                pool: same_avg_pool(),
            }
        };
        let e = |field| {
            let b = builder(field);
            InceptionE {
                branch1x1: b.conv("branch1x1"),
                branch3x3_1: b.conv("branch3x3_1"),
                branch3x3_2a: b.conv("branch3x3_2a"),
                branch3x3_2b: b.conv("branch3x3_2b"),
                branch3x3dbl_1: b.conv("branch3x3dbl_1"),
                branch3x3dbl_2: b.conv("branch3x3dbl_2"),
                branch3x3dbl_3a: b.conv("branch3x3dbl_3a"),
                branch3x3dbl_3b: b.conv("branch3x3dbl_3b"),
                branch_pool: b.conv("branch_pool"),
                pool: same_avg_pool(),
            }
        };
        let (b6a, b7a) = (builder("mixed_6a"), builder("mixed_7a"));
        let aux_logits = config.aux_logits.then(|| {
            let convs = aux_convs(config, &blocks);
            let hidden = convs[1].out_channels;
            AuxHead {
                pool: AvgPool2dConfig::new([5, 5]).with_strides([3, 3]).init(),
                conv0: BasicConv::new(&convs[0], config, device),
                conv1: BasicConv::new(&convs[1], config, device),
                fc: LinearConfig::new(hidden, config.num_classes).init(device),
            }
        });
        let features = blocks.last().map_or(0, |b| b.out_channels);
        Ok(Self {
            stem: Stem {
                conv_1a_3x3: stem.conv("conv_1a_3x3"),
                conv_2a_3x3: stem.conv("conv_2a_3x3"),
                conv_2b_3x3: stem.conv("conv_2b_3x3"),
                conv_3b_1x1: stem.conv("conv_3b_1x1"),
                conv_4a_3x3: stem.conv("conv_4a_3x3"),
                pool: max_pool(),
            },
            mixed_5b: a("mixed_5b"),
            mixed_5c: a("mixed_5c"),
            mixed_5d: a("mixed_5d"),
            mixed_6a: InceptionB {
                branch3x3: b6a.conv("branch3x3"),
                branch3x3dbl_1: b6a.conv("branch3x3dbl_1"),
                branch3x3dbl_2: b6a.conv("branch3x3dbl_2"),
                branch3x3dbl_3: b6a.conv("branch3x3dbl_3"),
                pool: max_pool(),
            },
            mixed_6b: c("mixed_6b"),
            mixed_6c: c("mixed_6c"),
            mixed_6d: c("mixed_6d"),
            mixed_6e: c("mixed_6e"),
            aux_logits,
            mixed_7a: InceptionD {
                branch3x3_1: b7a.conv("branch3x3_1"),
                branch3x3_2: b7a.conv("branch3x3_2"),
                branch7x7x3_1: b7a.conv("branch7x7x3_1"),
                branch7x7x3_2: b7a.conv("branch7x7x3_2"),
                branch7x7x3_3: b7a.conv("branch7x7x3_3"),
                branch7x7x3_4: b7a.conv("branch7x7x3_4"),
                pool: max_pool(),
            },
            mixed_7b: e("mixed_7b"),
            mixed_7c: e("mixed_7c"),
            dropout: DropoutConfig::new(config.dropout).init(),
            fc: LinearConfig::new(features, config.num_classes).init(device),
        })
    }

    /// Logits `[N, num_classes]` for images `[N, 3, H, W]` scaled to `[-1, 1]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.classify(self.forward_features(images))
    }

    /// The `mixed10` feature map `[N, 2048 * width, h, w]`, before pooling.
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<4> {
        self.forward_features_traced(images, |_, _| {})
    }

    /// The logits and, when the network has the auxiliary classifier, its logits.
    pub fn forward_with_aux(&self, images: Tensor<4>) -> (Tensor<2>, Option<Tensor<2>>) {
        let mut aux = None;
        let features = self.forward_features_traced(images, |name, x| {
            if name == AUX_INPUT_BLOCK
                && let Some(head) = &self.aux_logits
            {
                aux = Some(head.forward(x.clone()));
            }
        });
        (self.classify(features), aux)
    }

    /// Like [`Self::forward_features`], calling `observe` with each block's Keras name
    /// (`stem`, `mixed0` ... `mixed10`) and output.
    pub fn forward_features_traced(
        &self,
        images: Tensor<4>,
        mut observe: impl FnMut(&str, &Tensor<4>),
    ) -> Tensor<4> {
        let mut index = 0;
        let mut step = |x: Tensor<4>| {
            let name = match index {
                0 => "stem".to_string(),
                i => format!("mixed{}", i - 1),
            };
            index += 1;
            observe(&name, &x);
            x
        };
        let x = step(self.stem.forward(images));
        let x = step(self.mixed_5b.forward(x));
        let x = step(self.mixed_5c.forward(x));
        let x = step(self.mixed_5d.forward(x));
        let x = step(self.mixed_6a.forward(x));
        let x = step(self.mixed_6b.forward(x));
        let x = step(self.mixed_6c.forward(x));
        let x = step(self.mixed_6d.forward(x));
        let x = step(self.mixed_6e.forward(x));
        let x = step(self.mixed_7a.forward(x));
        let x = step(self.mixed_7b.forward(x));
        step(self.mixed_7c.forward(x))
    }

    /// Global average pooling, dropout and the classifier.
    pub fn classify(&self, features: Tensor<4>) -> Tensor<2> {
        let pooled: Tensor<2> = features.mean_dims(&[2, 3]).flatten(1, 3);
        self.fc.forward(self.dropout.forward(pooled))
    }

    /// Every BatchNorm folded into its convolution: the same logits in inference mode, one
    /// pass less per layer. For inference only (a folded network must not train).
    pub fn folded(self) -> Self {
        Self {
            stem: self.stem.folded(),
            mixed_5b: self.mixed_5b.folded(),
            mixed_5c: self.mixed_5c.folded(),
            mixed_5d: self.mixed_5d.folded(),
            mixed_6a: self.mixed_6a.folded(),
            mixed_6b: self.mixed_6b.folded(),
            mixed_6c: self.mixed_6c.folded(),
            mixed_6d: self.mixed_6d.folded(),
            mixed_6e: self.mixed_6e.folded(),
            aux_logits: self.aux_logits.map(AuxHead::folded),
            mixed_7a: self.mixed_7a.folded(),
            mixed_7b: self.mixed_7b.folded(),
            mixed_7c: self.mixed_7c.folded(),
            ..self
        }
    }

    /// The blocks in execution order with their Keras names (for per-block counts).
    pub fn blocks(&self) -> Vec<(&'static str, &dyn BlockModule)> {
        vec![
            ("stem", &self.stem),
            ("mixed0", &self.mixed_5b),
            ("mixed1", &self.mixed_5c),
            ("mixed2", &self.mixed_5d),
            ("mixed3", &self.mixed_6a),
            ("mixed4", &self.mixed_6b),
            ("mixed5", &self.mixed_6c),
            ("mixed6", &self.mixed_6d),
            ("mixed7", &self.mixed_6e),
            ("mixed8", &self.mixed_7a),
            ("mixed9", &self.mixed_7b),
            ("mixed10", &self.mixed_7c),
        ]
    }
}

/// A block whose parameters can be counted.
pub trait BlockModule {
    /// Trainable and non-trainable parameter counts.
    fn counts(&self) -> crate::ParamCounts;
}

impl<M: Module> BlockModule for M {
    fn counts(&self) -> crate::ParamCounts {
        crate::xception::param_counts(self)
    }
}
