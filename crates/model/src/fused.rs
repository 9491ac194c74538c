//! Fused inference kernels of `vendor/burn-flex`, reached from the model (feature
//! `flex-kernels`, on in the `xception` binary).
//!
//! A Burn tensor carries no backend type, so the model takes a tensor on the flex device out
//! of Burn's dispatch (`Tensor::into_dispatch`, Burn's `extension` feature), hands the flex
//! tensors to the kernel and wraps its result back. Anything else (another device, autodiff,
//! a shape or CPU the kernel declines, a build without the feature) comes back as `Err` with
//! the input untouched, and the caller runs the ops one by one.

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

/// `relu(x)` (with `relu_input`, else `x`) through `depthwise` and `pointwise` (with its
/// bias), plus `residual`, in one pass over the activations: `Err(x)` where the fused kernel
/// does not apply. `depthwise` must be a stride-1 'same' convolution with an odd kernel, one
/// filter per channel and no bias; `pointwise` a 1x1 convolution.
pub(crate) fn separable_conv2d(
    x: Tensor<4>,
    relu_input: bool,
    depthwise: &Conv2d,
    pointwise: &Conv2d,
    residual: Option<&Tensor<4>>,
) -> Result<Tensor<4>, Tensor<4>> {
    #[cfg(feature = "flex-kernels")]
    {
        flex::separable_conv2d(x, relu_input, depthwise, pointwise, residual)
    }
    #[cfg(not(feature = "flex-kernels"))]
    {
        let _ = (relu_input, depthwise, pointwise, residual);
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

#[cfg(feature = "flex-kernels")]
mod flex {
    use std::sync::atomic::{AtomicU64, Ordering};

    use burn::backend::flex::FlexTensor;
    use burn::backend::flex::ops::channels_last;
    use burn::backend::{
        BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind,
    };
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2d;
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

    pub(super) fn separable_conv2d(
        x: Tensor<4>,
        relu_input: bool,
        depthwise: &Conv2d,
        pointwise: &Conv2d,
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
            let pointwise = flex_tensor(pointwise.weight.val()).ok()?;
            let residual = match residual {
                Some(residual) => Some(flex_tensor(residual.clone()).ok()?),
                None => None,
            };
            Some((depthwise, pointwise, bias, residual))
        })();
        let Some((depthwise, pointwise, bias, residual)) = operands else {
            return Err(tensor(x));
        };
        match channels_last::separable_conv2d(
            &x,
            relu_input,
            &depthwise,
            padding,
            &pointwise,
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
