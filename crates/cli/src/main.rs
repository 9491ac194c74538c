//! The `xception` command line: a thin layer that parses arguments and calls the library
//! crates.

mod device;
mod info;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info {
            config,
            json,
            device,
        } => info::run(config.as_deref(), json, device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
