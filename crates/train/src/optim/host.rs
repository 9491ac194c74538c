//! The fused CPU path: a parameter's weights, gradient and state are moved out of their
//! tensors into this process's memory, updated by [`Rule::apply`] in one parallel pass over
//! the values, and moved back. As tensor operations the same update makes six to eight passes
//! over every weight and allocates fresh buffers of their size.

use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use super::rules::{Rule, UpdateRule};

/// Values per task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 14;

/// A flat f32 tensor's values, moved out of the tensor (flex hands over its buffer without
/// copying it when nothing else holds it) and back.
pub(super) struct Values {
    data: TensorData,
    device: Device,
}

impl Values {
    /// Whether `tensor` lives in this process's memory as f32 values.
    pub(super) fn can_take(tensor: &Tensor<1>) -> bool {
        tensor.dtype() == DType::F32 && is_cpu(&tensor.device())
    }

    /// The values of `tensor`, which [`Self::can_take`] accepted.
    pub(super) fn take(tensor: Tensor<1>) -> Self {
        let device = tensor.device();
        let mut data = tensor.into_data();
        if data.as_mut_slice::<f32>().is_err() {
            // A buffer f32 cannot view in place (its alignment): copy it into one that can.
            let values: Vec<f32> = data.iter::<f32>().collect();
            let len = values.len();
            data = TensorData::new(values, [len]);
        }
        Self { data, device }
    }

    /// As many values as `self`, all `value`, on the same device.
    fn like_filled(&self, value: f32) -> Self {
        let len = self.data.num_elements();
        Self {
            data: TensorData::new(vec![value; len], [len]),
            device: self.device.clone(),
        }
    }

    pub(super) fn slice(&self) -> &[f32] {
        self.data
            .as_slice::<f32>()
            .expect("`Values::take` made the buffer an f32 view")
    }

    fn slice_mut(&mut self) -> &mut [f32] {
        self.data
            .as_mut_slice::<f32>()
            .expect("`Values::take` made the buffer an f32 view")
    }

    /// Back to a tensor on the device it came from.
    pub(super) fn into_tensor(self) -> Tensor<1> {
        Tensor::from_data(self.data, &self.device)
    }
}

/// Whether `device` is one of the CPU devices this build has (the binary picks the backends:
/// a build without them has none).
fn is_cpu(device: &Device) -> bool {
    let device = device.clone().without_autodiff();
    #[cfg(feature = "flex")]
    if device == Device::flex() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // ndarray is deprecated upstream; our users asked to keep it
    if device == Device::ndarray() {
        return true;
    }
    let _ = device;
    false
}

/// `sum(v^2)`, in f64, in a fixed order of chunks (the same sum on every run).
pub(super) fn sum_of_squares(values: &[f32]) -> f64 {
    let partial: Vec<f64> = values
        .par_chunks(CHUNK)
        .map(|chunk| chunk.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
        .collect();
    partial.iter().sum()
}

/// Applies `rule` to `weights` in place with the parameter's state `slots` (empty before its
/// first step) and returns the new state. No buffer is allocated but RMSprop's first mean
/// square: a slot the step creates is written over the gradient.
pub(super) fn apply(
    rule: &Rule,
    weights: &mut Values,
    mut grad: Values,
    slots: Vec<Values>,
) -> Vec<Values> {
    let mut slots = slots.into_iter();
    let mut first = slots.next();
    let mut second = slots.next();
    if first.is_none() && matches!(rule, Rule::Rmsprop(_)) {
        // TensorFlow 1 starts the mean square at 1.
        first = Some(weights.like_filled(1.0));
    }
    let new_slot = {
        let (w, g) = (weights.slice_mut(), grad.slice_mut());
        let (s0, s1) = (
            first.as_mut().map(Values::slice_mut),
            second.as_mut().map(Values::slice_mut),
        );
        // One loop per rule, so that no value pays for choosing it.
        match rule {
            Rule::Sgd(rule) => update_chunks(rule, w, g, s0, s1),
            Rule::PlainSgd(rule) => update_chunks(rule, w, g, s0, s1),
            Rule::Rmsprop(rule) => update_chunks(rule, w, g, s0, s1),
        }
    };
    match new_slot {
        NewSlot::None => {}
        NewSlot::First => first = Some(grad),
        NewSlot::Second => second = Some(grad),
    }
    first.into_iter().chain(second).collect()
}

/// Which state slot a step created in the gradient's buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NewSlot {
    None,
    First,
    Second,
}

/// One task's share of a parameter: the same range of its weights, gradient and state.
struct Chunk<'a> {
    weights: &'a mut [f32],
    grad: &'a mut [f32],
    first: Option<&'a mut [f32]>,
    second: Option<&'a mut [f32]>,
}

/// One parallel pass of `rule` over every value. `first` and `second` are the existing state
/// slots; a slot the rule returns that does not exist yet is written over `grad`.
fn update_chunks<R: UpdateRule>(
    rule: &R,
    weights: &mut [f32],
    grad: &mut [f32],
    first: Option<&mut [f32]>,
    second: Option<&mut [f32]>,
) -> NewSlot {
    let mut first = first.map(|s| s.chunks_mut(CHUNK));
    let mut second = second.map(|s| s.chunks_mut(CHUNK));
    let chunks: Vec<Chunk> = weights
        .chunks_mut(CHUNK)
        .zip(grad.chunks_mut(CHUNK))
        .map(|(weights, grad)| Chunk {
            weights,
            grad,
            first: first.as_mut().and_then(Iterator::next),
            second: second.as_mut().and_then(Iterator::next),
        })
        .collect();
    let created: Vec<NewSlot> = chunks
        .into_par_iter()
        .map(|chunk| update_chunk(rule, chunk))
        .collect();
    created.first().copied().unwrap_or(NewSlot::None)
}

/// [`update_chunks`] on one chunk, value by value. One loop per combination of existing
/// slots, over zipped slices, so that the compiler sees which slots exist and vectorises.
#[inline(always)]
fn update_chunk<R: UpdateRule>(rule: &R, chunk: Chunk) -> NewSlot {
    let Chunk {
        weights,
        grad,
        first,
        second,
    } = chunk;
    let ones = |_: &f32| 1.0;
    match (first, second) {
        (Some(first), Some(second)) => {
            let values = weights.iter_mut().zip(grad.iter()).zip(first).zip(second);
            for (((w, g), s0), s1) in values {
                let (new, [n0, n1]) = rule.apply(*w, *g, [Some(*s0), Some(*s1)], ones);
                *w = new;
                *s0 = n0.unwrap_or(*s0);
                *s1 = n1.unwrap_or(*s1);
            }
            NewSlot::None
        }
        (Some(first), None) => {
            let mut created = NewSlot::None;
            for ((w, g), s0) in weights.iter_mut().zip(grad.iter_mut()).zip(first) {
                let (new, [n0, n1]) = rule.apply(*w, *g, [Some(*s0), None], ones);
                *w = new;
                *s0 = n0.unwrap_or(*s0);
                if let Some(n1) = n1 {
                    *g = n1;
                    created = NewSlot::Second;
                }
            }
            created
        }
        (None, _) => {
            let mut created = NewSlot::None;
            for (w, g) in weights.iter_mut().zip(grad.iter_mut()) {
                let (new, [n0, _]) = rule.apply(*w, *g, [None, None], ones);
                *w = new;
                if let Some(n0) = n0 {
                    *g = n0;
                    created = NewSlot::First;
                }
            }
            created
        }
    }
}
