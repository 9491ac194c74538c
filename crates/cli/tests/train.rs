//! End-to-end: `xception train` on a dataset it generates itself, stopping, resuming and
//! Ctrl-C, through the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;
use common::{newest_checkpoint, text, tiny_config, xception};

#[test]
fn train_generates_its_data_stops_and_resumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 2, "");
    let run_dir = dir.path().join("run");
    let run = run_dir.display().to_string();

    let first = xception(&["train", &config, "--run-dir", &run, "--stop-at-step", "3"]);
    let (out, err) = (text(&first.stdout), text(&first.stderr));
    assert!(first.status.success(), "{err}");
    assert!(err.contains("generating a synthetic dataset"), "{err}");
    assert!(err.contains("(run step 1)"), "a line per step: {err}");
    assert!(out.contains("stopped after step 3"), "{out}");
    assert!(out.contains("--resume auto"), "{out}");
    assert!(
        run_dir
            .join("checkpoints/step-000000003/state.json")
            .is_file()
    );

    let second = xception(&["train", &config, "--run-dir", &run, "--resume"]);
    let (out, err) = (text(&second.stdout), text(&second.stderr));
    assert!(second.status.success(), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert!(err.contains("val loss"), "{err}");
    assert!(out.contains("finished 2 epochs (12 steps)"), "{out}");
    assert!(run_dir.join("curves.png").is_file());
    assert!(run_dir.join("config.toml").is_file());
    let csv = std::fs::read_to_string(run_dir.join("metrics.csv")).expect("metrics.csv");
    let train_rows = csv.lines().filter(|l| l.starts_with("train,")).count();
    let val_rows = csv.lines().filter(|l| l.starts_with("val,")).count();
    assert_eq!((train_rows, val_rows), (12, 2), "{csv}");

    // A changed recipe is refused with the field named; the checkpoints are left alone.
    let changed = xception(&[
        "train",
        &config,
        "--run-dir",
        &run,
        "--resume",
        "auto",
        "--set",
        "schedule.lr=0.1",
    ]);
    let err = text(&changed.stderr);
    assert!(!changed.status.success());
    assert!(
        err.contains("schedule.lr: 0.05 -> 0.1") && err.contains("--force"),
        "{err}"
    );
    assert!(
        run_dir
            .join("checkpoints/step-000000012/state.json")
            .is_file()
    );

    // A fresh run into the same directory is refused too.
    let again = xception(&["train", &config, "--run-dir", &run]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already holds checkpoints"));
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 1000, "");
    let run_dir = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xception"))
        .args([
            "train",
            &config,
            "--run-dir",
            &run_dir.display().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start training");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        seen += &line;
        seen.push('\n');
        if line.contains("(run step 2)") {
            break;
        }
    }
    assert!(seen.contains("(run step 2)"), "{seen}");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let output = child.wait_with_output().expect("exit");
    let out = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(130),
        "{seen}{}\n{out}",
        rest.join("\n")
    );
    assert!(out.contains("continue with"), "{out}");
    let newest = newest_checkpoint(&run_dir);
    let state = std::fs::read_to_string(newest.join("state.json")).expect("state");
    assert!(state.contains("\"reason\": \"interrupt\""), "{state}");
}

#[test]
fn train_on_two_devices_and_refuse_resuming_on_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 2 images per device: the same 4-image batches, 6 steps per epoch, as on one device.
    let config = tiny_config(dir.path(), "pair", 3, 1, "");
    let run_dir = dir.path().join("run");
    let run = run_dir.display().to_string();
    let pair = xception(&[
        "train",
        &config,
        "--run-dir",
        &run,
        "--devices",
        "flex,ndarray",
        "--set",
        "data.batch_size=2",
        "--stop-at-step",
        "4",
    ]);
    let (out, err) = (text(&pair.stdout), text(&pair.stderr));
    assert!(pair.status.success(), "{err}");
    assert!(
        err.contains("flex, ndarray"),
        "the devices are named: {err}"
    );
    assert!(out.contains("stopped after step 4"), "{out}");

    // Resuming on one device would change the batch per step: refused, field named.
    let single = xception(&[
        "train",
        &config,
        "--run-dir",
        &run,
        "--resume",
        "--set",
        "data.batch_size=2",
    ]);
    let err = text(&single.stderr);
    assert!(!single.status.success());
    assert!(
        err.contains("number of devices") && err.contains("2 -> 1"),
        "{err}"
    );

    let rest = xception(&[
        "train",
        &config,
        "--run-dir",
        &run,
        "--resume",
        "--devices",
        "flex,ndarray",
        "--set",
        "data.batch_size=2",
    ]);
    let (out, err) = (text(&rest.stdout), text(&rest.stderr));
    assert!(rest.status.success(), "{err}");
    assert!(out.contains("finished 1 epochs (6 steps)"), "{out}");
}

/// The demo's first epoch (31 steps) evaluates with BatchNorm statistics that follow its
/// data: with the paper's momentum (0.99) they still held most of their initial values, and
/// the validation loss read in the thousands.
#[test]
fn the_demo_evaluates_with_meaningful_statistics_after_its_first_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/demo.toml");
    let data = format!(
        "data.root={:?}",
        dir.path().join("demo").display().to_string()
    );
    let run_dir = dir.path().join("run");
    let run = run_dir.display().to_string();
    let steps_per_epoch = "31"; // 1000 images in batches of 32
    let output = xception(&[
        "train",
        config,
        "--run-dir",
        &run,
        "--set",
        &data,
        "--stop-at-step",
        steps_per_epoch,
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics");
    let val: serde_json::Value = metrics
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|row| row["kind"] == "val")
        .expect("an evaluation after the first epoch");
    // With the paper's momentum: 10% top-1 (chance) and losses in the thousands.
    for (top1, loss) in [("top1", "loss"), ("ema_top1", "ema_loss")] {
        let (top1, loss) = (val[top1].as_f64(), val[loss].as_f64());
        assert!(top1 > Some(30.0), "validation top-1 after one epoch: {val}");
        assert!(loss < Some(10.0), "validation loss after one epoch: {val}");
    }
}

/// Built without the `mpi` feature, a process that a launcher started as one of several
/// (here `mpirun`'s environment, without mpirun) refuses to train a copy of its own.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_mpi_a_launched_process_refuses_to_train_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 1, "");
    let run_dir = dir.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_xception"))
        .args([
            "train",
            &config,
            "--run-dir",
            &run_dir.display().to_string(),
        ])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .expect("runs");
    let err = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("OMPI_COMM_WORLD_SIZE=2") && err.contains("--features mpi"),
        "{err}"
    );
    assert!(!run_dir.exists(), "nothing was written");
}
