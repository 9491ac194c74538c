//! Inference with BatchNorm folded into the convolution before it: in inference mode
//! `BN(conv(x))` is `conv'(x)` with the kernel scaled per output channel by
//! `gamma / sqrt(var + eps)` and a bias `beta - mean * scale`, so the BatchNorm pass over every
//! activation disappears. [`crate::Network::folded`] builds such a network for `eval` and
//! `predict`; it is never trained or written to a file.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

/// A BatchNorm's inference-mode parameters.
pub(crate) struct BatchNormStatistics {
    /// Scale; `None` for a BatchNorm without one (Inception V3's).
    pub gamma: Option<Tensor<1>>,
    /// Shift.
    pub beta: Tensor<1>,
    /// Running mean.
    pub mean: Tensor<1>,
    /// Running variance.
    pub var: Tensor<1>,
    /// Added to the variance.
    pub epsilon: f64,
}

/// Makes `conv` compute `conv` followed by the BatchNorm `bn` in inference mode.
pub(crate) fn fold_batch_norm(conv: &mut Conv2d, bn: BatchNormStatistics) {
    let inv_std = bn.var.add_scalar(bn.epsilon).sqrt().recip();
    let scale = match bn.gamma {
        Some(gamma) => gamma * inv_std,
        None => inv_std,
    };
    let [channels] = scale.dims();
    let weight = conv.weight.val() * scale.clone().reshape([channels, 1, 1, 1]);
    let mean = match &conv.bias {
        Some(bias) => bn.mean - bias.val(),
        None => bn.mean,
    };
    conv.weight = Param::from_tensor(weight);
    conv.bias = Some(Param::from_tensor(bn.beta - mean * scale));
}
