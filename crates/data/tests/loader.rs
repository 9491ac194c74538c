//! The loader on a generated dataset with deliberately broken files.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::Device;
use xception_data::synth::{SynthOptions, generate};
use xception_data::{
    Dataset, DatasetOptions, HostBatch, Loader, LoaderConfig, RandomResizedCrop, Shard, Split,
    Transform, check, open, share,
};

fn synth(root: &Path) {
    let options = SynthOptions {
        classes: 3,
        train_per_class: 9,
        val_per_class: 3,
        size: 24,
        seed: 11,
    };
    generate(root, &options).expect("generates");
}

/// Breaks a few files the way real datasets are broken.
fn break_files(root: &Path) -> Vec<&'static str> {
    let broken = [
        "train/000-red-disc/00000.jpg",
        "train/001-green-square/00001.jpg",
        "train/002-blue-triangle/00002.jpg",
    ];
    fs::write(root.join(broken[0]), b"").expect("empty file");
    let path = root.join(broken[1]);
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() / 4]).expect("truncate");
    fs::write(root.join(broken[2]), b"<html>not an image</html>").expect("text");
    // A PNG named .jpg, as ImageNet has one: readable, not broken.
    let png = root.join("train/000-red-disc/00003.jpg");
    image::open(&png)
        .expect("decodes")
        .save_with_format(&png, image::ImageFormat::Png)
        .expect("re-encode as PNG");
    broken.to_vec()
}

fn train_config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        workers,
        prefetch: 2,
        seed: 42,
        shuffle: true,
        drop_last: true,
        transform: Transform::Train {
            size: 20,
            crop: RandomResizedCrop::default(),
        },
    }
}

fn dataset(root: &Path, split: Split) -> Arc<Dataset> {
    Arc::new(open(root, split, &DatasetOptions::default()).expect("opens"))
}

/// What two batches must agree on (their position counts from where the iteration began).
fn content(batch: &HostBatch) -> (Vec<f32>, Vec<i64>, Vec<usize>, usize) {
    (
        batch.images.clone(),
        batch.labels.clone(),
        batch.samples.clone(),
        batch.skipped.len(),
    )
}

#[test]
fn batches_do_not_depend_on_the_number_of_workers() {
    let dir = tempfile::tempdir().expect("temp dir");
    synth(dir.path());
    break_files(dir.path());
    let data = dataset(dir.path(), Split::Train);
    let one = Loader::new(Arc::clone(&data), train_config(1)).expect("loader");
    let four = Loader::new(data, train_config(4)).expect("loader");
    for epoch in 0..2 {
        let a: Vec<_> = one.epoch(epoch, 0).map(|b| content(&b)).collect();
        let b: Vec<_> = four.epoch(epoch, 0).map(|b| content(&b)).collect();
        assert_eq!(
            a.len(),
            6,
            "27 files / 4 per batch, last partial batch dropped"
        );
        assert_eq!(a, b, "epoch {epoch}");
    }
    let first: Vec<_> = one.epoch(0, 0).map(|b| b.samples).collect();
    let second: Vec<_> = one.epoch(1, 0).map(|b| b.samples).collect();
    assert_ne!(first, second, "each epoch has its own order");
}

#[test]
fn starting_at_an_offset_continues_the_uninterrupted_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    synth(dir.path());
    let loader = Loader::new(dataset(dir.path(), Split::Train), train_config(2)).expect("loader");
    let whole: Vec<_> = loader.epoch(3, 0).map(|b| content(&b)).collect();
    let resumed: Vec<_> = loader.epoch(3, 8).map(|b| content(&b)).collect();
    assert_eq!(resumed.len(), whole.len() - 2);
    assert_eq!(resumed[..], whole[2..]);
    // Stopping early and starting again loses nothing either.
    let mut partial = loader.epoch(3, 0);
    let head: Vec<_> = partial.by_ref().take(1).map(|b| content(&b)).collect();
    drop(partial);
    assert_eq!(head[..], whole[..1]);
}

#[test]
fn bad_files_are_skipped_counted_and_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    synth(dir.path());
    let broken = break_files(dir.path());
    let config = LoaderConfig {
        shuffle: false,
        drop_last: false,
        transform: Transform::Eval {
            size: 16,
            crop_pct: 0.875,
        },
        ..train_config(2)
    };
    let data = dataset(dir.path(), Split::Train);
    let loader = Loader::new(Arc::clone(&data), config).expect("loader");
    let batches: Vec<HostBatch> = loader.epoch(0, 0).collect();
    assert_eq!(batches.len(), 7, "evaluation keeps the last partial batch");
    let images: usize = batches.iter().map(HostBatch::len).sum();
    let skipped: Vec<_> = batches.iter().flat_map(|b| b.skipped.clone()).collect();
    assert_eq!(images + skipped.len(), data.len());
    assert_eq!(skipped.len(), broken.len());
    for (bad, name) in skipped.iter().zip(&broken) {
        assert!(bad.path.ends_with(name), "{bad:?}");
        assert!(!bad.reason.is_empty());
    }
    assert_eq!(skipped[0].reason, "empty file");
    for batch in &batches {
        assert_eq!(batch.images.len(), batch.len() * 3 * 16 * 16);
        assert!(batch.images.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    let report = check(&data, &|_, _| {});
    assert_eq!(report.files, 27);
    assert_eq!(report.readable, 24);
    assert_eq!(report.bad_files.len(), 3);
    assert_eq!(report.problem(), None);
    let width = report.width.expect("stats");
    assert!(width.min >= 19 && width.max <= 30, "{width:?}");
}

#[test]
fn a_dataset_without_readable_images_is_reported_unusable() {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 0..3 {
        let path = dir.path().join(format!("train/a/{i}.jpg"));
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, b"garbage").expect("write");
    }
    let data = dataset(dir.path(), Split::Train);
    let report = check(&data, &|_, _| {});
    assert!(
        report
            .problem()
            .is_some_and(|p| p.contains("no readable image"))
    );
}

#[test]
fn batches_reach_the_device_as_tensors() {
    let dir = tempfile::tempdir().expect("temp dir");
    synth(dir.path());
    let loader = Loader::new(dataset(dir.path(), Split::Val), train_config(1)).expect("loader");
    let batch = loader.epoch(0, 0).next().expect("a batch");
    let expected = batch.labels.clone();
    let (images, labels) = batch.into_device(&Device::flex());
    assert_eq!(images.dims(), [4, 3, 20, 20]);
    assert_eq!(labels.dims(), [4]);
    let values = labels
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("int labels");
    assert_eq!(values, expected);
}

#[test]
fn invalid_settings_name_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    synth(dir.path());
    let config = LoaderConfig {
        batch_size: 0,
        ..train_config(1)
    };
    let error = Loader::new(dataset(dir.path(), Split::Val), config).expect_err("zero batch");
    assert!(error.to_string().contains("data.batch_size"), "{error}");
}

#[test]
fn a_batch_splits_into_contiguous_shares_for_several_devices() {
    let size = 2;
    let pixels = 3 * size * size;
    let batch = HostBatch {
        index: 4,
        images: (0..5 * pixels).map(|v| v as f32).collect(),
        labels: vec![0, 1, 2, 3, 4],
        samples: vec![10, 11, 12, 13, 14],
        files: 5,
        positions: vec![0, 1, 2, 3, 4],
        skipped: Vec::new(),
        size,
    };
    let shares = batch.clone().split(3);
    let labels: Vec<Vec<i64>> = shares.iter().map(|s| s.labels.clone()).collect();
    assert_eq!(labels, vec![vec![0, 1], vec![2, 3], vec![4]]);
    assert_eq!(shares[1].samples, vec![12, 13]);
    assert_eq!(shares[2].images, batch.images[4 * pixels..].to_vec());
    assert!(shares.iter().all(|s| s.index == 4 && s.size == size));
    let joined: Vec<f32> = shares.iter().flat_map(|s| s.images.clone()).collect();
    assert_eq!(joined, batch.images);
    // More devices than images: the last shares are empty, nothing is lost.
    let shares = batch.clone().split(7);
    assert_eq!(shares.iter().map(HostBatch::len).sum::<usize>(), 5);
    assert!(shares[5].is_empty() && shares[6].is_empty());
    assert_eq!(batch.clone().split(1), vec![batch.clone()]);

    // A bad file (position 1 of 6) leaves its own share one image short: the shares are
    // those of the files, whoever decoded them.
    let with_gap = HostBatch {
        files: 6,
        positions: vec![0, 2, 3, 4, 5],
        ..batch
    };
    let shares = with_gap.split(2);
    let labels: Vec<Vec<i64>> = shares.iter().map(|s| s.labels.clone()).collect();
    assert_eq!(labels, vec![vec![0, 1], vec![2, 3, 4]]);
    assert_eq!(shares[0].positions, vec![0, 2]);
    assert_eq!(shares[1].positions, vec![0, 1, 2]);
    assert_eq!((shares[0].files, shares[1].files), (3, 3));
}

#[test]
fn shards_of_a_batch_are_the_shares_of_the_whole_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    synth(dir.path());
    // Bad files too: a shard that decodes one is an image short, as its share is.
    break_files(dir.path());
    let data = dataset(dir.path(), Split::Train);
    let config = LoaderConfig {
        batch_size: 7,
        ..train_config(2)
    };
    let whole = Loader::new(Arc::clone(&data), config).expect("loader");
    let shards: Vec<Loader> = (0..3)
        .map(|index| whole.clone().sharded(Shard { index, count: 3 }))
        .collect();
    for (epoch, offset) in [(0, 0), (2, 7)] {
        let batches: Vec<HostBatch> = whole.epoch(epoch, offset).collect();
        let mut sharded: Vec<Vec<HostBatch>> = shards
            .iter()
            .map(|shard| shard.epoch(epoch, offset).collect())
            .collect();
        // Skipped files are reported by whoever decoded them: compare the rest.
        let shape = |b: &HostBatch| {
            (
                content(b).0,
                content(b).1,
                content(b).2,
                b.files,
                b.positions.clone(),
            )
        };
        for (position, batch) in batches.into_iter().enumerate() {
            let expected: Vec<_> = batch.split(3).iter().map(shape).collect();
            let got: Vec<_> = sharded.iter_mut().map(|s| shape(&s[position])).collect();
            assert_eq!(got, expected, "epoch {epoch}, batch {position}");
        }
        assert!(
            sharded
                .iter()
                .all(|s| s.len() == whole.batches_per_epoch() - offset / 7)
        );
    }
    assert_eq!(share(7, 3, 0), 0..3);
    assert_eq!(share(7, 3, 2), 5..7);
    assert_eq!(share(2, 3, 2), 2..2);
}
