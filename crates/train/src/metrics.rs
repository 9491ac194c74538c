//! Classification metrics: loss, top-1 and top-5 accuracy, accumulated over batches.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// How many of the `labels` are among the `k` highest `logits` of their row, for each `k` of
/// `ks` (ascending). `logits` is `[N, C]`, `labels` `[N]`; `k` is capped at `C`.
pub fn top_k_correct(logits: Tensor<2>, labels: Tensor<1, Int>, ks: &[usize]) -> Vec<u64> {
    let [n, classes] = logits.dims();
    let k_max = ks.iter().copied().max().unwrap_or(1).min(classes).max(1);
    let (_, indices) = logits.topk_with_indices(k_max, 1);
    let hits = indices.equal(labels.reshape([n, 1])).int();
    ks.iter()
        .map(|&k| {
            let k = k.min(k_max);
            let count = hits.clone().slice([0..n, 0..k]).sum();
            count
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .ok()
                .and_then(|v| v.first().copied())
                .map_or(0, |c| c as u64)
        })
        .collect()
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
