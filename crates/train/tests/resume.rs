//! Exact resume: a run interrupted after k steps and resumed ends with the same weights, EMA,
//! optimizer state and metrics as the same run done straight through; plus the refusals
//! around resuming (changed config, occupied run directory, damaged checkpoint) and the
//! non-finite-loss stop.
//!
//! Burn's random generator is one per process, so two trainings running at once in one
//! process draw from each other's stream: the tests here take turns (`SERIAL`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use burn::tensor::{Device, TensorData};
use xception_train::checkpoint::{self, read_tensors};
use xception_train::{Outcome, ResumeFrom, RunOptions, Silent, TrainConfig, TrainError, train};

/// A tiny run on a generated dataset: 3 classes, 2 epochs of 5 steps of 2 batches of 4, with
/// dropout, weight decay, clipping, EMA and a staircase that changes within the run.
fn config(data: &Path, extra: &[&str]) -> TrainConfig {
    let text = format!(
        r#"
[model]
num_classes = 3
input_size = 71
width = 0.0625
middle_blocks = 1
dropout = 0.5

[data]
root = "{}"
batch_size = 4
workers = 2
synth = {{ classes = 3, train_per_class = 14, val_per_class = 3, size = 48, seed = 5 }}

[optimizer]
kind = "sgd"
momentum = 0.9
weight_decay = 1e-4

[schedule]
lr = 0.05
decay = {{ kind = "staircase", rate = 0.5, every = {{ samples = 24 }} }}

[training]
epochs = 2
seed = 11
grad_accumulation = 2
grad_clip_norm = 2.0
ema_decay = 0.9

[checkpoints]
every_steps = 3
keep_last = 2

[logging]
plot = true
"#,
        data.display()
    );
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TrainConfig::parse(Path::new("resume-test.toml"), &text, &overrides).expect("valid config")
}

fn options(run_dir: &Path, resume: Option<ResumeFrom>, stop_at_step: Option<u64>) -> RunOptions {
    RunOptions {
        run_dir: run_dir.to_path_buf(),
        resume,
        force: false,
        stop_at_step,
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

fn run(
    config: &TrainConfig,
    device: &Device,
    options: &RunOptions,
) -> Result<xception_train::RunSummary, TrainError> {
    run_on(config, std::slice::from_ref(device), options)
}

fn run_on(
    config: &TrainConfig,
    devices: &[Device],
    options: &RunOptions,
) -> Result<xception_train::RunSummary, TrainError> {
    let _turn = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    train(
        config,
        devices,
        options,
        &mut Silent,
        &AtomicBool::new(false),
    )
}

fn tensors(path: PathBuf) -> BTreeMap<String, TensorData> {
    read_tensors(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Metrics rows without the timing fields, which differ from run to run.
fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|line| {
            let mut row: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
            if let Some(object) = row.as_object_mut() {
                object.remove("images_per_sec");
                object.remove("data_wait");
            }
            row
        })
        .collect()
}

fn assert_same_run(straight: &Path, resumed: &Path) {
    let last = |dir: &Path| checkpoint::latest(&dir.join("checkpoints")).expect("a checkpoint");
    let (a, b) = (last(straight), last(resumed));
    assert_eq!(a.file_name(), b.file_name(), "same final step");
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let (ta, tb) = (tensors(a.join(file)), tensors(b.join(file)));
        assert_eq!(
            ta.keys().collect::<Vec<_>>(),
            tb.keys().collect::<Vec<_>>(),
            "{file}"
        );
        for (name, value) in &ta {
            assert_eq!(value, &tb[name], "{file}: {name} differs after resume");
        }
    }
    assert_eq!(metrics(straight), metrics(resumed), "metrics rows differ");
    let state = |dir: &Path| {
        let mut state = checkpoint::Checkpoint::open(dir).expect("state").state;
        state.best = state.best.map(|mut b| {
            b.checkpoint.clear();
            b
        });
        state
    };
    assert_eq!(state(&a), state(&b));
}

fn resume_matches_straight_run(devices: &[Device], extra: &[&str]) {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let config = config(&data, extra);

    let straight = root.path().join("straight");
    let summary = run_on(&config, devices, &options(&straight, None, None)).expect("straight run");
    assert_eq!(summary.outcome, Outcome::Finished);
    assert_eq!(summary.steps, 10);
    assert!(straight.join("curves.png").is_file());
    assert!(straight.join("metrics.csv").is_file());

    // Interrupted mid-epoch (step 4 of 5 in epoch 1, between the step-3 checkpoint and the
    // epoch end), then resumed from the newest checkpoint.
    let resumed = root.path().join("resumed");
    let first = run_on(&config, devices, &options(&resumed, None, Some(4))).expect("first part");
    assert_eq!(first.outcome, Outcome::Interrupted);
    assert_eq!(first.steps, 4);
    let second = run_on(
        &config,
        devices,
        &options(&resumed, Some(ResumeFrom::Auto), Some(7)),
    )
    .expect("second part");
    assert_eq!(second.outcome, Outcome::Interrupted);
    // And once more from an explicit directory, after a checkpoint at step 7 (epoch 2).
    let from = checkpoint::latest(&resumed.join("checkpoints")).expect("checkpoint");
    assert!(from.ends_with("step-000000007"), "{}", from.display());
    let third = run_on(
        &config,
        devices,
        &options(&resumed, Some(ResumeFrom::Dir(from)), None),
    )
    .expect("rest");
    assert_eq!(third.outcome, Outcome::Finished);
    assert_eq!(third.steps, 10);
    assert_same_run(&straight, &resumed);
}

#[test]
fn resume_is_exact_on_flex() {
    resume_matches_straight_run(&[Device::flex()], &[]);
}

/// The JFT recipe's optimizer: RMSprop's two state tensors (mean square, momentum) survive
/// the checkpoint bit for bit, like SGD's velocity.
#[test]
fn resume_is_exact_with_rmsprop() {
    resume_matches_straight_run(
        &[Device::flex()],
        &[r#"optimizer={ kind = "rmsprop", momentum = 0.9, weight_decay = 1e-4 }"#],
    );
}

/// Data-parallel on the two devices a CPU-only machine has (flex and ndarray, each with its
/// own thread, replica and BatchNorm statistics), 2 images each: the same steps, checkpoints
/// and exact resume as on one device.
#[test]
fn resume_is_exact_on_two_devices() {
    #[allow(deprecated)] // ndarray is deprecated upstream; we keep it for our users
    let devices = [Device::flex(), Device::ndarray()];
    resume_matches_straight_run(&devices, &["data.batch_size=2"]);
}

#[test]
fn resume_is_exact_on_ndarray() {
    #[allow(deprecated)] // ndarray is deprecated upstream; we keep it for our users
    let device = Device::ndarray();
    resume_matches_straight_run(&[device], &[]);
}

#[test]
fn resuming_refuses_a_changed_recipe_unless_forced_and_a_used_run_dir() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let run_dir = root.path().join("run");
    let device = Device::flex();
    run(
        &config(&data, &[]),
        &device,
        &options(&run_dir, None, Some(1)),
    )
    .expect("first part");

    // A fresh start must not mix with the earlier run's checkpoints.
    let error = run(&config(&data, &[]), &device, &options(&run_dir, None, None))
        .expect_err("run dir in use")
        .to_string();
    assert!(error.contains("--resume auto"), "{error}");

    let changed = config(&data, &["schedule.lr=0.1", "data.workers=1"]);
    let error = run(
        &changed,
        &device,
        &options(&run_dir, Some(ResumeFrom::Auto), Some(2)),
    )
    .expect_err("changed lr")
    .to_string();
    assert!(error.contains("schedule.lr: 0.05 -> 0.1"), "{error}");
    assert!(
        !error.contains("data.workers"),
        "workers do not change results: {error}"
    );
    assert!(error.contains("--force"), "{error}");

    let mut forced = options(&run_dir, Some(ResumeFrom::Auto), Some(2));
    forced.force = true;
    let summary = run(&changed, &device, &forced).expect("forced");
    assert_eq!(summary.steps, 2);
}

#[test]
fn a_damaged_checkpoint_is_named_and_the_others_survive() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let run_dir = root.path().join("run");
    let device = Device::flex();
    let config = config(&data, &[]);
    run(&config, &device, &options(&run_dir, None, Some(4))).expect("first part");
    let checkpoints = run_dir.join("checkpoints");
    let all = checkpoint::list(&checkpoints).expect("list");
    assert_eq!(
        all.iter().map(|(step, _)| *step).collect::<Vec<_>>(),
        [3, 4],
        "keep_last = 2"
    );

    // Truncate the newest checkpoint's weights, as a full disk might.
    let newest = &all[1].1;
    let model = newest.join("model.safetensors");
    let bytes = std::fs::read(&model).expect("read");
    std::fs::write(&model, &bytes[..bytes.len() / 2]).expect("truncate");
    let error = run(
        &config,
        &device,
        &options(&run_dir, Some(ResumeFrom::Auto), None),
    )
    .expect_err("truncated")
    .to_string();
    assert!(error.contains("model.safetensors"), "{error}");
    assert!(
        all[0].1.join("state.json").is_file(),
        "older checkpoint kept"
    );

    // A leftover temporary directory (a crash while writing) is never taken for a checkpoint.
    std::fs::create_dir_all(checkpoints.join(".tmp-step-000000009")).expect("mkdir");
    let summary = run(
        &config,
        &device,
        &options(&run_dir, Some(ResumeFrom::Dir(all[0].1.clone())), Some(5)),
    )
    .expect("resume from the older checkpoint");
    assert_eq!(summary.steps, 5);
    assert!(!checkpoints.join(".tmp-step-000000009").exists());
    // The checkpoint after the one resumed from is moved aside, not deleted, and no longer
    // what `--resume auto` finds.
    assert!(
        checkpoints
            .join("superseded-at-step-3/step-000000004/state.json")
            .is_file()
    );
    assert!(
        checkpoint::latest(&checkpoints)
            .expect("latest")
            .ends_with("step-000000005")
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let run_dir = root.path().join("run");
    let device = Device::flex();
    let config = config(
        &data,
        &[
            "schedule.lr=1e30",
            "training.grad_clip_norm=1e30",
            "schedule.decay.rate=1.0",
            "checkpoints.every_steps=1",
        ],
    );
    let error = run(&config, &device, &options(&run_dir, None, None)).expect_err("diverges");
    match &error {
        TrainError::NonFiniteLoss {
            last_checkpoint: Some(path),
            step,
            ..
        } => {
            assert!(path.join("state.json").is_file());
            assert!(path.ends_with(checkpoint::checkpoint_name(*step)));
        }
        other => panic!("expected a non-finite loss with a checkpoint, got {other}"),
    }
    assert!(
        error.to_string().contains("last good checkpoint"),
        "{error}"
    );
}
