//! Fused inference kernels of `vendor/burn-flex`, reached from the model (feature
//! `flex-kernels`, on in the `xception` binary).
//!
//! A Burn tensor carries no backend type, so the model takes a tensor on the flex device out
//! of Burn's dispatch (`Tensor::into_dispatch`, Burn's `extension` feature), hands the flex
//! tensors to the kernel and wraps its result back. Anything else (another device, autodiff,
//! a shape or CPU the kernel declines, a build without the feature) comes back as `Err` with
//! the input untouched, and the caller runs the ops one by one.

// `Err` hands the caller's tensors back, no larger than the `Ok` value, so that it can run
// the ops one by one; boxing them would allocate on every fallback.
#![allow(clippy::result_large_err)]

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::Tensor;

/// A convolution's weights as the fused kernels read them, packed once when a network is
/// folded for inference; empty where the kernels do not run (another device, a CPU without
/// AVX-512, a build without the feature).
#[derive(Clone, Debug, Default)]
pub struct PackedWeights {
    #[cfg(feature = "flex-kernels")]
    panels: Option<burn::backend::flex::ops::channels_last::PackedWeights>,
}

impl PackedWeights {
    /// `conv`'s weights packed, if the fused kernels can use them.
    pub(crate) fn new(conv: &Conv2d) -> Self {
        #[cfg(feature = "flex-kernels")]
        {
            Self {
                panels: flex::pack(conv),
            }
        }
        #[cfg(not(feature = "flex-kernels"))]
        {
            let _ = conv;
            Self {}
        }
    }
}

/// `relu(x)` (with `relu_input`, else `x`) through `depthwise` and `pointwise` (with its
/// bias), plus `residual`, in one pass over the activations: `Err(x)` where the fused kernel
/// does not apply. `depthwise` must be a stride-1 'same' convolution with an odd kernel, one
/// filter per channel and no bias; `pointwise` a 1x1 convolution whose weights `packed`
/// holds.
pub(crate) fn separable_conv2d(
    x: Tensor<4>,
    relu_input: bool,
    depthwise: &Conv2d,
    (pointwise, packed): (&Conv2d, &PackedWeights),
    residual: Option<&Tensor<4>>,
) -> Result<Tensor<4>, Tensor<4>> {
    #[cfg(feature = "flex-kernels")]
    {
        let Some(panels) = &packed.panels else {
            return Err(x);
        };
        flex::separable_conv2d(x, relu_input, depthwise, (pointwise, panels), residual)
    }
    #[cfg(not(feature = "flex-kernels"))]
    {
        let _ = (relu_input, depthwise, pointwise, packed, residual);
        Err(x)
    }
}

/// `conv(x)` (with its bias), then its ReLU with `relu`, in one pass over the activations:
/// `Err(x)` where the fused kernel does not apply. `conv` must have one group and no
/// dilation; `packed` holds its weights.
pub(crate) fn conv2d(
    x: Tensor<4>,
    (conv, packed): (&Conv2d, &PackedWeights),
    relu: bool,
) -> Result<Tensor<4>, Tensor<4>> {
    #[cfg(feature = "flex-kernels")]
    {
        let Some(panels) = &packed.panels else {
            return Err(x);
        };
        flex::conv2d(x, (conv, panels), relu)
    }
    #[cfg(not(feature = "flex-kernels"))]
    {
        let _ = (conv, packed, relu);
        Err(x)
    }
}

/// How many convolutions the fused kernels have computed in this process.
#[cfg(test)]
pub(crate) fn fused_calls() -> u64 {
    #[cfg(feature = "flex-kernels")]
    {
        flex::FUSED_CALLS.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "flex-kernels"))]
    {
        0
    }
}

/// `pool(x) + shortcut` in one pass (`Err` with both back where the fused kernel does not
/// apply): Xception's downsampling blocks.
pub(crate) fn max_pool2d_add(
    x: Tensor<4>,
    pool: &MaxPool2d,
    shortcut: Tensor<4>,
) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>)> {
    #[cfg(feature = "flex-kernels")]
    {
        flex::max_pool2d_add(x, pool, shortcut)
    }
    #[cfg(not(feature = "flex-kernels"))]
    {
        let _ = pool;
        Err((x, shortcut))
    }
}

#[cfg(feature = "flex-kernels")]
mod flex {
    use std::sync::atomic::{AtomicU64, Ordering};

    use burn::backend::flex::FlexTensor;
    use burn::backend::flex::ops::channels_last::{self, PackedWeights};
    use burn::backend::{
        BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind,
    };
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2d;
    use burn::nn::pool::MaxPool2d;
    use burn::tensor::Tensor;

    /// How many convolutions the fused kernels computed (for the tests).
    pub(super) static FUSED_CALLS: AtomicU64 = AtomicU64::new(0);

    /// The flex tensor inside `tensor`, or `tensor` back when it lives elsewhere or records
    /// gradients.
    fn flex_tensor<const D: usize>(tensor: Tensor<D>) -> Result<FlexTensor, Tensor<D>> {
        match tensor.into_dispatch() {
            DispatchTensor {
                kind: DispatchTensorKind::Flex(BackendTensor::Float(tensor)),
                autodiff: DispatchAutodiffContext::Disabled,
            } => Ok(tensor),
            other => Err(Tensor::from_dispatch(other)),
        }
    }

    fn tensor<const D: usize>(tensor: FlexTensor) -> Tensor<D> {
        Tensor::from_dispatch(DispatchTensor {
            kind: DispatchTensorKind::Flex(BackendTensor::Float(tensor)),
            autodiff: DispatchAutodiffContext::Disabled,
        })
    }

    /// The padding of a stride-1 'same' depthwise convolution the kernel takes, per axis.
    fn same_padding(depthwise: &Conv2d, pointwise: &Conv2d) -> Option<[usize; 2]> {
        let fits = depthwise.stride == [1, 1]
            && depthwise.dilation == [1, 1]
            && matches!(depthwise.padding, PaddingConfig2d::Same)
            && depthwise.kernel_size.iter().all(|k| k % 2 == 1)
            && depthwise.bias.is_none()
            && pointwise.stride == [1, 1]
            && pointwise.kernel_size == [1, 1]
            && pointwise.dilation == [1, 1]
            && pointwise.groups == 1
            && matches!(pointwise.padding, PaddingConfig2d::Valid);
        fits.then(|| depthwise.kernel_size.map(|k| (k - 1) / 2))
    }

    /// `conv`'s weights packed, when they are f32 on flex and the CPU runs the kernels.
    pub(super) fn pack(conv: &Conv2d) -> Option<PackedWeights> {
        PackedWeights::new(&flex_tensor(conv.weight.val()).ok()?)
    }

    /// The (begin, end) padding `config` gives along each axis of a `size` input, as Burn's
    /// `PaddingConfig2d::calculate_padding_2d_pairs` computes it (private to Burn): for
    /// 'same', TensorFlow's rule (the output has `ceil(size / stride)` positions, the padding
    /// that needs split with the smaller half first).
    fn padding_pairs(
        config: &PaddingConfig2d,
        size: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
    ) -> [(usize, usize); 2] {
        let same = |d: usize| {
            let total = match size[d].div_ceil(stride[d]) {
                0 => 0,
                out => ((out - 1) * stride[d] + kernel[d]).saturating_sub(size[d]),
            };
            (total / 2, total - total / 2)
        };
        match *config {
            PaddingConfig2d::Valid => [(0, 0), (0, 0)],
            PaddingConfig2d::Same => [same(0), same(1)],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        }
    }

    pub(super) fn max_pool2d_add(
        x: Tensor<4>,
        pool: &MaxPool2d,
        shortcut: Tensor<4>,
    ) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>)> {
        let [_, _, h, w] = x.dims();
        if pool.dilation != [1, 1] || pool.ceil_mode || h * w == 0 {
            return Err((x, shortcut));
        }
        let padding = padding_pairs(&pool.padding, [h, w], pool.kernel_size, pool.stride);
        let x = match flex_tensor(x) {
            Ok(x) => x,
            Err(x) => return Err((x, shortcut)),
        };
        let shortcut_flex = match flex_tensor(shortcut) {
            Ok(shortcut) => shortcut,
            Err(shortcut) => return Err((tensor(x), shortcut)),
        };
        channels_last::max_pool2d_add(&x, pool.kernel_size, pool.stride, padding, &shortcut_flex)
            .map(tensor)
            .ok_or_else(|| (tensor(x), tensor(shortcut_flex)))
    }

    pub(super) fn separable_conv2d(
        x: Tensor<4>,
        relu_input: bool,
        depthwise: &Conv2d,
        (pointwise, packed): (&Conv2d, &PackedWeights),
        residual: Option<&Tensor<4>>,
    ) -> Result<Tensor<4>, Tensor<4>> {
        let Some(padding) = same_padding(depthwise, pointwise) else {
            return Err(x);
        };
        let x = flex_tensor(x)?;
        let operands = (|| {
            let bias = match &pointwise.bias {
                Some(bias) => Some(flex_tensor(bias.val()).ok()?),
                None => None,
            };
            let depthwise = flex_tensor(depthwise.weight.val()).ok()?;
            let residual = match residual {
                Some(residual) => Some(flex_tensor(residual.clone()).ok()?),
                None => None,
            };
            Some((depthwise, bias, residual))
        })();
        let Some((depthwise, bias, residual)) = operands else {
            return Err(tensor(x));
        };
        match channels_last::separable_conv2d(
            &x,
            relu_input,
            &depthwise,
            padding,
            packed,
            bias.as_ref(),
            residual.as_ref(),
        ) {
            Some(out) => {
                FUSED_CALLS.fetch_add(1, Ordering::Relaxed);
                Ok(tensor(out))
            }
            None => Err(tensor(x)),
        }
    }

    pub(super) fn conv2d(
        x: Tensor<4>,
        (conv, packed): (&Conv2d, &PackedWeights),
        relu: bool,
    ) -> Result<Tensor<4>, Tensor<4>> {
        let [_, _, h, w] = x.dims();
        if conv.dilation != [1, 1] || conv.groups != 1 {
            return Err(x);
        }
        let padding = padding_pairs(&conv.padding, [h, w], conv.kernel_size, conv.stride);
        let x = flex_tensor(x)?;
        let bias = match &conv.bias {
            Some(bias) => match flex_tensor(bias.val()) {
                Ok(bias) => Some(bias),
                Err(_) => return Err(tensor(x)),
            },
            None => None,
        };
        match channels_last::conv2d_bias_relu(&x, packed, conv.stride, padding, bias.as_ref(), relu)
        {
            Some(out) => {
                FUSED_CALLS.fetch_add(1, Ordering::Relaxed);
                Ok(tensor(out))
            }
            None => Err(tensor(x)),
        }
    }
}
