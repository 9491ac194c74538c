//! End-to-end: export, import, eval, predict and fine-tuning through the real binary.

use std::path::{Path, PathBuf};

mod common;
use common::{text, tiny_config, xception};

fn json(args: &[&str]) -> serde_json::Value {
    let output = xception(args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        text(&output.stderr)
    );
    serde_json::from_str(&text(&output.stdout)).expect("JSON")
}

/// Trains the tiny model for one epoch and returns (run dir, its final checkpoint, data dir).
fn trained(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let config = tiny_config(dir, "tiny", 3, 1, "");
    let run = dir.join("run");
    let output = xception(&["train", &config, "--run-dir", &run.display().to_string()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let checkpoint = run.join("checkpoints/step-000000006");
    assert!(checkpoint.join("classes.json").is_file());
    (run, checkpoint, dir.join("data-3"))
}

fn eval(weights: &Path, data: &Path, extra: &[&str]) -> serde_json::Value {
    let (w, d) = (weights.display().to_string(), data.display().to_string());
    let mut args = vec!["eval", "--weights", &w, "--data", &d, "--json"];
    args.extend_from_slice(extra);
    json(&args)
}

#[test]
fn exports_and_imports_keep_the_weights_and_the_class_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, checkpoint, data) = trained(dir.path());
    let ckpt = checkpoint.display().to_string();
    let reference = eval(&checkpoint, &data, &[]);
    assert_eq!(reference["images"], 6);

    let safetensors = dir.path().join("model.safetensors");
    let summary = json(&[
        "export",
        &ckpt,
        "--format",
        "safetensors",
        "--out",
        &safetensors.display().to_string(),
        "--json",
    ]);
    assert_eq!(summary["timm_loadable"], false, "a narrow variant");
    assert!(
        summary["metadata"]["xception.classes"]
            .as_str()
            .expect("classes")
            .contains("disc")
    );
    let bpk = dir.path().join("model.bpk");
    json(&[
        "export",
        &ckpt,
        "--format",
        "burnpack",
        "--out",
        &bpk.display().to_string(),
        "--json",
    ]);
    let imported = dir.path().join("imported.bpk");
    json(&[
        "import",
        "--from",
        "timm",
        &safetensors.display().to_string(),
        "--out",
        &imported.display().to_string(),
        "--json",
    ]);

    // The same weights give the same evaluation whatever file carries them.
    for weights in [&safetensors, &bpk, &imported] {
        let scores = eval(weights, &data, &[]);
        for field in ["images", "top1", "top5"] {
            assert_eq!(
                scores[field],
                reference[field],
                "{field} of {}",
                weights.display()
            );
        }
        let (a, b) = (
            scores["loss"].as_f64().expect("loss"),
            reference["loss"].as_f64().expect("loss"),
        );
        assert!(
            (a - b).abs() < 1e-5,
            "{}: loss {a} vs {b}",
            weights.display()
        );
    }

    // Predictions name the folder classes, with probabilities and (in JSON) the logits.
    let image = std::fs::read_dir(data.join("val/001-green-square"))
        .expect("val folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .expect("an image");
    let predictions = json(&[
        "predict",
        "--weights",
        &bpk.display().to_string(),
        &image.display().to_string(),
        "--top-k",
        "2",
        "--json",
    ]);
    let top = predictions[0]["top"].as_array().expect("top");
    assert_eq!(top.len(), 2);
    let known = ["000-red-disc", "001-green-square", "002-blue-triangle"];
    assert!(
        known.contains(&top[0]["id"].as_str().expect("id")),
        "{top:?}"
    );
    assert_eq!(
        predictions[0]["logits"].as_array().expect("logits").len(),
        3
    );
    let plain = xception(&["predict", "--weights", &ckpt, &image.display().to_string()]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert!(text(&plain.stdout).contains('%'));

    // EMA weights are exported on request.
    let ema = dir.path().join("ema.bpk");
    json(&[
        "export",
        &ckpt,
        "--ema",
        "--format",
        "burnpack",
        "--out",
        &ema.display().to_string(),
        "--json",
    ]);
    assert!(eval(&checkpoint, &data, &["--ema"])["top1"] == eval(&ema, &data, &[])["top1"]);
}

#[test]
fn wrong_inputs_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, checkpoint, data) = trained(dir.path());
    let safetensors = dir.path().join("model.safetensors");
    json(&[
        "export",
        &checkpoint.display().to_string(),
        "--out",
        &safetensors.display().to_string(),
        "--json",
    ]);

    let wrong_names = xception(&[
        "import",
        "--from",
        "keras",
        &safetensors.display().to_string(),
        "--out",
        "x.bpk",
    ]);
    assert!(!wrong_names.status.success());
    assert!(
        text(&wrong_names.stderr).contains("timm names"),
        "{}",
        text(&wrong_names.stderr)
    );

    let h5 = dir.path().join("weights.h5");
    std::fs::write(&h5, b"\x89HDF\r\n\x1a\n rest of an HDF5 file").expect("write");
    let keras = xception(&[
        "import",
        "--from",
        "keras",
        &h5.display().to_string(),
        "--out",
        "x.bpk",
    ]);
    assert!(
        text(&keras.stderr).contains("scripts/keras_h5_to_safetensors.py"),
        "{}",
        text(&keras.stderr)
    );

    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(&safetensors).expect("read");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let output = xception(&[
        "eval",
        "--weights",
        &truncated.display().to_string(),
        "--data",
        &data.display().to_string(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("truncated.safetensors"),
        "{}",
        text(&output.stderr)
    );

    let no_ema = xception(&[
        "export",
        "--ema",
        "--out",
        "x.bpk",
        &dir.path().display().to_string(),
    ]);
    assert!(!no_ema.status.success());
}

#[test]
fn fine_tuning_starts_from_a_run_with_a_new_classifier() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, _, _) = trained(dir.path());
    let config = tiny_config(
        dir.path(),
        "finetune",
        2,
        2,
        &format!("init_from = \"{}\"\nfreeze_epochs = 1", run.display()),
    );
    let output = xception(&[
        "train",
        &config,
        "--run-dir",
        &dir.path().join("finetune-run").display().to_string(),
    ]);
    let err = text(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("the classifier is re-initialised (3 -> 2 classes)"),
        "{err}"
    );
    assert!(err.contains("initialised from"), "{err}");

    // An architecture that does not match is refused, naming the field.
    let config = tiny_config(
        dir.path(),
        "mismatch",
        2,
        1,
        &format!("init_from = \"{}\"", run.display()),
    );
    let text_config = std::fs::read_to_string(&config)
        .expect("read")
        .replace("middle_blocks = 1", "middle_blocks = 2");
    std::fs::write(&config, text_config).expect("write");
    let output = xception(&[
        "train",
        &config,
        "--run-dir",
        &dir.path().join("mismatch-run").display().to_string(),
    ]);
    let err = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("training.init_from") && err.contains("middle_blocks"),
        "{err}"
    );
}

/// Copies the dataset at `from` to `to` with every class folder renamed.
fn renamed_copy(from: &Path, to: &Path) {
    for split in ["train", "val"] {
        for class in std::fs::read_dir(from.join(split)).expect("split") {
            let class = class.expect("entry").path();
            let name = class.file_name().expect("name").to_string_lossy();
            let target = to.join(split).join(format!("other-{name}"));
            std::fs::create_dir_all(&target).expect("mkdir");
            for file in std::fs::read_dir(&class).expect("class") {
                let file = file.expect("entry").path();
                std::fs::copy(&file, target.join(file.file_name().expect("name"))).expect("copy");
            }
        }
    }
}

#[test]
fn eval_and_predict_answer_wrong_input_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, _, data) = trained(dir.path());

    // A run directory stands for its best checkpoint.
    let scores = eval(&run, &data, &[]);
    let source = scores["weights"].as_str().expect("weights");
    assert!(source.contains("the run's best"), "{source}");

    // Other classes under the same count are refused, naming the first difference.
    let other = dir.path().join("other");
    renamed_copy(&data, &other);
    let (r, o) = (run.display().to_string(), other.display().to_string());
    let refused = xception(&["eval", "--weights", &r, "--data", &o]);
    let err = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("class 0 is `other-") && err.contains("--by-index"),
        "{err}"
    );
    let by_index = eval(&run, &other, &["--by-index"]);
    assert_eq!(by_index["images"], scores["images"]);

    // predict reports an unreadable file and goes on with the others.
    let good = std::fs::read_dir(data.join("val"))
        .expect("val")
        .filter_map(|class| std::fs::read_dir(class.ok()?.path()).ok()?.next()?.ok())
        .map(|file| file.path().display().to_string())
        .next()
        .expect("an image");
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"not an image").expect("write");
    let corrupt = corrupt.display().to_string();
    let output = xception(&["predict", "--weights", &r, &good, &corrupt, &good]);
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "{out}");
    assert_eq!(out.matches(good.as_str()).count(), 2, "{out}");
    assert!(
        err.contains("corrupt.jpg") && err.contains("1 of 3 images"),
        "{err}"
    );
}
