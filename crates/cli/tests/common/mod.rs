//! Helpers shared by the end-to-end tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs the real binary.
pub fn xception(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xception"))
        .args(args)
        .output()
        .expect("the xception binary runs")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `<dir>/<name>.toml`: a tiny model on a 3-class dataset generated under
/// `<dir>/data` on first use, with `extra` TOML appended to `[training]`.
pub fn tiny_config(dir: &Path, name: &str, classes: usize, epochs: u32, extra: &str) -> String {
    let body = format!(
        r#"
[model]
num_classes = {classes}
input_size = 71
width = 0.0625
middle_blocks = 1

[data]
root = "{}"
batch_size = 4
synth = {{ classes = {classes}, train_per_class = 8, val_per_class = 2, size = 48 }}

[schedule]
lr = 0.05
decay = {{ kind = "constant" }}

[checkpoints]
every_steps = 2
keep_last = 2

[logging]
every_steps = 1

[training]
epochs = {epochs}
ema_decay = 0.9
{extra}
"#,
        dir.join(format!("data-{classes}")).display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

/// The newest complete checkpoint of a run directory.
pub fn newest_checkpoint(run_dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("state.json").is_file())
        .max()
        .expect("a checkpoint")
}
