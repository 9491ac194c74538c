//! Backend operations implementations.

use alloc::borrow::Cow;
use burn_backend::DType;
use burn_std::{bf16, f16};

use crate::FlexTensor;

/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "64")]
pub(crate) const INDEX_DTYPE: DType = DType::I64;
/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "32")]
pub(crate) const INDEX_DTYPE: DType = DType::I32;

/// Minimum total element count for rayon fan-out on per-row or per-chunk loops.
/// Below this, task-dispatch overhead dominates the per-unit work.
#[cfg(feature = "rayon")]
pub(crate) const PARALLEL_THRESHOLD: usize = 256 * 1024;

/// Wrapper for raw mutable pointers that can be sent across rayon threads.
///
/// # Safety
///
/// The caller must ensure:
/// - The pointer remains valid for the lifetime of all uses
/// - No two threads write to the same offset
/// - No references to the underlying data exist during writes
#[cfg(feature = "rayon")]
pub(crate) struct SendMutPtr<T>(*mut T);

#[cfg(feature = "rayon")]
unsafe impl<T> Send for SendMutPtr<T> {}
#[cfg(feature = "rayon")]
unsafe impl<T> Sync for SendMutPtr<T> {}

#[cfg(feature = "rayon")]
impl<T> SendMutPtr<T> {
    pub(crate) fn new(ptr: *mut T) -> Self {
        Self(ptr)
    }

    /// Write `val` at the given element offset.
    ///
    /// # Safety
    /// Offset must be in bounds and no other thread may write to the same offset.
    pub(crate) unsafe fn write(&self, offset: usize, val: T) {
        unsafe { self.0.add(offset).write(val) }
    }

    /// Returns the raw pointer offset by `offset` elements.
    ///
    /// # Safety
    /// Offset must be in bounds.
    pub(crate) unsafe fn ptr_add(&self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}

/// Read a float tensor's storage as f32 values, regardless of source dtype.
/// Returns a borrowed slice for F32 (zero-copy) and an owned Vec for other
/// float dtypes (F64, F16, BF16).
///
/// Returns elements in underlying buffer order. Callers needing logical
/// iteration order must call `to_contiguous()` first.
///
/// # Panics
/// Panics if the tensor's dtype is not one of F32, F64, F16, or BF16.
pub(crate) fn float_storage_as_f32(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    match tensor.dtype() {
        DType::F32 => Cow::Borrowed(tensor.storage::<f32>()),
        DType::F64 => Cow::Owned(tensor.storage::<f64>().iter().map(|&x| x as f32).collect()),
        DType::F16 => Cow::Owned(
            tensor
                .storage::<f16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        DType::BF16 => Cow::Owned(
            tensor
                .storage::<bf16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        other => panic!("float_storage_as_f32: unsupported dtype {:?}", other),
    }
}

/// The widest variant the [`multiversion!`] kernels may pick (xception-burn's patch): the
/// CPU's best unless a test lowers it, so that the AVX2 and baseline variants also run on
/// an AVX-512 machine.
#[doc(hidden)]
pub mod simd_variant {
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

    /// The baseline x86-64 build (SSE2).
    pub const BASELINE: u8 = 0;
    /// AVX2 with FMA.
    pub const AVX2: u8 = 1;
    /// AVX-512F (the default: whatever the CPU has).
    pub const AVX512: u8 = 2;

    static WIDEST: AtomicU8 = AtomicU8::new(AVX512);
    static USED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

    /// Lets the kernels use variants up to `widest` (one of the constants above).
    pub fn allow_up_to(widest: u8) {
        WIDEST.store(widest, Ordering::Relaxed);
    }

    /// Whether variant `level` may be used.
    pub fn allowed(level: u8) -> bool {
        WIDEST.load(Ordering::Relaxed) >= level
    }

    /// Counts a call of variant `level`.
    pub fn record(level: u8) {
        USED[usize::from(level.min(AVX512))].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls of variant `level` so far, so that tests can see which ones ran.
    pub fn calls(level: u8) -> u64 {
        USED[usize::from(level.min(AVX512))].load(Ordering::Relaxed)
    }
}

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2 with FMA
/// and for the baseline, and picks one by what the CPU reports at run time, within what
/// [`simd_variant`] allows (xception-burn's patch: flex builds for baseline x86-64, where
/// loops vectorise to SSE2 only). Arguments must be plain identifiers; no generics.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                use $crate::ops::simd_variant;
                if simd_variant::allowed(simd_variant::AVX512)
                    && std::is_x86_feature_detected!("avx512f")
                {
                    simd_variant::record(simd_variant::AVX512);
                    // SAFETY: the CPU supports AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if simd_variant::allowed(simd_variant::AVX2)
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    simd_variant::record(simd_variant::AVX2);
                    // SAFETY: the CPU supports AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            #[cfg(feature = "std")]
            $crate::ops::simd_variant::record($crate::ops::simd_variant::BASELINE);
            body($($arg),*)
        }
    };
}

pub mod activation;
pub mod attention;
pub mod avg_pool;
pub mod batch_norm;
pub mod binary;
mod bool;
pub mod cat;
pub mod channels_last;
pub mod comparison;
#[macro_use]
mod conv_common;
pub mod conv;
pub mod conv_grad;
pub mod conv_transpose;
pub mod cumulative;
pub mod deform_conv;
pub mod expand;
#[cfg(feature = "fft")]
pub mod fft;
pub mod flip;
mod float;
pub mod gather_scatter;
pub mod grid_sample;
mod int;
pub mod interpolate;
pub mod mask;
pub mod pad;
pub mod matmul;
pub mod max_pool;
mod module;
pub mod pool;
mod qtensor;
pub mod reduce;
pub mod repeat_dim;
pub mod slice;
pub mod sort;
mod transaction;
pub mod unary;
pub mod unfold;
