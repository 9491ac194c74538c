//! The `xception` command line: a thin layer that parses arguments and calls the library
//! crates.

mod bench;
mod data;
mod device;
mod info;
mod processes;
mod train;
mod weights;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use xception_data::synth::SynthOptions;
use xception_data::{Layout, Split};
use xception_model::interop::Format;
use xception_train::weights::ExportFormat;

use crate::device::DeviceChoice;

/// Train, evaluate, export and inspect the Xception image classifier on Burn.
#[derive(Parser)]
#[command(name = "xception", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train (or continue training) the model a config file describes.
    Train {
        /// The training config (TOML), e.g. configs/demo.toml.
        config: PathBuf,
        /// The device (overrides training.device): flex, ndarray or wgpu.
        #[arg(long, value_enum, conflicts_with = "devices")]
        device: Option<DeviceChoice>,
        /// Train data-parallel on several devices (overrides training.devices), e.g.
        /// --devices wgpu:0,wgpu:1; each takes data.batch_size images of every batch.
        #[arg(long, value_delimiter = ',', value_name = "D1,D2,...")]
        devices: Vec<String>,
        /// Continue from a checkpoint directory, or `auto` for the run's newest one.
        #[arg(long, value_name = "CKPT_DIR|auto", num_args = 0..=1, default_missing_value = "auto")]
        resume: Option<String>,
        /// Override a config field, e.g. --set schedule.lr=0.01 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Where checkpoints and metrics go (default: runs/<config name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Resume even when the config's recipe differs from the checkpoint's.
        #[arg(long)]
        force: bool,
        /// Stop with a checkpoint once this many optimizer steps are done (as Ctrl-C does).
        #[arg(long, value_name = "STEPS")]
        stop_at_step: Option<u64>,
        /// Under mpirun/srun: how long one process waits for the others at an exchange
        /// before it ends the whole job (a hung or unreachable process).
        #[arg(long, value_name = "SECONDS", default_value_t = 900)]
        collective_timeout: u64,
    },
    /// Write a checkpoint's weights as timm-named safetensors or as a Burnpack file.
    Export {
        /// The checkpoint directory (runs/NAME/checkpoints/step-*), or any weights file.
        checkpoint: PathBuf,
        /// safetensors (timm's names: legacy_xception or inception_v3, PyTorch layouts) or burnpack.
        #[arg(long, value_enum, default_value_t = ExportFormatArg::Safetensors)]
        format: ExportFormatArg,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Export the EMA (Polyak-averaged) weights.
        #[arg(long)]
        ema: bool,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Turn timm or Keras weights (safetensors or PyTorch .pth) into a Burnpack file.
    Import {
        /// Whose names and layouts the file has.
        #[arg(long = "from", value_enum)]
        from: ImportFrom,
        /// The weights file (Keras .h5: convert with scripts/keras_h5_to_safetensors.py).
        file: PathBuf,
        /// The Burnpack file to write.
        #[arg(long)]
        out: PathBuf,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Top-1, top-5 and loss of weights on a dataset.
    Eval {
        /// A run directory (its best checkpoint), a checkpoint directory, a .bpk, or a
        /// timm/Keras .safetensors or .pth.
        #[arg(long)]
        weights: PathBuf,
        /// The dataset folder.
        #[arg(long)]
        data: PathBuf,
        /// auto, folders, devkit, kaggle or split.
        #[arg(long, default_value = "auto")]
        layout: Layout,
        /// Which split of the dataset.
        #[arg(long, value_enum, default_value_t = SplitChoice::Val)]
        split: SplitChoice,
        /// Fraction of each side kept by the central crop (default: the training run's, else 0.875).
        #[arg(long)]
        crop_pct: Option<f64>,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Decoding threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Use a checkpoint's EMA weights.
        #[arg(long)]
        ema: bool,
        /// Score by class index even when the dataset's class folders are not the model's
        /// classes (by default that is refused, naming the first difference).
        #[arg(long)]
        by_index: bool,
        /// The device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
        device: DeviceChoice,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// The most likely classes of images.
    Predict {
        /// A run directory (its best checkpoint), a checkpoint directory, a .bpk, or a
        /// timm/Keras .safetensors or .pth.
        #[arg(long)]
        weights: PathBuf,
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Classes to show per image.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Fraction of each side kept by the central crop (default: the training run's, else 0.875).
        #[arg(long)]
        crop_pct: Option<f64>,
        /// Use a checkpoint's EMA weights.
        #[arg(long)]
        ema: bool,
        /// The device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
        device: DeviceChoice,
        /// Print JSON, with the raw logits.
        #[arg(long)]
        json: bool,
    },
    /// Print every block with its output shape, parameters and multiply-adds, and the totals.
    Info {
        /// A config file whose `[model]` table describes the network (default: the paper's).
        config: Option<PathBuf>,
        /// Print machine-readable JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// The device on which the module is built to cross-check the counts.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
        device: DeviceChoice,
    },
    /// Datasets: generate a synthetic one, or check one file by file.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Measure throughput and write the results (JSON) to a file.
    Bench(BenchArgs),
}

/// What `xception bench` measures, and how.
#[derive(clap::Args)]
struct BenchArgs {
    /// What to measure: the data pipeline, or the model's inference or training step on --device.
    #[arg(long, value_enum, default_value_t = BenchTarget::Data)]
    target: BenchTarget,
    /// The device for `--target inference`.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    device: DeviceChoice,
    /// The architecture for `--target inference|train` (`model.arch`), at its published
    /// width with 1000 classes.
    #[arg(long, default_value = "xception", value_parser = xception_model::ARCHITECTURES)]
    arch: String,
    /// Images per forward pass or step for `--target inference|train`.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Untimed passes before timing `--target inference|train` (compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// JPEGs to run the data pipeline on (default: 256 generated 500x375 photo-like JPEGs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the generated photos here, so another tool can read the same files.
    #[arg(long, conflicts_with = "data_dir")]
    photos_out: Option<PathBuf>,
    /// Number of photos to generate.
    #[arg(long, default_value_t = 256)]
    photos: usize,
    /// Worker thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    threads: Vec<usize>,
    /// The data pipeline's transform: training's random resized crop and flip, or
    /// evaluation's central 87.5% crop.
    #[arg(long, value_enum, default_value_t = bench::PipelineTransform::Train)]
    transform: bench::PipelineTransform,
    /// Image side in pixels: the crop's output (data) or the model's input (inference).
    #[arg(long, default_value_t = 299)]
    size: u32,
    /// Timed passes per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the results here as JSON.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Print JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchTarget {
    /// Decode, crop, flip and normalise JPEGs (the data loader).
    Data,
    /// Forward passes of --arch at --size on --device.
    Inference,
    /// Full training steps (forward, backward, SGD) of --arch on --device.
    Train,
    /// The sum of a whole gradient of the paper's model between the processes of an mpirun
    /// job (a binary built with --features mpi): `mpirun -np 2 xception bench --target
    /// allreduce`.
    Allreduce,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormatArg {
    /// timm's names (legacy_xception, inception_v3) and PyTorch layouts.
    Safetensors,
    /// Burn's native file.
    Burnpack,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ImportFrom {
    /// timm's state dict (legacy_xception, inception_v3).
    Timm,
    /// Keras' weights (Xception, InceptionV3).
    Keras,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitChoice {
    Train,
    Val,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write a learnable synthetic dataset of JPEGs in the ImageNet folder layout.
    Synth {
        /// The folder to create (must not hold train/ or val/ yet).
        #[arg(long)]
        out: PathBuf,
        /// Number of classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Training images per class.
        #[arg(long, default_value_t = 100)]
        train_per_class: usize,
        /// Validation images per class.
        #[arg(long, default_value_t = 20)]
        val_per_class: usize,
        /// Typical image side in pixels (each image varies from 0.8x to 1.25x).
        #[arg(long, default_value_t = 96)]
        size: u32,
        /// Seed of everything random.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Index a dataset, decode every file, report class counts, sizes and bad files.
    Check {
        /// The dataset folder.
        dir: PathBuf,
        /// auto, folders, devkit, kaggle or split.
        #[arg(long, default_value = "auto")]
        layout: Layout,
        /// Only this split (default: every split present).
        #[arg(long, value_enum)]
        split: Option<SplitChoice>,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Train {
            config,
            device,
            devices,
            resume,
            overrides,
            run_dir,
            force,
            stop_at_step,
            collective_timeout,
        } => {
            let interrupted = train::run(train::TrainArgs {
                config,
                device,
                devices,
                resume,
                overrides,
                run_dir,
                force,
                stop_at_step,
                collective_timeout: std::time::Duration::from_secs(collective_timeout),
            })?;
            // 130: the conventional status of a run ended by Ctrl-C (after its checkpoint).
            Ok(if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Export {
            checkpoint,
            format,
            out,
            ema,
            json,
        } => {
            let format = match format {
                ExportFormatArg::Safetensors => ExportFormat::Safetensors,
                ExportFormatArg::Burnpack => ExportFormat::Burnpack,
            };
            weights::export(&checkpoint, format, &out, ema, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Import {
            from,
            file,
            out,
            json,
        } => {
            let from = match from {
                ImportFrom::Timm => Format::Timm,
                ImportFrom::Keras => Format::Keras,
            };
            weights::import(from, &file, &out, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Eval {
            weights,
            data,
            layout,
            split,
            crop_pct,
            batch_size,
            workers,
            ema,
            by_index,
            device,
            json,
        } => weights::eval(weights::EvalArgs {
            weights,
            data,
            layout,
            split: split.into(),
            crop_pct,
            batch_size,
            workers,
            ema,
            by_index,
            device,
            json,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Predict {
            weights,
            images,
            top_k,
            crop_pct,
            ema,
            device,
            json,
        } => weights::predict(&weights, &images, top_k, crop_pct, ema, device, json)
            .map(|()| ExitCode::SUCCESS),
        Command::Info {
            config,
            json,
            device,
        } => info::run(config.as_deref(), json, device).map(|()| ExitCode::SUCCESS),
        Command::Data { command } => data_command(command).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench_command(args).map(|()| ExitCode::SUCCESS),
    }
}

/// `xception data synth|check`.
fn data_command(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Synth {
            out,
            classes,
            train_per_class,
            val_per_class,
            size,
            seed,
        } => data::synth(
            &out,
            &SynthOptions {
                classes,
                train_per_class,
                val_per_class,
                size,
                seed,
            },
        ),
        DataCommand::Check {
            dir,
            layout,
            split,
            json,
        } => data::run_check(&dir, layout, split.map(Split::from), json),
    }
}

/// `xception bench`: the model's training step or inference on a device, or the data
/// pipeline; the results go to `--out` and a summary (or JSON) to standard output.
fn bench_command(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        target,
        device,
        batch,
        warmup,
        size,
        repeats,
        ref out,
        json,
        ref arch,
        ..
    } = args;
    let size = size as usize;
    // The network --target inference|train measures (--size is the crop for --target data).
    let model = || -> Result<xception_model::ModelConfig> {
        let config = xception_model::ModelConfig::published(arch, 1000)
            .map(|config| config.with_input_size(size))
            .ok_or_else(|| anyhow::anyhow!("unknown --arch {arch}"))?;
        config.validate()?;
        Ok(config)
    };
    match target {
        BenchTarget::Train => {
            let result = bench::train_step(device, &model()?, batch, warmup, repeats)?;
            let memory = result
                .peak_rss_mib
                .map_or(String::new(), |m| format!(", peak memory {m:.0} MiB"));
            let phases = &result.phases;
            let memory = format!(
                "{memory} (median s: forward {:.3}, backward {:.3}, update {:.3})",
                phases.forward, phases.backward, phases.update
            );
            let summary = rate_line(
                &format!("{arch} training step"),
                &result.device,
                (result.size, result.batch),
                result.images_per_second,
                &format!("{} steps", result.seconds.len()),
            ) + &memory;
            emit_results(out, json, &result, &summary)
        }
        BenchTarget::Allreduce => {
            let processes = processes::Processes::join(std::time::Duration::from_secs(900))?;
            let result = bench::allreduce(&processes, warmup, repeats)?;
            if !processes.leads() {
                return Ok(());
            }
            let summary = format!(
                "sum of {} gradient values ({} buckets) over {} processes: {:.1} ms in rank order, {:.1} ms with MPI_Allreduce (medians of {})",
                result.values,
                result.buckets,
                result.ranks,
                result.ordered_seconds * 1e3,
                result.mpi_allreduce_seconds * 1e3,
                result.ordered.len()
            );
            emit_results(out, json, &result, &summary)
        }
        BenchTarget::Inference => {
            let result = bench::inference(device, &model()?, batch, warmup, repeats)?;
            let summary = rate_line(
                &format!("{arch} inference"),
                &result.device,
                (result.size, result.batch),
                result.images_per_second,
                &format!("{} passes", result.seconds.len()),
            ) + &format!(
                ", latency p50 {:.1} ms, p95 {:.1} ms{}",
                result.p50_ms,
                result.p95_ms,
                result
                    .peak_rss_mib
                    .map_or(String::new(), |m| format!(", peak memory {m:.0} MiB"))
            );
            emit_results(out, json, &result, &summary)
        }
        BenchTarget::Data => {
            let report = bench::pipeline(&bench::PipelineBench {
                dir: args.data_dir.as_deref(),
                photos_out: args.photos_out.as_deref(),
                photos: args.photos,
                threads: &args.threads,
                size: args.size,
                transform: args.transform,
                repeats,
            })?;
            let mut summary = format!(
                "{} ({} files in {})",
                report.pipeline, report.files, report.dir
            );
            for result in &report.results {
                summary += &format!(
                    "\n  {} thread(s): {:.1} images/s",
                    result.threads, result.images_per_second
                );
            }
            emit_results(out, json, &report, &summary)
        }
    }
}

/// `what, device at SxS, batch B: R images/s (median of N ...)`.
fn rate_line(
    what: &str,
    device: &str,
    (size, batch): (usize, usize),
    rate: f64,
    of: &str,
) -> String {
    format!("{what}, {device} at {size}x{size}, batch {batch}: {rate:.2} images/s (median of {of})")
}

/// Writes `results` as JSON to `out`, and prints the JSON or `summary`.
fn emit_results(
    out: &std::path::Path,
    json: bool,
    results: &impl serde::Serialize,
    summary: &str,
) -> Result<()> {
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(out, &text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    if json {
        println!("{text}");
    } else {
        println!("{summary}");
        println!("results written to {}", out.display());
    }
    Ok(())
}

impl From<SplitChoice> for Split {
    fn from(choice: SplitChoice) -> Self {
        match choice {
            SplitChoice::Train => Split::Train,
            SplitChoice::Val => Split::Val,
        }
    }
}

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_memory();
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Keeps freed tensor buffers in the process for the next step instead of giving them back
/// to the system.
///
/// glibc serves large allocations (above 32 MiB; at 299x299 most activations) with fresh
/// `mmap` pages and unmaps them when freed, so every training step would fault in and zero
/// its activations anew. Served from a heap that is never trimmed, the buffers of one step
/// are reused by the next, at the same peak memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets glibc's allocation thresholds; no thread is running yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// The error and its causes, each once: library errors either quote a cause in their message
/// or expose it as their `source()`, never both (a test in each crate holds them to it).
pub(crate) fn error_chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
