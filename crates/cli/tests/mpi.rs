//! Training across processes: `mpirun -np N xception train`, through the real binary built
//! with the `mpi` feature (`.ci/run` runs these after README's test command). Needs Open
//! MPI's `mpirun` on the PATH; as root it also needs `OMPI_ALLOW_RUN_AS_ROOT=1` and
//! `OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`, which these tests set.

#![cfg(feature = "mpi")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

mod common;
use common::{newest_checkpoint, text, tiny_config, xception};

/// `mpirun -np N [mpirun options] xception ARGS`, oversubscribing this machine's cores.
fn mpirun_command(ranks: usize, mpirun_options: &[&str], args: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", &ranks.to_string()])
        .args(mpirun_options)
        .arg(env!("CARGO_BIN_EXE_xception"))
        .args(args);
    command
}

fn mpirun(ranks: usize, args: &[&str]) -> Output {
    mpirun_command(ranks, &[], args)
        .output()
        .expect("mpirun runs (is Open MPI installed?)")
}

fn succeeded(output: &Output) -> String {
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{out}\n{err}");
    out + &err
}

/// The float tensors of a safetensors file, by name.
fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).expect("read weights");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The largest difference between two files' tensors, relative to each tensor's largest
/// magnitude, and where.
fn largest_difference(a: &Path, b: &Path) -> (f64, String) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same tensors"
    );
    let mut worst = (0.0, String::new());
    for (name, x) in &a {
        let y = &b[name];
        let scale = x.iter().fold(1e-12f64, |m, v| m.max(f64::from(v.abs())));
        for (p, q) in x.iter().zip(y) {
            let d = f64::from((p - q).abs()) / scale;
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    worst
}

fn checkpoint(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:09}"))
}

/// The validation rows of a run's metrics: (epoch, images-weighted top-1, top-5, loss).
fn val_rows(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|row| row["kind"] == "val")
        .collect()
}

/// Trains `config` (with `extra` arguments) single-threaded twice: one process over `ranks`
/// flex devices into `one`, and `ranks` processes of one flex device each into `many`.
/// Returns the second run's output.
fn one_and_many(ranks: usize, config: &str, extra: &[&str], one: &Path, many: &Path) -> String {
    let args = |devices: [&str; 2], run: &Path| -> Vec<String> {
        let run = run.display().to_string();
        ["train", config, devices[0], devices[1], "--run-dir", &run]
            .iter()
            .chain(extra)
            .map(|arg| arg.to_string())
            .collect()
    };
    let devices = vec!["flex"; ranks].join(",");
    succeeded(
        &Command::new(env!("CARGO_BIN_EXE_xception"))
            .env("RAYON_NUM_THREADS", "1")
            .args(args(["--devices", &devices], one))
            .output()
            .expect("runs"),
    );
    let args = args(["--device", "flex"], many);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    succeeded(
        &mpirun_command(ranks, &["-x", "RAYON_NUM_THREADS"], &args)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("mpirun"),
    )
}

/// Asserts that the model and EMA weights of two runs' checkpoints at `step` agree within
/// 1e-5 relative, and bit for bit when `exact`.
fn assert_same_weights(one: &Path, many: &Path, step: u64, exact: bool, what: &str) {
    for file in ["model.safetensors", "ema.safetensors"] {
        let (a, b) = (
            checkpoint(one, step).join(file),
            checkpoint(many, step).join(file),
        );
        if exact {
            assert!(
                tensors(&a) == tensors(&b),
                "{what}, {file}: not bit-identical"
            );
        }
        let (difference, name) = largest_difference(&a, &b);
        assert!(
            difference < 1e-5,
            "{what}, {file}: {name} differs by {difference:e}"
        );
    }
}

/// One process over N devices and N processes of one device compute the same steps: every
/// weight within 1e-5 relative; with two, whose weights (1/2) are exact, bit for bit. Both
/// sides run single-threaded kernels: with more threads, a matrix product's split (and so its
/// rounding) depends on how many replicas share the thread pool, and this tiny model, with
/// 4 images per BatchNorm, amplifies rounding.
#[test]
fn two_and_three_ranks_update_like_one_process_over_as_many_devices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 2, "");
    for ranks in [2usize, 3] {
        let one = dir.path().join(format!("one-{ranks}"));
        let many = dir.path().join(format!("many-{ranks}"));
        let log = one_and_many(ranks, &config, &["--stop-at-step", "4"], &one, &many);
        assert_eq!(
            log.matches("(run step 1)").count(),
            1,
            "rank 0 alone reports: {log}"
        );
        assert_same_weights(&one, &many, 4, ranks == 2, &format!("{ranks} ranks"));
        // Evaluation is sharded over the ranks: the same images, counted once.
        let (a, b) = (val_rows(&one), val_rows(&many));
        assert!(!a.is_empty());
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((&a["top1"], &a["top5"]), (&b["top1"], &b["top5"]));
            let (x, y) = (a["loss"].as_f64(), b["loss"].as_f64());
            assert!(
                (x.unwrap_or(0.0) - y.unwrap_or(1.0)).abs() < 1e-5,
                "{a} {b}"
            );
        }
    }

    // Accumulated steps, frozen epochs and an undecodable image (a share one image short:
    // shares and steps weighted by their images) agree too.
    let broken = tiny_config(dir.path(), "broken", 4, 2, "");
    let data = dir.path().join("data-4").display().to_string();
    succeeded(&xception(&[
        "data",
        "synth",
        "--out",
        &data,
        "--classes",
        "4",
        "--train-per-class",
        "8",
        "--val-per-class",
        "2",
        "--size",
        "48",
    ]));
    std::fs::write(
        dir.path().join("data-4/train/001-green-square/00002.jpg"),
        b"not a JPEG",
    )
    .expect("break a file");
    // (what, config, option, step compared, bit-identical). Where the two round
    // differently (accumulation adds each rank's batches before the ranks, one process the
    // devices first; a share of 3 images of 7 is weighted 3/7), this tiny model turns a
    // rounding difference into a percent within a few steps (one process alone does the same
    // with another thread count), so those cases compare early.
    let cases = [
        (
            "accumulated",
            &config,
            "training.grad_accumulation=2",
            2,
            false,
        ),
        (
            "frozen first epoch",
            &config,
            "training.freeze_epochs=1",
            4,
            true,
        ),
        ("a bad file", &broken, "training.seed=0", 1, false),
    ];
    for (what, config, option, step, exact) in cases {
        let one = dir.path().join(format!("one {what}"));
        let many = dir.path().join(format!("many {what}"));
        let stop = step.to_string();
        let extra = ["--set", option, "--stop-at-step", &stop];
        one_and_many(2, config, &extra, &one, &many);
        assert_same_weights(&one, &many, step, exact, what);
    }

    // The control: one device with the same global batch normalises with the statistics of
    // all 8 images, not of 4, and ends elsewhere.
    let single = dir.path().join("single");
    succeeded(&xception(&[
        "train",
        &config,
        "--device",
        "flex",
        "--set",
        "data.batch_size=8",
        "--stop-at-step",
        "4",
        "--run-dir",
        &single.display().to_string(),
    ]));
    let (difference, _) = largest_difference(
        &checkpoint(&single, 4).join("model.safetensors"),
        &checkpoint(&dir.path().join("many-2"), 4).join("model.safetensors"),
    );
    assert!(difference > 1e-3, "the control differs: {difference:e}");
}

#[test]
fn a_stopped_and_resumed_run_ends_bit_identical_and_another_count_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 2, "");
    let whole = dir.path().join("whole");
    let parts = dir.path().join("parts");
    let run = |run_dir: &Path, extra: &[&str]| {
        let run_dir = run_dir.display().to_string();
        let args = [
            &["train", &config, "--device", "flex", "--run-dir", &run_dir][..],
            extra,
        ]
        .concat();
        mpirun(2, &args)
    };
    succeeded(&run(&whole, &[]));
    // Step 2 of 3 in the first epoch: mid-epoch.
    let log = succeeded(&run(&parts, &["--stop-at-step", "2"]));
    assert!(log.contains("stopped after step 2"), "{log}");

    let other = mpirun_command(
        3,
        &[],
        &[
            "train",
            &config,
            "--device",
            "flex",
            "--run-dir",
            &parts.display().to_string(),
            "--resume",
            "auto",
        ],
    )
    .output()
    .expect("mpirun");
    let err = text(&other.stderr);
    assert!(!other.status.success());
    assert!(err.contains("`ranks`") && err.contains("2 -> 3"), "{err}");
    assert_eq!(err.matches("the config differs").count(), 1, "{err}");

    let log = succeeded(&run(&parts, &["--resume", "auto"]));
    assert!(log.contains("finished 2 epochs (6 steps)"), "{log}");
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let a = tensors(&checkpoint(&whole, 6).join(file));
        let b = tensors(&checkpoint(&parts, 6).join(file));
        assert!(a == b, "{file} differs after the resume");
    }
}

#[test]
fn ranks_that_disagree_on_the_config_refuse_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 1, "");
    let run_dir = dir.path().join("run").display().to_string();
    let common = ["train", &config, "--device", "flex", "--run-dir", &run_dir];
    let mut command = mpirun_command(1, &[], &common);
    command
        .args(["--set", "schedule.lr=0.1", ":", "-np", "1"])
        .arg(env!("CARGO_BIN_EXE_xception"))
        .args(common);
    let output = command.output().expect("mpirun");
    let err = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("schedule.lr") && err.contains("rank 1"),
        "the field and the rank are named: {err}"
    );
    assert!(!dir.path().join("run/checkpoints").exists());
}

#[test]
fn a_non_finite_step_stops_every_rank_at_the_same_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 2, "");
    let run_dir = dir.path().join("run").display().to_string();
    let output = mpirun(
        2,
        &[
            "train",
            &config,
            "--device",
            "flex",
            "--run-dir",
            &run_dir,
            "--set",
            "schedule.lr=1e30",
        ],
    );
    let err = text(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(err.matches("the loss became").count(), 1, "{err}");
}

/// `child`'s stderr, line by line, read on a thread to its end, so the job never writes
/// into a closed pipe.
fn follow_stderr(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    received
}

/// Reads `lines` until one contains `marker`; returns what it read.
fn read_until(lines: &Receiver<String>, marker: &str) -> String {
    let mut seen = String::new();
    for line in lines.iter() {
        seen += &line;
        seen.push('\n');
        if line.contains(marker) {
            return seen;
        }
    }
    panic!("the job ended before {marker:?}: {seen}");
}

/// Starts `mpirun -np 2 [options] xception train ARGS` (a long run), with its stderr
/// followed, and waits until it prints `marker`.
fn start_job(mpirun_options: &[&str], args: &[&str], marker: &str) -> (Child, Receiver<String>) {
    let mut job = mpirun_command(2, mpirun_options, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    let lines = follow_stderr(&mut job);
    read_until(&lines, marker);
    (job, lines)
}

/// Sends `signal` to `pid`.
fn signal(signal: &str, pid: u32) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// Waits for `child` at most `limit`.
fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "the job still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_9_of_one_rank_ends_the_job_and_the_resume_completes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 1000, "");
    let run_dir = dir.path().join("run").display().to_string();
    let args = ["train", &config, "--device", "flex", "--run-dir", &run_dir];
    let (mut job, _lines) = start_job(&[], &args, "(run step 5)");
    signal(
        "-9",
        rank_processes(&job).into_iter().max().expect("a rank"),
    );
    let status = wait_at_most(&mut job, Duration::from_secs(60));
    assert!(!status.success());

    let output = mpirun(
        2,
        &[&args[..], &["--resume", "auto", "--stop-at-step", "12"]].concat(),
    );
    let log = succeeded(&output);
    assert!(log.contains("stopped after step 12"), "{log}");
}

/// The rank processes of a running `mpirun` job (its children).
fn rank_processes(job: &Child) -> Vec<u32> {
    let children = Command::new("pgrep")
        .args(["-P", &job.id().to_string()])
        .output()
        .expect("pgrep");
    text(&children.stdout)
        .lines()
        .filter_map(|pid| pid.trim().parse::<u32>().ok())
        .collect()
}

#[test]
fn a_hung_rank_ends_the_job_after_the_collective_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 1000, "");
    let run_dir = dir.path().join("run").display().to_string();
    let args = ["train", &config, "--device", "flex", "--run-dir", &run_dir];
    let args = [&args[..], &["--collective-timeout", "3"]].concat();
    let (mut job, received) = start_job(&[], &args, "(run step 3)");
    signal(
        "-STOP",
        rank_processes(&job).into_iter().max().expect("a rank"),
    );
    let status = wait_at_most(&mut job, Duration::from_secs(60));
    assert!(!status.success());
    let rest: Vec<String> = received.iter().collect();
    let err = rest.join("\n");
    assert!(
        err.contains("waited more than 3 s") && err.contains("rank ") && err.contains(" on "),
        "the waiting rank names itself: {err}"
    );
}

#[test]
fn ctrl_c_on_mpirun_writes_an_interrupt_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = tiny_config(dir.path(), "tiny", 3, 1000, "");
    let run_dir = dir.path().join("run");
    let run = run_dir.display().to_string();
    let (mut job, _lines) = start_job(
        // mpirun sends SIGTERM this many seconds after Ctrl-C, and SIGKILL as many later.
        &["--mca", "odls_base_sigkill_timeout", "3"],
        &["train", &config, "--device", "flex", "--run-dir", &run],
        "(run step 3)",
    );
    signal("-INT", job.id());
    let status = wait_at_most(&mut job, Duration::from_secs(60));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut job.stdout.take().expect("stdout"), &mut out)
        .expect("stdout");
    // Each rank exits with 130, as a Ctrl-C'd run does; mpirun reports that as its 1.
    assert!(!status.success(), "{out}");
    assert!(out.contains("stopped after step"), "{out}");
    let newest = newest_checkpoint(&run_dir);
    let state = std::fs::read_to_string(newest.join("state.json")).expect("state");
    // Mid-epoch the stop writes its own checkpoint; at an epoch's end the epoch's is the one.
    assert!(
        state.contains("\"reason\": \"interrupt\"") || state.contains("\"reason\": \"epoch\""),
        "{state}"
    );
}
