//! Inception V3 as data: every block and every Keras `conv2d_bn` in it, in the order Keras'
//! `applications/inception_v3.py` creates them. The module, the summary and the weight names
//! are all built from this plan.

use serde::Serialize;

use super::config::InceptionV3Config;
use crate::architecture::{BlockSummary, LayerSummary, Summary};

/// A convolution's padding: Keras' `valid`, or its `same` (symmetric here: every 'same'
/// convolution of Inception V3 has stride 1 and odd kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// No padding.
    Valid,
    /// Half the kernel on each side.
    Same,
}

/// One Keras `conv2d_bn`: convolution without bias, BatchNorm, ReLU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvPlan {
    /// Field of the Burn module inside its block (`branch7x7_2`).
    pub field: &'static str,
    /// timm's name of the same layer (the field, but for the stem's `Conv2d_1a_3x3`...).
    pub timm: &'static str,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel `[rows, columns]` (Keras' `num_row, num_col`).
    pub kernel: [usize; 2],
    /// Stride in both directions.
    pub stride: usize,
    /// Padding.
    pub padding: Padding,
    /// Side of the output map.
    pub output_size: usize,
}

impl ConvPlan {
    /// Weights of the convolution.
    pub fn weights(&self) -> u64 {
        (self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]) as u64
    }
}

/// What a block computes; channel counts are in [`BlockPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Five convolutions and two 3x3 stride-2 max-pools (299 -> 35).
    Stem,
    /// 35x35 module (timm's `InceptionA`): 1x1, 5x5, double 3x3 and pool branches.
    A {
        /// Channels of the pool branch's 1x1 convolution (32, then 64).
        pool_features: usize,
    },
    /// 35 -> 17 reduction (`InceptionB`).
    B,
    /// 17x17 module with factorised 7x7 convolutions (`InceptionC`).
    C {
        /// Channels inside the 7x7 branches (128, 160, 160, 192).
        channels_7x7: usize,
    },
    /// 17 -> 8 reduction (`InceptionD`).
    D,
    /// 8x8 module with expanded 1x3 / 3x1 branches (`InceptionE`).
    E,
}

/// One block of the network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockPlan {
    /// Keras' name of the block's output: `stem` (unnamed in Keras), `mixed0` ... `mixed10`.
    pub name: String,
    /// Field of the Burn module (`mixed_5b`).
    pub field: &'static str,
    /// timm's module name (`Mixed_5b`; empty for the stem, whose layers are top-level).
    pub timm: &'static str,
    /// What the block computes.
    pub kind: BlockKind,
    /// Channels entering the block.
    pub in_channels: usize,
    /// Channels leaving it (the concatenation of its branches).
    pub out_channels: usize,
    /// Side of the output map.
    pub output_size: usize,
    /// Its convolutions, in Keras' creation order.
    pub convs: Vec<ConvPlan>,
}

/// The grid the auxiliary classifier reads must be at least this wide for its 5x5 stride-3
/// average pool and 5x5 valid convolution (17 at 299x299).
pub const AUX_MIN_GRID: usize = 17;

/// Side after a `kernel` convolution or pool with `stride` and `padding`.
fn out_size(size: usize, kernel: usize, stride: usize, padding: Padding) -> usize {
    match padding {
        Padding::Same => size.div_ceil(stride),
        Padding::Valid => size.saturating_sub(kernel) / stride + 1,
    }
}

/// Side of the 3x3 stride-2 valid max-pools.
pub fn pool_size(size: usize) -> usize {
    out_size(size, 3, 2, Padding::Valid)
}

/// Builds the convolutions of one block, tracking the map size through each branch.
struct Convs<'a> {
    config: &'a InceptionV3Config,
    input_size: usize,
    convs: Vec<ConvPlan>,
}

impl Convs<'_> {
    /// Adds a convolution named `field` reading `in_channels` channels of a map of side
    /// `size`; returns its output side.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        (field, timm): (&'static str, &'static str),
        in_channels: usize,
        published_out: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: Padding,
        size: usize,
    ) -> usize {
        let output_size = out_size(size, kernel[0], stride, padding);
        self.convs.push(ConvPlan {
            field,
            timm,
            in_channels,
            out_channels: self.config.channels(published_out),
            kernel,
            stride,
            padding,
            output_size,
        });
        output_size
    }

    /// A stride-1 'same' convolution inside a block.
    fn same(&mut self, field: &'static str, in_channels: usize, out: usize, kernel: [usize; 2]) {
        let size = self.input_size;
        self.add(
            (field, field),
            in_channels,
            out,
            kernel,
            1,
            Padding::Same,
            size,
        );
    }

    /// A 3x3 stride-2 valid convolution (the reductions' last step).
    fn reduce(&mut self, field: &'static str, in_channels: usize, out: usize) {
        let size = self.input_size;
        self.add(
            (field, field),
            in_channels,
            out,
            [3, 3],
            2,
            Padding::Valid,
            size,
        );
    }

    fn out(&self, field: &str) -> usize {
        self.convs
            .iter()
            .find(|c| c.field == field)
            .map_or(0, |c| c.out_channels)
    }
}

fn stem(config: &InceptionV3Config) -> (Vec<ConvPlan>, usize) {
    let mut convs = Convs {
        config,
        input_size: config.input_size,
        convs: Vec::new(),
    };
    let ch = |c| config.channels(c);
    let (v, s) = (Padding::Valid, Padding::Same);
    let size = convs.add(
        ("conv_1a_3x3", "Conv2d_1a_3x3"),
        3,
        32,
        [3, 3],
        2,
        v,
        config.input_size,
    );
    let size = convs.add(
        ("conv_2a_3x3", "Conv2d_2a_3x3"),
        ch(32),
        32,
        [3, 3],
        1,
        v,
        size,
    );
    let size = convs.add(
        ("conv_2b_3x3", "Conv2d_2b_3x3"),
        ch(32),
        64,
        [3, 3],
        1,
        s,
        size,
    );
    let size = pool_size(size);
    let size = convs.add(
        ("conv_3b_1x1", "Conv2d_3b_1x1"),
        ch(64),
        80,
        [1, 1],
        1,
        v,
        size,
    );
    let size = convs.add(
        ("conv_4a_3x3", "Conv2d_4a_3x3"),
        ch(80),
        192,
        [3, 3],
        1,
        v,
        size,
    );
    (convs.convs, pool_size(size))
}

/// The convolutions of a mixed block, its output channels and output side.
fn mixed(
    config: &InceptionV3Config,
    kind: BlockKind,
    c: usize,
    size: usize,
) -> (Vec<ConvPlan>, usize, usize) {
    let mut b = Convs {
        config,
        input_size: size,
        convs: Vec::new(),
    };
    let ch = |c| config.channels(c);
    let (one, three) = ([1, 1], [3, 3]);
    match kind {
        BlockKind::Stem => unreachable!("the stem is built by `stem`"),
        BlockKind::A { pool_features } => {
            b.same("branch1x1", c, 64, one);
            b.same("branch5x5_1", c, 48, one);
            b.same("branch5x5_2", ch(48), 64, [5, 5]);
            b.same("branch3x3dbl_1", c, 64, one);
            b.same("branch3x3dbl_2", ch(64), 96, three);
            b.same("branch3x3dbl_3", ch(96), 96, three);
            b.same("branch_pool", c, pool_features, one);
            let out = ["branch1x1", "branch5x5_2", "branch3x3dbl_3", "branch_pool"];
            let channels = out.iter().map(|f| b.out(f)).sum();
            (b.convs, channels, size)
        }
        BlockKind::B => {
            b.reduce("branch3x3", c, 384);
            b.same("branch3x3dbl_1", c, 64, one);
            b.same("branch3x3dbl_2", ch(64), 96, three);
            b.reduce("branch3x3dbl_3", ch(96), 96);
            let channels = b.out("branch3x3") + b.out("branch3x3dbl_3") + c;
            (b.convs, channels, pool_size(size))
        }
        BlockKind::C { channels_7x7: c7 } => {
            let (row, col) = ([1, 7], [7, 1]);
            b.same("branch1x1", c, 192, one);
            b.same("branch7x7_1", c, c7, one);
            b.same("branch7x7_2", ch(c7), c7, row);
            b.same("branch7x7_3", ch(c7), 192, col);
            b.same("branch7x7dbl_1", c, c7, one);
            b.same("branch7x7dbl_2", ch(c7), c7, col);
            b.same("branch7x7dbl_3", ch(c7), c7, row);
            b.same("branch7x7dbl_4", ch(c7), c7, col);
            b.same("branch7x7dbl_5", ch(c7), 192, row);
            b.same("branch_pool", c, 192, one);
            let out = ["branch1x1", "branch7x7_3", "branch7x7dbl_5", "branch_pool"];
            let channels = out.iter().map(|f| b.out(f)).sum();
            (b.convs, channels, size)
        }
        BlockKind::D => {
            b.same("branch3x3_1", c, 192, one);
            b.reduce("branch3x3_2", ch(192), 320);
            b.same("branch7x7x3_1", c, 192, one);
            b.same("branch7x7x3_2", ch(192), 192, [1, 7]);
            b.same("branch7x7x3_3", ch(192), 192, [7, 1]);
            b.reduce("branch7x7x3_4", ch(192), 192);
            let channels = b.out("branch3x3_2") + b.out("branch7x7x3_4") + c;
            (b.convs, channels, pool_size(size))
        }
        BlockKind::E => {
            let (row, col) = ([1, 3], [3, 1]);
            b.same("branch1x1", c, 320, one);
            b.same("branch3x3_1", c, 384, one);
            b.same("branch3x3_2a", ch(384), 384, row);
            b.same("branch3x3_2b", ch(384), 384, col);
            b.same("branch3x3dbl_1", c, 448, one);
            b.same("branch3x3dbl_2", ch(448), 384, three);
            b.same("branch3x3dbl_3a", ch(384), 384, row);
            b.same("branch3x3dbl_3b", ch(384), 384, col);
            b.same("branch_pool", c, 192, one);
            let out = [
                "branch1x1",
                "branch3x3_2a",
                "branch3x3_2b",
                "branch3x3dbl_3a",
                "branch3x3dbl_3b",
                "branch_pool",
            ];
            let channels = out.iter().map(|f| b.out(f)).sum();
            (b.convs, channels, size)
        }
    }
}

/// The blocks of the network `config` describes, in execution order.
pub fn plan(config: &InceptionV3Config) -> Vec<BlockPlan> {
    let (convs, mut size) = stem(config);
    let mut channels = convs.last().map_or(0, |c| c.out_channels);
    let mut blocks = vec![BlockPlan {
        name: "stem".into(),
        field: "stem",
        timm: "",
        kind: BlockKind::Stem,
        in_channels: 3,
        out_channels: channels,
        output_size: size,
        convs,
    }];
    let mixed_blocks = [
        ("mixed_5b", "Mixed_5b", BlockKind::A { pool_features: 32 }),
        ("mixed_5c", "Mixed_5c", BlockKind::A { pool_features: 64 }),
        ("mixed_5d", "Mixed_5d", BlockKind::A { pool_features: 64 }),
        ("mixed_6a", "Mixed_6a", BlockKind::B),
        ("mixed_6b", "Mixed_6b", BlockKind::C { channels_7x7: 128 }),
        ("mixed_6c", "Mixed_6c", BlockKind::C { channels_7x7: 160 }),
        ("mixed_6d", "Mixed_6d", BlockKind::C { channels_7x7: 160 }),
        ("mixed_6e", "Mixed_6e", BlockKind::C { channels_7x7: 192 }),
        ("mixed_7a", "Mixed_7a", BlockKind::D),
        ("mixed_7b", "Mixed_7b", BlockKind::E),
        ("mixed_7c", "Mixed_7c", BlockKind::E),
    ];
    for (index, (field, timm, kind)) in mixed_blocks.into_iter().enumerate() {
        let (convs, out_channels, output_size) = mixed(config, kind, channels, size);
        blocks.push(BlockPlan {
            name: format!("mixed{index}"),
            field,
            timm,
            kind,
            in_channels: channels,
            out_channels,
            output_size,
            convs,
        });
        (channels, size) = (out_channels, output_size);
    }
    blocks
}

/// The block whose output the auxiliary classifier reads: `mixed7` (timm's `Mixed_6e`).
pub fn aux_input(blocks: &[BlockPlan]) -> &BlockPlan {
    blocks
        .iter()
        .find(|b| b.name == AUX_INPUT_BLOCK)
        .unwrap_or_else(|| unreachable!("the plan always has {AUX_INPUT_BLOCK}"))
}

/// Side of the grid (17x17 at 299) that the auxiliary classifier reads.
pub fn aux_grid(config: &InceptionV3Config) -> usize {
    aux_input(&plan(config)).output_size
}

/// The auxiliary classifier's convolutions (timm's `AuxLogits.conv0`, `.conv1`), reading the
/// 5x5 stride-3 average pool of [`aux_input`]'s output.
pub fn aux_convs(config: &InceptionV3Config, blocks: &[BlockPlan]) -> Vec<ConvPlan> {
    let input = aux_input(blocks);
    let (in_channels, pooled) = (
        input.out_channels,
        out_size(input.output_size, 5, 3, Padding::Valid),
    );
    let mut convs = Convs {
        config,
        input_size: pooled,
        convs: Vec::new(),
    };
    convs.add(
        ("conv0", "conv0"),
        in_channels,
        128,
        [1, 1],
        1,
        Padding::Valid,
        pooled,
    );
    let c = config.channels(128);
    convs.add(
        ("conv1", "conv1"),
        c,
        768,
        [5, 5],
        1,
        Padding::Valid,
        pooled,
    );
    convs.convs
}

/// Block whose output the auxiliary classifier reads.
pub const AUX_INPUT_BLOCK: &str = "mixed7";

/// The layers of one convolution, for the summary.
fn conv_layer(block: &str, conv: &ConvPlan, bn_scale: bool) -> LayerSummary {
    let [kh, kw] = conv.kernel;
    let padding = match conv.padding {
        Padding::Valid => "valid",
        Padding::Same => "same",
    };
    let bn_params = if bn_scale { 2 } else { 1 } * conv.out_channels as u64;
    let positions = (conv.output_size * conv.output_size) as u64;
    LayerSummary {
        block: block.to_string(),
        name: format!("{block}_{}", conv.field),
        op: format!(
            "conv {kh}x{kw}/{} {padding} + bn{}",
            conv.stride,
            if bn_scale { "" } else { " (no scale)" }
        ),
        output: vec![conv.out_channels, conv.output_size, conv.output_size],
        params: conv.weights() + bn_params,
        non_trainable_params: 2 * conv.out_channels as u64,
        macs: conv.weights() * positions,
    }
}

fn pool_layer(block: &str, name: &str, op: &str, output: [usize; 3]) -> LayerSummary {
    LayerSummary {
        block: block.to_string(),
        name: format!("{block}_{name}"),
        op: op.to_string(),
        output: output.to_vec(),
        params: 0,
        non_trainable_params: 0,
        macs: 0,
    }
}

fn block_layers(block: &BlockPlan, bn_scale: bool) -> Vec<LayerSummary> {
    let name = block.name.as_str();
    let mut layers: Vec<LayerSummary> = block
        .convs
        .iter()
        .map(|c| conv_layer(name, c, bn_scale))
        .collect();
    let max_pool = "maxpool 3x3/2 valid";
    match block.kind {
        BlockKind::Stem => {
            let first = &block.convs[2];
            let pooled = pool_size(first.output_size);
            let pool1 = pool_layer(
                name,
                "pool1",
                max_pool,
                [first.out_channels, pooled, pooled],
            );
            layers.insert(3, pool1);
            let size = block.output_size;
            layers.push(pool_layer(
                name,
                "pool2",
                max_pool,
                [block.out_channels, size, size],
            ));
        }
        BlockKind::A { .. } | BlockKind::C { .. } | BlockKind::E => {
            let pool = "avgpool 3x3/1 same (padding excluded)";
            let at = layers.len() - 1;
            let size = block.output_size;
            layers.insert(
                at,
                pool_layer(name, "avg_pool", pool, [block.in_channels, size, size]),
            );
        }
        BlockKind::B | BlockKind::D => {
            let size = block.output_size;
            let output = [block.in_channels, size, size];
            layers.push(pool_layer(name, "max_pool", max_pool, output));
        }
    }
    layers
}

/// Parameter and multiply-add counts of `config`, from the plan alone.
pub fn summary(config: &InceptionV3Config) -> Summary {
    let mut layers = Vec::new();
    let mut blocks = Vec::new();
    let mut conv_layers = 0;
    let mut add_block = |name: &str, stage: String, c_in, c_out, size, block_layers: Vec<_>| {
        let block_layers: Vec<LayerSummary> = block_layers;
        blocks.push(BlockSummary::of(
            name,
            stage,
            (c_in, c_out),
            [c_out, size, size],
            &block_layers,
        ));
        layers.extend(block_layers);
    };
    let plan = plan(config);
    for block in &plan {
        conv_layers += block.convs.len();
        let stage = match block.kind {
            BlockKind::Stem => "stem".to_string(),
            BlockKind::A { .. } => "module A".into(),
            BlockKind::B => "reduction B".into(),
            BlockKind::C { .. } => "module C".into(),
            BlockKind::D => "reduction D".into(),
            BlockKind::E => "module E".into(),
        };
        let size = block.output_size;
        add_block(
            &block.name,
            stage,
            block.in_channels,
            block.out_channels,
            size,
            block_layers(block, config.bn_scale),
        );
    }
    let features = plan.last().map_or(0, |b| b.out_channels);
    let classes = config.num_classes;
    if config.aux_logits {
        let grid_channels = aux_input(&plan).out_channels;
        let convs = aux_convs(config, &plan);
        let pooled = convs[0].output_size;
        let mut aux = vec![pool_layer(
            "aux",
            "avg_pool",
            "avgpool 5x5/3 valid",
            [grid_channels, pooled, pooled],
        )];
        aux.extend(convs.iter().map(|c| conv_layer("aux", c, config.bn_scale)));
        let hidden = convs[1].out_channels;
        let dense = (hidden * classes) as u64;
        aux.push(LayerSummary {
            block: "aux".into(),
            name: "aux_logits".into(),
            op: "global average pool + dense (training only)".into(),
            output: vec![classes],
            params: dense + classes as u64,
            non_trainable_params: 0,
            macs: dense,
        });
        add_block(
            "aux",
            "auxiliary classifier".into(),
            grid_channels,
            classes,
            1,
            aux,
        );
    }
    let head = crate::architecture::head_layers(features, classes, config.dropout);
    Summary::from_layers(
        crate::ModelConfig::InceptionV3(config.clone()),
        layers,
        blocks,
        head,
        conv_layers,
    )
}
