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

/// A 1x1 convolution's weights as the fused kernel reads them, packed once when a network is
/// folded for inference; empty where the kernel does not run (another device, a CPU without
/// AVX-512, a build without the feature).
#[derive(Clone, Debug, Default)]
pub struct PackedPointwise {
    #[cfg(feature = "flex-kernels")]
    panels: Option<burn::backend::flex::ops::channels_last::PackedPointwise>,
}

impl PackedPointwise {
    /// `pointwise`'s weights packed, if the fused kernel can use them.
    pub(crate) fn new(pointwise: &Conv2d) -> Self {
        #[cfg(feature = "flex-kernels")]
        {
            Self {
                panels: flex::pack(pointwise),
            }
        }
        #[cfg(not(feature = "flex-kernels"))]
        {
            let _ = pointwise;
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
    (pointwise, packed): (&Conv2d, &PackedPointwise),
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

/// How many separable convolutions the fused kernel has computed in this process.
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
    use burn::backend::flex::ops::channels_last::{self, PackedPointwise};
    use burn::backend::{
        BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind,
    };
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2d;
    use burn::nn::pool::MaxPool2d;
    use burn::tensor::Tensor;

    /// How many separable convolutions the fused kernel computed (for the tests).
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

    /// `pointwise`'s weights packed, when they are f32 on flex and the CPU runs the kernel.
    pub(super) fn pack(pointwise: &Conv2d) -> Option<PackedPointwise> {
        PackedPointwise::new(&flex_tensor(pointwise.weight.val()).ok()?)
    }

    /// TensorFlow's 'same' padding along one axis, as Burn's `PaddingConfig2d::Same`
    /// computes it for pooling: the output has `ceil(size / stride)` positions, the padding
    /// that needs split with the smaller half first.
    fn same(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
        let total = ((size.div_ceil(stride) - 1) * stride + kernel).saturating_sub(size);
        (total / 2, total - total / 2)
    }

    pub(super) fn max_pool2d_add(
        x: Tensor<4>,
        pool: &MaxPool2d,
        shortcut: Tensor<4>,
    ) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>)> {
        let [_, _, h, w] = x.dims();
        let padding = match pool.padding {
            PaddingConfig2d::Same if pool.dilation == [1, 1] && !pool.ceil_mode && h * w > 0 => [
                same(h, pool.kernel_size[0], pool.stride[0]),
                same(w, pool.kernel_size[1], pool.stride[1]),
            ],
            _ => return Err((x, shortcut)),
        };
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
        (pointwise, packed): (&Conv2d, &PackedPointwise),
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
}
