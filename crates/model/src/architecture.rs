//! Xception as data: which blocks, in which order, with how many channels; and the analytic
//! summary every architecture fills in ([`Summary`]: layers, blocks, parameters, multiply-adds).
//!
//! Both the Burn module ([`crate::Xception`]) and its summary are built from this one plan, so
//! the printed table and the trained network cannot drift apart.

use serde::Serialize;

use crate::ModelConfig;
use crate::config::XceptionConfig;

/// The three flows of the paper's figure 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    /// Stem and the three downsampling blocks.
    Entry,
    /// The repeated 728-channel blocks.
    Middle,
    /// The last downsampling block, the two wide separable convolutions and the classifier.
    Exit,
}

/// What a block does; the channel counts live in [`BlockPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions with valid padding, the first with stride 2 (Keras `block1`).
    Stem,
    /// Two separable convolutions and a 3x3 stride-2 max-pool, with a 1x1 stride-2 convolution
    /// on the residual branch. `relu_first` is false only for the first such block, whose input
    /// has just been through a ReLU.
    Downsample {
        /// Whether a ReLU precedes the first separable convolution.
        relu_first: bool,
    },
    /// Three ReLU + separable convolution + BatchNorm units around an identity shortcut.
    Middle,
    /// Two separable convolutions, each followed by BatchNorm and ReLU (Keras `block14`).
    Final,
}

/// One of the network's 14 modules (at the paper's 8 middle blocks).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockPlan {
    /// Keras' name of the block: `block1` ... `block14`.
    pub name: String,
    /// Which flow of the paper's figure the block belongs to.
    pub flow: Flow,
    /// The block's kind.
    pub kind: BlockKind,
    /// Channels entering the block.
    pub in_channels: usize,
    /// Channels after the block's first convolution.
    pub mid_channels: usize,
    /// Channels leaving the block.
    pub out_channels: usize,
}

/// The blocks of the network described by `config`, in execution order.
pub fn plan(config: &XceptionConfig) -> Vec<BlockPlan> {
    let ch = |c| config.channels(c);
    let mut blocks = Vec::with_capacity(config.middle_blocks + 6);
    let mut push = |flow, kind, in_channels, mid_channels, out_channels| {
        let name = format!("block{}", blocks.len() + 1);
        blocks.push(BlockPlan {
            name,
            flow,
            kind,
            in_channels,
            mid_channels,
            out_channels,
        });
    };
    push(Flow::Entry, BlockKind::Stem, 3, ch(32), ch(64));
    let entry = [(64, 128, false), (128, 256, true), (256, 728, true)];
    for (input, output, relu_first) in entry {
        let kind = BlockKind::Downsample { relu_first };
        push(Flow::Entry, kind, ch(input), ch(output), ch(output));
    }
    for _ in 0..config.middle_blocks {
        push(Flow::Middle, BlockKind::Middle, ch(728), ch(728), ch(728));
    }
    let exit_down = BlockKind::Downsample { relu_first: true };
    push(Flow::Exit, exit_down, ch(728), ch(728), ch(1024));
    push(Flow::Exit, BlockKind::Final, ch(1024), ch(1536), ch(2048));
    blocks
}

/// Output side of a 3x3 convolution with valid padding.
pub fn valid_conv3_size(size: usize, stride: usize) -> usize {
    (size - 3) / stride + 1
}

/// Output side of a stride-2 layer with TensorFlow 'same' padding.
pub fn same_stride2_size(size: usize) -> usize {
    size.div_ceil(2)
}

/// What one layer computes, as `xception info` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSummary {
    /// The block the layer belongs to (`block1` ... `block14`, or `head`).
    pub block: String,
    /// Keras-style layer name, e.g. `block2_sepconv1`.
    pub name: String,
    /// What the layer is, e.g. `sepconv 3x3 + bn`.
    pub op: String,
    /// Output shape without the batch dimension: `[C, H, W]`, or `[C]` after pooling.
    pub output: Vec<usize>,
    /// Trainable parameters: weights, BatchNorm gamma and beta, classifier bias.
    pub params: u64,
    /// Non-trainable parameters: BatchNorm running mean and variance.
    pub non_trainable_params: u64,
    /// Multiply-adds for one image.
    pub macs: u64,
}

/// Totals for one block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockSummary {
    /// The block's name (Keras': `block1` ... `block14`, `mixed0` ... `mixed10`).
    pub name: String,
    /// Where it sits in the architecture (`entry flow`, `module A`, ...).
    pub stage: String,
    /// Channels entering the block.
    pub in_channels: usize,
    /// Channels leaving it.
    pub out_channels: usize,
    /// Output shape `[C, H, W]`.
    pub output: [usize; 3],
    /// Trainable parameters of the block.
    pub params: u64,
    /// BatchNorm running statistics of the block.
    pub non_trainable_params: u64,
    /// Multiply-adds of the block for one image.
    pub macs: u64,
}

impl BlockSummary {
    /// The totals of `layers`, the block's own.
    pub fn of(
        name: &str,
        stage: String,
        (in_channels, out_channels): (usize, usize),
        output: [usize; 3],
        layers: &[LayerSummary],
    ) -> Self {
        Self {
            name: name.to_string(),
            stage,
            in_channels,
            out_channels,
            output,
            params: layers.iter().map(|l| l.params).sum(),
            non_trainable_params: layers.iter().map(|l| l.non_trainable_params).sum(),
            macs: layers.iter().map(|l| l.macs).sum(),
        }
    }
}

/// Parameter and multiply-add counts of a configuration, computed from the plan alone.
///
/// Multiply-adds count convolutions and the classifier, one per weight use, as timm's and
/// fvcore's counters do; BatchNorm, activations, pooling and additions are not counted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The configuration summarised.
    pub config: ModelConfig,
    /// Every layer, in execution order.
    pub layers: Vec<LayerSummary>,
    /// Every block, in execution order.
    pub blocks: Vec<BlockSummary>,
    /// Trainable parameters.
    pub trainable_params: u64,
    /// BatchNorm running statistics.
    pub non_trainable_params: u64,
    /// Trainable and non-trainable parameters together.
    pub total_params: u64,
    /// Multiply-adds for one image.
    pub macs: u64,
    /// Convolution layers in the feature extractor (Xception: residual 1x1 convolutions not
    /// counted, the paper's "36 convolutional layers").
    pub conv_layers: usize,
}

/// The global average pool and the classifier, as every architecture here ends.
pub fn head_layers(features: usize, classes: usize, dropout: f64) -> Vec<LayerSummary> {
    let dense = (features * classes) as u64;
    let layer = |name: &str, op: String, output, params, macs| LayerSummary {
        block: HEAD.to_string(),
        name: name.to_string(),
        op,
        output,
        params,
        non_trainable_params: 0,
        macs,
    };
    vec![
        layer(
            "avg_pool",
            "global average pool".into(),
            vec![features],
            0,
            0,
        ),
        layer(
            "predictions",
            format!("dropout {dropout} + dense"),
            vec![classes],
            dense + classes as u64,
            dense,
        ),
    ]
}

/// The pseudo-block of the pooling and classifier layers, whose names are Keras' own
/// (`avg_pool`, `predictions`).
pub const HEAD: &str = "head";

struct SummaryBuilder<'a> {
    config: &'a XceptionConfig,
    block: String,
    layers: Vec<LayerSummary>,
    conv_layers: usize,
}

impl SummaryBuilder<'_> {
    fn layer(&mut self, suffix: &str, op: String, output: Vec<usize>, params: u64, macs: u64) {
        self.layers.push(LayerSummary {
            block: self.block.clone(),
            name: format!("{}_{suffix}", self.block),
            op,
            output,
            params,
            non_trainable_params: 0,
            macs,
        });
    }

    /// A dense convolution followed by BatchNorm.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        suffix: &str,
        (c_in, c_out): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: &str,
        out_size: usize,
        counts_as_layer: bool,
    ) {
        let weights = (c_out * c_in * kernel * kernel) as u64;
        let positions = (out_size * out_size) as u64;
        let op = format!("conv {kernel}x{kernel}/{stride} {padding} + bn");
        let output = vec![c_out, out_size, out_size];
        self.layer(
            suffix,
            op,
            output,
            weights + 2 * c_out as u64,
            weights * positions,
        );
        self.bn_statistics(c_out);
        if counts_as_layer {
            self.conv_layers += 1;
        }
    }

    /// Depthwise 3x3 + pointwise 1x1 (stride 1, 'same'), followed by BatchNorm.
    fn sepconv_bn(&mut self, suffix: &str, (c_in, c_out): (usize, usize), size: usize) {
        let weights = (c_in * 9 + c_in * c_out) as u64;
        let positions = (size * size) as u64;
        let activation = match self.config.mid_activation {
            crate::MidActivation::None => "",
            crate::MidActivation::Relu => " (relu inside)",
            crate::MidActivation::Elu => " (elu inside)",
        };
        let op = format!("sepconv 3x3 same{activation} + bn");
        let output = vec![c_out, size, size];
        self.layer(
            suffix,
            op,
            output,
            weights + 2 * c_out as u64,
            weights * positions,
        );
        self.bn_statistics(c_out);
        self.conv_layers += 1;
    }

    fn bn_statistics(&mut self, channels: usize) {
        if let Some(last) = self.layers.last_mut() {
            last.non_trainable_params = 2 * channels as u64;
        }
    }
}

impl Summary {
    /// Summarises the network `config` describes (which should be valid).
    pub fn new(config: impl Into<ModelConfig>) -> Self {
        match config.into() {
            ModelConfig::Xception(config) => xception_summary(&config),
            ModelConfig::InceptionV3(config) => crate::inception_v3::summary(&config),
        }
    }

    /// The totals of `layers` (the blocks' layers, in order) and `head`.
    pub fn from_layers(
        config: ModelConfig,
        mut layers: Vec<LayerSummary>,
        blocks: Vec<BlockSummary>,
        head: Vec<LayerSummary>,
        conv_layers: usize,
    ) -> Self {
        layers.extend(head);
        let trainable_params = layers.iter().map(|l| l.params).sum();
        let non_trainable_params = layers.iter().map(|l| l.non_trainable_params).sum();
        Summary {
            config,
            trainable_params,
            non_trainable_params,
            total_params: trainable_params + non_trainable_params,
            macs: layers.iter().map(|l| l.macs).sum(),
            conv_layers,
            layers,
            blocks,
        }
    }
}

fn xception_summary(config: &XceptionConfig) -> Summary {
    let mut builder = SummaryBuilder {
        config,
        block: String::new(),
        layers: Vec::new(),
        conv_layers: 0,
    };
    let mut blocks = Vec::new();
    let mut size = config.input_size;
    for block in plan(config) {
        builder.block = block.name.clone();
        let first_layer = builder.layers.len();
        let (c_in, c_mid, c_out) = (block.in_channels, block.mid_channels, block.out_channels);
        match block.kind {
            BlockKind::Stem => {
                let s1 = valid_conv3_size(size, 2);
                builder.conv_bn("conv1", (c_in, c_mid), 3, 2, "valid", s1, true);
                size = valid_conv3_size(s1, 1);
                builder.conv_bn("conv2", (c_mid, c_out), 3, 1, "valid", size, true);
            }
            BlockKind::Downsample { .. } => {
                builder.sepconv_bn("sepconv1", (c_in, c_mid), size);
                builder.sepconv_bn("sepconv2", (c_mid, c_out), size);
                let pooled = same_stride2_size(size);
                let output = vec![c_out, pooled, pooled];
                let op = "maxpool 3x3/2 same".to_string();
                builder.layer("pool", op, output, 0, 0);
                if config.residual {
                    builder.conv_bn("residual", (c_in, c_out), 1, 2, "same", pooled, false);
                }
                size = pooled;
            }
            BlockKind::Middle => {
                for unit in ["sepconv1", "sepconv2", "sepconv3"] {
                    builder.sepconv_bn(unit, (c_in, c_out), size);
                }
            }
            BlockKind::Final => {
                builder.sepconv_bn("sepconv1", (c_in, c_mid), size);
                builder.sepconv_bn("sepconv2", (c_mid, c_out), size);
            }
        }
        let stage = format!("{:?} flow", block.flow).to_lowercase();
        blocks.push(BlockSummary::of(
            &block.name,
            stage,
            (c_in, c_out),
            [c_out, size, size],
            &builder.layers[first_layer..],
        ));
    }
    let features = blocks.last().map_or(0, |b| b.output[0]);
    let head = head_layers(features, config.num_classes, config.dropout);
    Summary::from_layers(
        ModelConfig::Xception(config.clone()),
        builder.layers,
        blocks,
        head,
        builder.conv_layers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_model_has_the_papers_counts() {
        let summary = Summary::new(XceptionConfig::default());
        assert_eq!(summary.trainable_params, 22_855_952);
        assert_eq!(summary.non_trainable_params, 54_528);
        assert_eq!(summary.total_params, 22_910_480);
        // Convolutions and classifier only; timm rounds this to 8.4 G.
        assert_eq!(summary.macs, 8_357_403_496);
        assert_eq!(summary.conv_layers, 36);
        assert_eq!(summary.blocks.len(), 14);
    }

    #[test]
    fn paper_model_has_kerass_feature_map_sizes() {
        let summary = Summary::new(XceptionConfig::default());
        let size_of = |name: &str| {
            let layer = summary.layers.iter().find(|l| l.name == name);
            layer.map(|l| l.output.clone()).expect("layer exists")
        };
        assert_eq!(size_of("block1_conv1"), [32, 149, 149]);
        assert_eq!(size_of("block1_conv2"), [64, 147, 147]);
        assert_eq!(size_of("block2_pool"), [128, 74, 74]);
        assert_eq!(size_of("block3_pool"), [256, 37, 37]);
        assert_eq!(size_of("block4_pool"), [728, 19, 19]);
        assert_eq!(size_of("block12_sepconv3"), [728, 19, 19]);
        assert_eq!(size_of("block13_pool"), [1024, 10, 10]);
        assert_eq!(size_of("block14_sepconv2"), [2048, 10, 10]);
        assert_eq!(size_of("predictions"), [1000]);
    }

    #[test]
    fn flows_hold_the_papers_blocks() {
        let blocks = plan(&XceptionConfig::default());
        let count = |flow| blocks.iter().filter(|b| b.flow == flow).count();
        assert_eq!(count(Flow::Entry), 4);
        assert_eq!(count(Flow::Middle), 8);
        assert_eq!(count(Flow::Exit), 2);
        assert_eq!(blocks[1].kind, BlockKind::Downsample { relu_first: false });
        assert_eq!(blocks[2].kind, BlockKind::Downsample { relu_first: true });
    }

    #[test]
    fn non_residual_variant_drops_the_four_shortcut_convolutions() {
        let config = XceptionConfig {
            residual: false,
            ..Default::default()
        };
        let summary = Summary::new(&config);
        // 1x1 convolutions 64->128, 128->256, 256->728, 728->1024, each with a BatchNorm.
        let shortcut_weights = 64 * 128 + 128 * 256 + 256 * 728 + 728 * 1024;
        let shortcut_bn = 128 + 256 + 728 + 1024;
        assert_eq!(
            summary.trainable_params,
            22_855_952 - shortcut_weights - 2 * shortcut_bn
        );
        assert_eq!(summary.conv_layers, 36);
    }

    #[test]
    fn middle_blocks_and_width_change_the_counts() {
        let shallow = Summary::new(&XceptionConfig {
            middle_blocks: 2,
            ..Default::default()
        });
        let per_middle_block = 3 * (728 * 9 + 728 * 728 + 2 * 728) as u64;
        assert_eq!(shallow.trainable_params, 22_855_952 - 6 * per_middle_block);
        assert_eq!(shallow.blocks.len(), 8);
        assert_eq!(
            shallow.blocks.last().map(|b| b.name.as_str()),
            Some("block8")
        );

        let narrow = Summary::new(&XceptionConfig {
            width: 0.5,
            ..Default::default()
        });
        assert_eq!(narrow.blocks.last().map(|b| b.output), Some([1024, 10, 10]));
        assert!(narrow.trainable_params < 22_855_952 / 3);
    }

    #[test]
    fn smallest_input_still_has_a_spatial_map_at_the_end() {
        let summary = Summary::new(&XceptionConfig {
            input_size: 71,
            ..Default::default()
        });
        assert_eq!(summary.blocks.last().map(|b| b.output), Some([2048, 3, 3]));
        // Parameters do not depend on the input size.
        assert_eq!(summary.trainable_params, 22_855_952);
    }

    #[test]
    fn classes_change_only_the_classifier() {
        let ten = Summary::new(&XceptionConfig {
            num_classes: 10,
            ..Default::default()
        });
        assert_eq!(ten.trainable_params, 22_855_952 - 990 * 2049);
    }
}
