//! Classification metrics: loss, top-1 and top-5 accuracy, accumulated over batches.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// How many of the `labels` are among the `k` highest `logits` of their row, for each `k` of
/// `ks` (ascending), as counts left on the logits' device. `logits` is `[N, C]`, `labels`
/// `[N]`; `k` is capped at `C`.
pub fn top_k_hits(logits: Tensor<2>, labels: Tensor<1, Int>, ks: &[usize]) -> Tensor<1> {
    let [n, classes] = logits.dims();
    let k_max = ks.iter().copied().max().unwrap_or(1).min(classes).max(1);
    let (_, indices) = logits.topk_with_indices(k_max, 1);
    let hits = indices.equal(labels.reshape([n, 1])).int();
    let counts = ks
        .iter()
        .map(|&k| hits.clone().slice([0..n, 0..k.min(k_max)]).sum())
        .collect();
    Tensor::cat(counts, 0).float()
}

/// [`top_k_hits`], read back.
pub fn top_k_correct(logits: Tensor<2>, labels: Tensor<1, Int>, ks: &[usize]) -> Vec<u64> {
    top_k_hits(logits, labels, ks)
        .into_data()
        .iter::<f32>()
        .map(|count| count as u64)
        .collect()
}

/// A batch's loss and accuracy as a tensor on the logits' device, `[mean loss, mean loss x
/// images, top-1 hits, top-5 hits]`, to be summed there and read once
/// ([`ClassificationMeter::add_tally`]).
pub fn batch_tally(mean_loss: Tensor<1>, logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let images = labels.dims()[0];
    let hits = top_k_hits(logits, labels, &[1, 5]);
    Tensor::cat(
        vec![mean_loss.clone(), mean_loss.mul_scalar(images as f64), hits],
        0,
    )
}

/// Running totals of a classification pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMeter {
    /// Images seen.
    pub images: u64,
    /// Sum of per-image losses.
    pub loss_sum: f64,
    /// Images whose label was the top prediction.
    pub top1: u64,
    /// Images whose label was among the five top predictions.
    pub top5: u64,
}

impl ClassificationMeter {
    /// Adds a batch: its mean loss, its logits and labels.
    pub fn add(&mut self, mean_loss: f64, logits: Tensor<2>, labels: Tensor<1, Int>) {
        let n = labels.dims()[0] as u64;
        let correct = top_k_correct(logits, labels, &[1, 5]);
        self.images += n;
        self.loss_sum += mean_loss * n as f64;
        self.top1 += correct[0];
        self.top5 += correct[1];
    }

    /// Adds batches summed by [`batch_tally`] (`tally` read back) over `images` images.
    pub fn add_tally(&mut self, images: u64, tally: &[f32]) {
        self.images += images;
        self.loss_sum += f64::from(tally[1]);
        self.top1 += tally[2] as u64;
        self.top5 += tally[3] as u64;
    }

    /// Mean loss per image.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }

    /// Top-1 accuracy in percent.
    pub fn top1_percent(&self) -> f64 {
        100.0 * self.top1 as f64 / self.images.max(1) as f64
    }

    /// Top-5 accuracy in percent.
    pub fn top5_percent(&self) -> f64 {
        100.0 * self.top5 as f64 / self.images.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn logits(rows: Vec<Vec<f32>>) -> Tensor<2> {
        let (n, c) = (rows.len(), rows[0].len());
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(flat, [n, c]), &Device::flex())
    }

    fn labels(values: Vec<i64>) -> Tensor<1, Int> {
        let n = values.len();
        Tensor::from_data(TensorData::new(values, [n]), &Device::flex())
    }

    #[test]
    fn counts_top_k_hits() {
        let scores = logits(vec![
            vec![0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
            vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            vec![0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        ]);
        // Row 0: label 0 is top-1. Row 1: label 2 is 5th. Row 2: label 6 is last (7th).
        let counts = top_k_correct(scores, labels(vec![0, 2, 6]), &[1, 5]);
        assert_eq!(counts, vec![1, 2]);
    }

    #[test]
    fn k_larger_than_the_classes_counts_everything() {
        let scores = logits(vec![vec![0.2, 0.8], vec![0.6, 0.4]]);
        assert_eq!(
            top_k_correct(scores, labels(vec![0, 1]), &[1, 5]),
            vec![0, 2]
        );
    }

    #[test]
    fn meter_accumulates_means_and_percentages() {
        let mut meter = ClassificationMeter::default();
        meter.add(1.0, logits(vec![vec![1.0, 0.0]]), labels(vec![0]));
        meter.add(
            4.0,
            logits(vec![vec![1.0, 0.0], vec![0.0, 1.0]]),
            labels(vec![1, 1]),
        );
        assert_eq!(meter.images, 3);
        assert!((meter.loss() - 3.0).abs() < 1e-12);
        assert!((meter.top1_percent() - 200.0 / 3.0).abs() < 1e-9);
        assert!((meter.top5_percent() - 100.0).abs() < 1e-9);
    }
}
