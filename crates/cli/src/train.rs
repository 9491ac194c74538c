//! `xception train CONFIG`: loads the config, sets up Ctrl-C handling, shows progress (a bar
//! on a terminal, plain lines otherwise) and calls the training loop.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use xception_train::{
    EvalReport, Outcome, Reporter, ResumeFrom, RunOptions, RunStart, RunSummary, Silent,
    StepReport, TrainConfig,
};

use crate::device::{DeviceChoice, device_named};
use crate::processes::{self, Processes};

/// What `xception train` was asked to do.
pub struct TrainArgs {
    pub config: PathBuf,
    pub device: Option<DeviceChoice>,
    pub devices: Vec<String>,
    pub resume: Option<String>,
    pub overrides: Vec<String>,
    pub run_dir: Option<PathBuf>,
    pub force: bool,
    pub stop_at_step: Option<u64>,
    /// Under mpirun/srun, how long a process waits for the others at an exchange.
    pub collective_timeout: Duration,
}

/// Runs a training config, alone or as one process of an MPI job; returns whether the run
/// was interrupted by a signal.
pub fn run(args: TrainArgs) -> Result<bool> {
    let processes = Processes::join(args.collective_timeout)?;
    match train(&args, &processes) {
        Ok(interrupted) => Ok(interrupted),
        Err(error) => {
            let shared = processes::shared(&error);
            Err(processes.fail(error, shared))
        }
    }
}

fn train(args: &TrainArgs, processes: &Processes) -> Result<bool> {
    let mut overrides = args.overrides.clone();
    if let Some(device) = args.device {
        overrides.push(format!("training.device=\"{device}\""));
        overrides.push("training.devices=[]".to_string());
    }
    if !args.devices.is_empty() {
        let quoted: Vec<String> = args.devices.iter().map(|d| format!("{d:?}")).collect();
        overrides.push(format!("training.devices=[{}]", quoted.join(", ")));
    }
    let config = TrainConfig::load(&args.config, &overrides)?;
    let devices = config
        .device_names()
        .iter()
        .map(|name| device_named(name).map_err(|e| anyhow!("training.device: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| default_run_dir(&args.config));
    let resume = args.resume.as_deref().map(|value| {
        if value == "auto" {
            ResumeFrom::Auto
        } else {
            ResumeFrom::Dir(PathBuf::from(value))
        }
    });

    // The first Ctrl-C (or SIGTERM, or SIGUSR1, which mpirun forwards to every process) asks
    // for a checkpoint and a clean exit; a second one, while the checkpoint is being
    // written, ends the process at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .context("cannot install the Ctrl-C handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the Ctrl-C handler")?;
    }

    let options = RunOptions {
        run_dir: run_dir.clone(),
        resume,
        force: args.force,
        stop_at_step: args.stop_at_step,
    };
    let world = processes.collective();
    let summary = if processes.leads() {
        let mut reporter = ConsoleReporter::new(config.logging.every_steps);
        let summary =
            xception_train::train_with(&config, &devices, world, &options, &mut reporter, &stop)?;
        reporter.finish();
        print_summary(&summary, args, &run_dir);
        summary
    } else {
        xception_train::train_with(&config, &devices, world, &options, &mut Silent, &stop)?
    };
    Ok(summary.outcome == Outcome::Interrupted && stop.load(Ordering::SeqCst))
}

/// What a finished or interrupted run did, and how to continue it.
fn print_summary(summary: &RunSummary, args: &TrainArgs, run_dir: &Path) {
    let checkpoint = summary
        .last_checkpoint
        .as_ref()
        .map_or("(none)".to_string(), |p| p.display().to_string());
    match summary.outcome {
        Outcome::Finished => {
            println!(
                "finished {} epochs ({} steps) in {} this session",
                summary.epochs_done,
                summary.steps,
                duration(summary.seconds)
            );
        }
        Outcome::Interrupted => {
            println!(
                "stopped after step {} (epoch {}); checkpoint {checkpoint}",
                summary.steps,
                summary.epochs_done + 1
            );
            println!(
                "continue with: xception train {} --run-dir {} --resume auto",
                args.config.display(),
                run_dir.display()
            );
        }
    }
    if let Some(eval) = &summary.last_eval {
        println!("last evaluation: {}", eval_line(eval));
    }
    if let Some(best) = &summary.best {
        println!(
            "best top-1 {:.2}% after epoch {} ({})",
            best.top1, best.epochs_done, best.checkpoint
        );
    }
    println!(
        "run directory {}: metrics.csv, metrics.jsonl, curves.png, checkpoints/ (last: {checkpoint})",
        run_dir.display()
    );
}

/// `runs/<config file stem>`.
fn default_run_dir(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "run".to_string(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(stem)
}

fn duration(seconds: f64) -> String {
    let total = seconds.round() as u64;
    if total >= 3600 {
        format!("{}h{:02}m", total / 3600, total % 3600 / 60)
    } else if total >= 60 {
        format!("{}m{:02}s", total / 60, total % 60)
    } else {
        format!("{seconds:.1}s")
    }
}

fn eval_line(eval: &EvalReport) -> String {
    let mut line = format!(
        "epoch {} val loss {:.4} top-1 {:.2}% top-5 {:.2}%",
        eval.epochs_done, eval.raw.loss, eval.raw.top1, eval.raw.top5
    );
    if let Some(ema) = eval.ema {
        line += &format!(
            " | EMA loss {:.4} top-1 {:.2}% top-5 {:.2}%",
            ema.loss, ema.top1, ema.top5
        );
    }
    line + &format!(" ({} images, {:.1}s)", eval.raw.images, eval.seconds)
}

/// A progress bar with ETA on a terminal; a line every `every` steps otherwise.
struct ConsoleReporter {
    terminal: bool,
    every: u64,
    bar: Option<ProgressBar>,
    start: Option<RunStart>,
    first_step_done: Option<Instant>,
    steps_this_session: u64,
}

impl ConsoleReporter {
    fn new(every: u64) -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            every: every.max(1),
            bar: None,
            start: None,
            first_step_done: None,
            steps_this_session: 0,
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Seconds left, from the mean step time since this session's first step (which pays
    /// for compilation and autotuning on GPUs, so it is left out).
    fn eta(&self, step: u64) -> Option<f64> {
        let start = self.start.as_ref()?;
        let first = self.first_step_done?;
        let steps = self.steps_this_session.checked_sub(1).filter(|&s| s > 0)?;
        let per_step = first.elapsed().as_secs_f64() / steps as f64;
        Some(per_step * start.total_steps.saturating_sub(step) as f64)
    }
}

impl Reporter for ConsoleReporter {
    fn started(&mut self, start: &RunStart) {
        let from = match &start.resumed_from {
            Some(dir) => format!(", resuming from {}", dir.display()),
            None => String::new(),
        };
        let processes = match start.processes {
            1 => String::new(),
            n => format!(" in each of {n} processes"),
        };
        self.say(&format!(
            "training on {}{processes}: {} images in {} classes ({} for validation), {} epochs of {} steps of {} images{from}",
            start.device,
            start.train_images,
            start.classes,
            start.val_images,
            start.epochs,
            start.steps_per_epoch,
            start.images_per_step,
        ));
        self.say(&format!("run directory {}", start.run_dir.display()));
        if self.terminal {
            let bar = ProgressBar::with_draw_target(
                Some(start.total_steps),
                ProgressDrawTarget::stderr(),
            );
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} steps {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(start.start_step);
            bar.reset_eta();
            self.bar = Some(bar);
        }
        self.start = Some(start.clone());
    }

    fn step(&mut self, report: &StepReport) {
        self.steps_this_session += 1;
        if self.first_step_done.is_none() {
            self.first_step_done = Some(Instant::now());
        }
        let epochs = self.start.as_ref().map_or(0, |s| s.epochs);
        let status = format!(
            "loss {:.4} (epoch mean {:.4}) top-1 {:.1}% top-5 {:.1}% lr {:.5} {:.1} img/s data wait {:.0}%",
            report.loss,
            report.running_loss,
            report.running_top1,
            report.running_top5,
            report.lr,
            report.images_per_sec,
            100.0 * report.data_wait
        );
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("epoch {}/{epochs}", report.epoch + 1));
            bar.set_message(status);
            bar.set_position(report.step);
        } else if report.step.is_multiple_of(self.every)
            || report.step_in_epoch == report.steps_per_epoch
        {
            let eta = self
                .eta(report.step)
                .map_or(String::new(), |s| format!(" ETA {}", duration(s)));
            eprintln!(
                "epoch {}/{epochs} step {}/{} (run step {}) {status}{eta}",
                report.epoch + 1,
                report.step_in_epoch,
                report.steps_per_epoch,
                report.step
            );
        }
    }

    fn evaluating(&mut self, _batches: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message("evaluating...");
        }
    }

    fn evaluated(&mut self, report: &EvalReport) {
        self.say(&eval_line(report));
    }

    fn note(&mut self, message: &str) {
        self.say(message);
    }
}
