//! `metrics.jsonl` and `metrics.csv` in the run directory: one row per optimizer step
//! (`train`) and one per evaluation (`val`). On resume, rows after the checkpoint's step are
//! dropped, so the files always describe the run that the weights came from.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One row of the metrics files. Fields that do not apply to a row's kind are empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// `train` (one optimizer step) or `val` (one evaluation).
    pub kind: String,
    /// Epochs done, fractional for training rows.
    pub epoch: f64,
    /// Optimizer steps taken.
    pub step: u64,
    /// Training samples consumed.
    pub samples: u64,
    /// Learning rate used by the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Loss: the step's mean loss (train) or the validation loss of the raw weights.
    pub loss: f64,
    /// Top-1 percent: running over the epoch (train) or over the validation set.
    pub top1: f64,
    /// Top-5 percent, likewise.
    pub top5: f64,
    /// Images per second of the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_per_sec: Option<f64>,
    /// Fraction of the step spent waiting for data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_wait: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Validation loss of the EMA weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema_loss: Option<f64>,
    /// Validation top-1 of the EMA weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema_top1: Option<f64>,
    /// Validation top-5 of the EMA weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema_top5: Option<f64>,
}

const CSV_HEADER: &str = "kind,epoch,step,samples,lr,loss,top1,top5,images_per_sec,data_wait,grad_norm,ema_loss,ema_top1,ema_top5";

impl MetricsRow {
    fn csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.kind,
            self.epoch,
            self.step,
            self.samples,
            opt(self.lr),
            self.loss,
            self.top1,
            self.top5,
            opt(self.images_per_sec),
            opt(self.data_wait),
            opt(self.grad_norm),
            opt(self.ema_loss),
            opt(self.ema_top1),
            opt(self.ema_top5),
        )
    }
}

/// The two metrics files of a run, open for appending.
pub struct MetricsLog {
    jsonl: BufWriter<File>,
    csv: BufWriter<File>,
    jsonl_path: PathBuf,
}

impl MetricsLog {
    /// Opens the files in `run_dir`, keeping the rows of earlier steps up to `keep_until_step`
    /// (all rows are dropped when it is `None`: a fresh run). Returns the log and the kept rows.
    pub fn open(
        run_dir: &Path,
        keep_until_step: Option<u64>,
    ) -> std::io::Result<(Self, Vec<MetricsRow>)> {
        let jsonl_path = run_dir.join("metrics.jsonl");
        let csv_path = run_dir.join("metrics.csv");
        let mut kept = Vec::new();
        if let Some(until) = keep_until_step
            && jsonl_path.exists()
        {
            for line in BufReader::new(File::open(&jsonl_path)?).lines() {
                // A line cut short by a crash is not a row; everything before it is.
                if let Ok(row) = serde_json::from_str::<MetricsRow>(&line?)
                    && row.step <= until
                {
                    kept.push(row);
                }
            }
        }
        // Rewrite both files from the kept rows, through a temporary file each.
        let rewrite = |path: &Path, header: Option<&str>, line: &dyn Fn(&MetricsRow) -> String| {
            let temp = path.with_extension("tmp");
            {
                let mut out = BufWriter::new(File::create(&temp)?);
                if let Some(header) = header {
                    writeln!(out, "{header}")?;
                }
                for row in &kept {
                    writeln!(out, "{}", line(row))?;
                }
                out.flush()?;
            }
            fs::rename(&temp, path)
        };
        rewrite(&jsonl_path, None, &|row| {
            serde_json::to_string(row).unwrap_or_default()
        })?;
        rewrite(&csv_path, Some(CSV_HEADER), &|row| row.csv())?;
        let append = |path: &Path| OpenOptions::new().append(true).open(path);
        Ok((
            Self {
                jsonl: BufWriter::new(append(&jsonl_path)?),
                csv: BufWriter::new(append(&csv_path)?),
                jsonl_path,
            },
            kept,
        ))
    }

    /// Appends a row to both files.
    pub fn write(&mut self, row: &MetricsRow) -> std::io::Result<()> {
        let json = serde_json::to_string(row).map_err(std::io::Error::other)?;
        writeln!(self.jsonl, "{json}")?;
        writeln!(self.csv, "{}", row.csv())
    }

    /// Pushes buffered rows to the files (before a checkpoint, at epoch ends, at exit).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.jsonl.flush()?;
        self.csv.flush()
    }

    /// The JSON-lines file.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, step: u64) -> MetricsRow {
        MetricsRow {
            kind: kind.into(),
            step,
            lr: Some(0.1),
            ..Default::default()
        }
    }

    #[test]
    fn resuming_drops_rows_after_the_checkpoint_and_a_cut_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut log, kept) = MetricsLog::open(dir.path(), None).expect("open");
            assert!(kept.is_empty());
            for step in 1..=5 {
                log.write(&row("train", step)).expect("write");
            }
            log.write(&row("val", 5)).expect("write");
            log.flush().expect("flush");
        }
        // A crash in the middle of a line.
        let jsonl = dir.path().join("metrics.jsonl");
        let mut text = fs::read_to_string(&jsonl).expect("read");
        text.push_str("{\"kind\":\"tra");
        fs::write(&jsonl, text).expect("write");

        let (mut log, kept) = MetricsLog::open(dir.path(), Some(3)).expect("reopen");
        assert_eq!(kept.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3]);
        log.write(&row("train", 4)).expect("write");
        log.flush().expect("flush");
        let csv = fs::read_to_string(dir.path().join("metrics.csv")).expect("csv");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5, "{csv}");
        assert!(lines[0].starts_with("kind,epoch,step"));
        assert!(lines[4].starts_with("train,0,4,0,0.1,"), "{}", lines[4]);
        let jsonl_rows = fs::read_to_string(&jsonl).expect("jsonl").lines().count();
        assert_eq!(jsonl_rows, 4);
    }
}
