//! End-to-end tests: the real `xception` binary.

use std::path::Path;
use std::process::{Command, Output};

fn xception(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xception"))
        .args(args)
        .output()
        .expect("the xception binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_str(&stdout(output)).expect("valid JSON")
}

#[test]
fn info_json_gives_the_papers_exact_counts() {
    let summary = json(&xception(&["info", "--json"]));
    assert_eq!(summary["trainable_params"], 22_855_952);
    assert_eq!(summary["non_trainable_params"], 54_528);
    assert_eq!(summary["total_params"], 22_910_480);
    assert_eq!(summary["macs"], 8_357_403_496u64);
    let layers = summary["layers"].as_array().expect("layer rows");
    let first = &layers[0];
    assert_eq!(first["name"], "block1_conv1");
    assert_eq!(first["output"], serde_json::json!([32, 149, 149]));
    let params: u64 = layers
        .iter()
        .map(|l| l["params"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(params, 22_855_952);
    assert_eq!(summary["blocks"].as_array().map(Vec::len), Some(14));
}

#[test]
fn info_prints_a_table_with_the_totals() {
    let output = xception(&["info"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("22,855,952"), "{text}");
    assert!(text.contains("block13_pool"), "{text}");
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("model.toml");
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

#[test]
fn info_reads_the_model_table_of_a_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        dir.path(),
        "[model]\nnum_classes = 10\ninput_size = 96\nwidth = 0.25\nmiddle_blocks = 2\n\n\
         [training]\nepochs = 3\n",
    );
    let summary = json(&xception(&["info", &path, "--json", "--device", "ndarray"]));
    assert_eq!(summary["config"]["num_classes"], 10);
    let blocks = summary["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 8);
    assert_eq!(
        blocks.last().map(|b| b["output"].clone()),
        Some(serde_json::json!([512, 3, 3]))
    );
}

#[test]
fn a_typo_in_the_config_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "[model]\nnum_clases = 10\n");
    let output = xception(&["info", &path]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(&path), "{message}");
    assert!(message.contains("num_clases"), "{message}");
}

#[test]
fn an_invalid_value_names_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "[model]\ninput_size = 32\n");
    let output = xception(&["info", &path]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("model.input_size"), "{message}");
    assert!(message.contains(&path), "{message}");
}

#[test]
fn a_missing_config_is_a_clear_error() {
    let output = xception(&["info", "no/such/config.toml"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("no/such/config.toml"));
}

#[test]
fn an_unknown_device_lists_the_choices() {
    let output = xception(&["info", "--device", "tpu"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    for device in ["flex", "ndarray", "wgpu"] {
        assert!(message.contains(device), "{message}");
    }
}

fn synth(out: &Path) {
    let out = out.display().to_string();
    let args = [
        "data",
        "synth",
        "--out",
        &out,
        "--classes",
        "3",
        "--train-per-class",
        "4",
        "--val-per-class",
        "2",
        "--size",
        "32",
    ];
    let output = xception(&args);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn data_synth_writes_a_dataset_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("synth");
    synth(&root);
    assert!(root.join("train/002-blue-triangle/00003.jpg").is_file());
    assert!(root.join("val/000-red-disc/00001.jpg").is_file());
    let root_arg = root.display().to_string();
    let again = xception(&["data", "synth", "--out", &root_arg]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn data_check_reports_counts_sizes_and_bad_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("synth");
    synth(&root);
    let bad = root.join("train/001-green-square/00002.jpg");
    std::fs::write(&bad, b"").expect("break a file");
    let root_arg = root.display().to_string();

    let reports = json(&xception(&["data", "check", &root_arg, "--json"]));
    let reports = reports.as_array().expect("one report per split");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["split"], "train");
    assert_eq!(reports[0]["files"], 12);
    assert_eq!(reports[0]["readable"], 11);
    assert_eq!(reports[1]["readable"], 6);
    let bad_files = reports[0]["bad_files"].as_array().expect("bad files");
    assert_eq!(bad_files.len(), 1);
    assert_eq!(bad_files[0]["reason"], "empty file");

    let output = xception(&["data", "check", &root_arg, "--split", "train"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("00002.jpg: empty file"), "{text}");
    assert!(text.contains("11 readable"), "{text}");
}

#[test]
fn data_check_fails_on_an_unusable_dataset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let class = dir.path().join("train/a");
    std::fs::create_dir_all(&class).expect("mkdir");
    std::fs::write(class.join("x.jpg"), b"not a jpeg").expect("write");
    let root = dir.path().display().to_string();
    let output = xception(&["data", "check", &root]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no readable image"),
        "{}",
        stderr(&output)
    );

    let missing = xception(&["data", "check", "no/such/dataset"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no/such/dataset"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn bench_measures_the_data_pipeline_and_writes_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bench.json");
    let photos = dir.path().join("photos");
    let out_arg = out.display().to_string();
    let photos_arg = photos.display().to_string();
    let output = xception(&[
        "bench",
        "--photos",
        "6",
        "--photos-out",
        &photos_arg,
        "--threads",
        "1,2",
        "--size",
        "64",
        "--repeats",
        "1",
        "--out",
        &out_arg,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("written")).expect("JSON");
    assert_eq!(report["files"], 6);
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r["images_per_second"].as_f64() > Some(0.0))
    );
    assert_eq!(std::fs::read_dir(&photos).expect("photos kept").count(), 6);
}

#[test]
fn bench_times_inference_on_a_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("inference.json");
    let out_arg = out.display().to_string();
    let output = xception(&[
        "bench",
        "--target",
        "inference",
        "--device",
        "flex",
        "--batch",
        "1",
        "--size",
        "71",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--out",
        &out_arg,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("written")).expect("JSON");
    assert_eq!(result["device"], "flex");
    assert_eq!(result["size"], 71);
    assert_eq!(result["seconds"].as_array().map(Vec::len), Some(2));
    assert!(result["images_per_second"].as_f64() > Some(0.0));
}

#[test]
fn bench_times_training_steps_and_reports_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("train.json");
    let out_arg = out.display().to_string();
    let output = xception(&[
        "bench",
        "--target",
        "train",
        "--batch",
        "2",
        "--size",
        "71",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--out",
        &out_arg,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("xception training step, flex at 71x71, batch 2"));
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("written")).expect("JSON");
    assert_eq!(result["seconds"].as_array().expect("timings").len(), 2);
    assert!(result["images_per_second"].as_f64().expect("rate") > 0.0);
    assert!(result["peak_rss_mib"].as_f64().expect("memory") > 10.0);
}
