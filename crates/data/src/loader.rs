//! The deterministic parallel loader.
//!
//! An epoch's order is a permutation drawn from (seed, epoch); each sample's augmentation
//! from (seed, epoch, sample index). Workers build whole batches in parallel, at most
//! `prefetch` batches ahead, and batches come out in order, so the result never depends on
//! the number of workers. An epoch can start at any sample offset: the batches from there on
//! are those of the uninterrupted epoch, which is what exact resume needs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::dataset::Dataset;
use crate::decode::read_file;
use crate::error::DataError;
use crate::rng::{Rng, derive, permutation};
use crate::transform::Transform;

/// How batches are drawn from a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Worker threads decoding and augmenting (at least 1).
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Seed of the permutations and augmentations.
    pub seed: u64,
    /// Shuffle each epoch (training) or keep the dataset's order (evaluation).
    pub shuffle: bool,
    /// Drop the last partial batch (training) or keep it (evaluation).
    pub drop_last: bool,
    /// The image transform.
    pub transform: Transform,
}

impl LoaderConfig {
    fn validate(&self) -> Result<(), DataError> {
        let invalid = |field, reason: &str| {
            Err(DataError::InvalidSetting {
                field,
                reason: reason.to_string(),
            })
        };
        if self.batch_size == 0 {
            return invalid("data.batch_size", "must be at least 1");
        }
        if self.workers == 0 {
            return invalid("data.workers", "must be at least 1");
        }
        if self.prefetch == 0 {
            return invalid("data.prefetch", "must be at least 1");
        }
        if self.transform.size() == 0 {
            return invalid("model.input_size", "must be at least 1");
        }
        Ok(())
    }
}

/// A file that could not be decoded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// A batch in host memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostBatch {
    /// Position of the batch in its epoch.
    pub index: usize,
    /// `[N, 3, S, S]` values in `[-1, 1]`, row-major.
    pub images: Vec<f32>,
    /// Class index per image.
    pub labels: Vec<i64>,
    /// Dataset index per image.
    pub samples: Vec<usize>,
    /// Files the batch was drawn from, bad ones included.
    pub files: usize,
    /// Each image's position among those files (a bad file leaves a gap).
    pub positions: Vec<usize>,
    /// Files of this batch that could not be decoded (left out of `images`).
    pub skipped: Vec<BadFile>,
    /// Image side.
    pub size: usize,
}

impl HostBatch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether every file of the batch was bad.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Splits the batch into `parts` shares (data-parallel training): the contiguous shares
    /// of its *files* ([`share`]: as even as possible, the first taking one more), each
    /// with the images decoded from its files. A bad file leaves its own share one image
    /// short, so the shares do not depend on which processes or devices decoded the files:
    /// one process over N devices and N processes of one device (each decoding only its
    /// shard, [`Loader::sharded`]) see the same shares. Skipped files are reported with the
    /// first share; shares keep the batch's index.
    pub fn split(self, parts: usize) -> Vec<HostBatch> {
        if parts <= 1 {
            return vec![self];
        }
        let pixels = 3 * self.size * self.size;
        let first_at_or_after = |position: usize| self.positions.partition_point(|&p| p < position);
        (0..parts)
            .map(|part| {
                let files = share(self.files, parts, part);
                let range = first_at_or_after(files.start)..first_at_or_after(files.end);
                HostBatch {
                    index: self.index,
                    images: self.images[range.start * pixels..range.end * pixels].to_vec(),
                    labels: self.labels[range.clone()].to_vec(),
                    samples: self.samples[range.clone()].to_vec(),
                    files: files.len(),
                    positions: self.positions[range]
                        .iter()
                        .map(|p| p - files.start)
                        .collect(),
                    skipped: if part == 0 {
                        self.skipped.clone()
                    } else {
                        Vec::new()
                    },
                    size: self.size,
                }
            })
            .collect()
    }

    /// The batch as tensors on `device`: images `[N, 3, S, S]` and labels `[N]`. Consumes
    /// the batch, so its pixels move into the tensor without a copy on the CPU devices.
    pub fn into_device(self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = self.len();
        let images = TensorData::new(self.images, [n, 3, self.size, self.size]);
        let labels = TensorData::new(self.labels, [n]);
        (
            Tensor::from_data(images, device),
            Tensor::from_data(labels, device),
        )
    }
}

/// Share `part` of `parts` contiguous shares of `n` items, as even as possible, the first
/// shares taking one item more: how a batch is split over devices and over processes.
pub fn share(n: usize, parts: usize, part: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let start = part * (n / parts) + part.min(n % parts);
    start..start + n / parts + usize::from(part < n % parts)
}

/// Which share of every batch a loader yields: one process's part of a batch drawn for
/// several processes (distributed training), split as [`share`] splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's share (0-based).
    pub index: usize,
    /// Shares per batch.
    pub count: usize,
}

impl Shard {
    /// The whole batch.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };
}

/// Draws batches from a dataset.
#[derive(Debug, Clone)]
pub struct Loader {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    shard: Shard,
}

impl Loader {
    /// A loader of `dataset`.
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig) -> Result<Self, DataError> {
        config.validate()?;
        Ok(Self {
            dataset,
            config,
            shard: Shard::WHOLE,
        })
    }

    /// The same loader yielding only `shard` of each batch: batches are drawn as before (the
    /// same order, augmentation and batch count, `batch_size` images each), and only the
    /// shard's images are decoded. Processes that each take their shard of the same batches
    /// see every image of it exactly once.
    pub fn sharded(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// The dataset read.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches in a full epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.batches_from(0)
    }

    fn batches_from(&self, offset: usize) -> usize {
        let remaining = self.dataset.len().saturating_sub(offset);
        if self.config.drop_last {
            remaining / self.config.batch_size
        } else {
            remaining.div_ceil(self.config.batch_size)
        }
    }

    /// The order in which epoch `epoch` visits the dataset.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.config.shuffle {
            permutation(
                self.dataset.len(),
                derive(&[self.config.seed, epoch, 0x5eed]),
            )
        } else {
            (0..self.dataset.len()).collect()
        }
    }

    /// Iterates over epoch `epoch` from sample `offset` of its order (0 for a whole epoch).
    /// Offsets that are multiples of the batch size reproduce the uninterrupted batches.
    pub fn epoch(&self, epoch: u64, offset: usize) -> EpochIter {
        let order = self.epoch_order(epoch);
        let total = self.batches_from(offset);
        let (job_tx, job_rx) = sync_channel::<usize>(self.config.prefetch);
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        let (result_tx, result_rx) = sync_channel::<HostBatch>(self.config.prefetch);
        let shared = Arc::new(EpochPlan {
            dataset: Arc::clone(&self.dataset),
            config: self.config.clone(),
            order,
            offset,
            epoch,
            shard: self.shard,
        });
        let workers = (0..self.config.workers)
            .map(|_| {
                let jobs = Arc::clone(&job_rx);
                let results = result_tx.clone();
                let plan = Arc::clone(&shared);
                std::thread::spawn(move || {
                    loop {
                        let job = match jobs.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        let Ok(index) = job else { return };
                        if results.send(plan.build(index)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let mut iter = EpochIter {
            jobs: Some(job_tx),
            results: result_rx,
            workers,
            pending: BTreeMap::new(),
            next_to_send: 0,
            next_to_yield: 0,
            total,
            prefetch: self.config.prefetch,
        };
        iter.fill();
        iter
    }
}

struct EpochPlan {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    order: Vec<usize>,
    offset: usize,
    epoch: u64,
    shard: Shard,
}

impl EpochPlan {
    fn build(&self, index: usize) -> HostBatch {
        let batch_size = self.config.batch_size;
        let first = self.offset + index * batch_size;
        let whole = (first + batch_size).min(self.order.len()) - first;
        let mine = share(whole, self.shard.count, self.shard.index);
        let (start, end) = (first + mine.start, first + mine.end);
        let size = self.config.transform.size() as usize;
        let slot = 3 * size * size;
        let mut batch = HostBatch {
            index,
            images: Vec::with_capacity((end - start) * slot),
            labels: Vec::with_capacity(end - start),
            samples: Vec::with_capacity(end - start),
            files: end - start,
            positions: Vec::with_capacity(end - start),
            skipped: Vec::new(),
            size,
        };
        for (position, &sample) in self.order[start..end].iter().enumerate() {
            let path = self.dataset.path(sample);
            let filled = batch.images.len();
            batch.images.resize(filled + slot, 0.0);
            let key = derive(&[self.config.seed, self.epoch, sample as u64]);
            let target = &mut batch.images[filled..];
            let outcome = read_file(&path).and_then(|bytes| {
                self.config
                    .transform
                    .apply_encoded(&bytes, &mut Rng::new(key), target)
            });
            match outcome {
                Ok(()) => {
                    batch.labels.push(self.dataset.label(sample) as i64);
                    batch.samples.push(sample);
                    batch.positions.push(position);
                }
                Err(reason) => {
                    batch.images.truncate(filled);
                    batch.skipped.push(BadFile { path, reason });
                }
            }
        }
        batch
    }
}

/// The batches of one epoch, in order.
pub struct EpochIter {
    jobs: Option<SyncSender<usize>>,
    results: Receiver<HostBatch>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, HostBatch>,
    next_to_send: usize,
    next_to_yield: usize,
    total: usize,
    prefetch: usize,
}

impl EpochIter {
    /// Batches this iterator yields in all.
    pub fn total(&self) -> usize {
        self.total
    }

    fn fill(&mut self) {
        while self.next_to_send < self.total
            && self.next_to_send < self.next_to_yield + self.prefetch
        {
            let Some(jobs) = &self.jobs else { return };
            if jobs.send(self.next_to_send).is_err() {
                return;
            }
            self.next_to_send += 1;
        }
    }
}

impl Iterator for EpochIter {
    type Item = HostBatch;

    fn next(&mut self) -> Option<HostBatch> {
        if self.next_to_yield >= self.total {
            return None;
        }
        loop {
            if let Some(batch) = self.pending.remove(&self.next_to_yield) {
                self.next_to_yield += 1;
                self.fill();
                return Some(batch);
            }
            match self.results.recv() {
                Ok(batch) => {
                    self.pending.insert(batch.index, batch);
                }
                // Workers catch decoder panics, so this is a bug; never end an epoch silently.
                Err(_) => panic!(
                    "every loader worker stopped before batch {} of {}",
                    self.next_to_yield, self.total
                ),
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing both channels stops the workers: idle ones see no more jobs, busy ones
        // fail to deliver their batch and return.
        self.jobs = None;
        drop(std::mem::replace(&mut self.results, sync_channel(0).1));
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
