//! End-to-end: Inception V3 (`model.arch = "inception_v3"`) through the same commands as
//! Xception: train with its auxiliary classifier and label smoothing, stop, resume exactly,
//! evaluate, predict, export to timm's names and import back.

use std::path::Path;

mod common;
use common::{newest_checkpoint, text, xception};

/// A narrow Inception V3 at 299x299 (the auxiliary classifier needs its 17x17 grid) on a
/// generated 3-class dataset.
fn config(dir: &Path, name: &str) -> String {
    let body = format!(
        r#"
[model]
arch = "inception_v3"
num_classes = 3
input_size = 299
width = 0.0625
aux_logits = true
bn_scale = true

[data]
root = "{}"
batch_size = 4
synth = {{ classes = 3, train_per_class = 4, val_per_class = 2, size = 48 }}

[schedule]
lr = 0.05
decay = {{ kind = "constant" }}

[checkpoints]
every_steps = 2
keep_last = 2

[logging]
every_steps = 1

[training]
epochs = 2
ema_decay = 0.9
label_smoothing = 0.1
"#,
        dir.join("data").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

fn run(args: &[&str]) -> String {
    let output = xception(args);
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{args:?}: {err}");
    out + &err
}

fn file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn inception_v3_trains_resumes_exactly_evaluates_and_round_trips_through_timm_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), "inception");
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let (whole_arg, split_arg) = (whole.display().to_string(), split.display().to_string());

    let out = run(&["train", &config, "--run-dir", &whole_arg]);
    assert!(out.contains("finished 2 epochs (6 steps)"), "{out}");
    run(&[
        "train",
        &config,
        "--run-dir",
        &split_arg,
        "--stop-at-step",
        "3",
    ]);
    let out = run(&[
        "train",
        &config,
        "--run-dir",
        &split_arg,
        "--resume",
        "auto",
    ]);
    assert!(out.contains("resuming from"), "{out}");
    let (a, b) = (newest_checkpoint(&whole), newest_checkpoint(&split));
    for weights in ["model.safetensors", "ema.safetensors"] {
        assert!(
            file(&a.join(weights)) == file(&b.join(weights)),
            "{weights} after a resume differs from the uninterrupted run"
        );
    }

    let data = dir.path().join("data").display().to_string();
    let eval_json = |weights: &str| -> serde_json::Value {
        let out = xception(&["eval", "--weights", weights, "--data", &data, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_str(&text(&out.stdout)).expect("JSON")
    };
    let trained = eval_json(&whole_arg);
    assert_eq!(trained["images"], 6, "{trained}");

    let exported = dir.path().join("inception.safetensors");
    let exported_arg = exported.display().to_string();
    let out = run(&[
        "export",
        &whole_arg,
        "--format",
        "safetensors",
        "--out",
        &exported_arg,
    ]);
    assert!(
        out.contains("timm.create_model('inception_v3', num_classes=3, aux_logits=True)"),
        "{out}"
    );
    let imported = dir.path().join("imported.bpk").display().to_string();
    run(&[
        "import",
        "--from",
        "timm",
        &exported_arg,
        "--out",
        &imported,
    ]);
    let again = eval_json(&imported);
    assert_eq!(again["top1"], trained["top1"], "{again} vs {trained}");
    assert_eq!(again["loss"], trained["loss"], "{again} vs {trained}");

    let image = std::fs::read_dir(dir.path().join("data/val"))
        .expect("val")
        .filter_map(Result::ok)
        .flat_map(|class| {
            std::fs::read_dir(class.path())
                .expect("class")
                .filter_map(Result::ok)
        })
        .map(|e| e.path().display().to_string())
        .next()
        .expect("an image");
    let out = run(&["predict", "--weights", &imported, &image, "--top-k", "2"]);
    let classes = ["red-disc", "green-square", "blue-triangle"];
    assert!(classes.iter().any(|c| out.contains(c)), "{out}");
}
