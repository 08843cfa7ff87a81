//! The `hyperion` command: the demo (no arguments), and tools for model files.

mod bench;
mod demo;
mod inspect;
mod load;
mod simulate;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Serves model weights layer by layer within a memory budget.
///
/// With no command, runs the demo: synthesises a model, streams it through a
/// budget well below its size with prefetching, and verifies every byte.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo (the default): a pipelined forward pass over a synthetic
    /// model larger than the cache budget.
    Demo(demo::Args),
    /// Write a deterministic synthetic model.
    Synth {
        /// Number of layers.
        #[arg(long, default_value_t = 16)]
        layers: usize,
        /// Bytes per layer (a multiple of the element size).
        #[arg(long, default_value_t = 1 << 20)]
        layer_size: u64,
        /// Bits per weight: 8, 16, 32 or 64.
        #[arg(long, default_value_t = 32)]
        precision: u32,
        /// Seed of the content.
        #[arg(long)]
        seed: Option<u64>,
        /// Output file (`.tmai`).
        out: PathBuf,
    },
    /// Print a model file's layers and tensors.
    Inspect {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The model file.
        file: PathBuf,
    },
    /// Read every layer through the loader and check it (checksums for
    /// .tmai, structure for the others); the exit status says the result.
    Verify {
        /// The model file.
        file: PathBuf,
    },
    /// Write one tensor's exact bytes, read through the loader, to stdout.
    Tensor {
        /// The model file.
        file: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// Convert a model (safetensors, GGUF, .tmai) to .tmai, streaming.
    Convert {
        /// The model to read.
        input: PathBuf,
        /// The .tmai file to write.
        output: PathBuf,
    },
    /// Replay an access trace through the eviction policies and compare
    /// their hit rates with Belady's optimum.
    Simulate(simulate::Args),
    /// Measure the disk, memory and Hyperion's streams on a generated file,
    /// with min / median / max of repeated runs and ratios to the ceilings.
    Bench(bench::Args),
    /// Load a model file the way a user would (every tensor in memory and
    /// touched), cold or warm, whole or streaming; report MB/s and peak RSS.
    Load(load::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => demo::run(demo::Args::default()),
        Some(Command::Demo(args)) => demo::run(args),
        Some(Command::Synth {
            layers,
            layer_size,
            precision,
            seed,
            out,
        }) => {
            let defaults = hyperion::synth::SynthSpec::default();
            let spec = hyperion::synth::SynthSpec {
                layers,
                layer_size,
                precision,
                seed: seed.unwrap_or(defaults.seed),
            };
            hyperion::synth::write(&out, &spec).map_err(Into::into)
        }
        Some(Command::Inspect { json, file }) => inspect::run(&file, json),
        Some(Command::Verify { file }) => tools::verify(&file),
        Some(Command::Tensor { file, name }) => tools::tensor(&file, &name),
        Some(Command::Convert { input, output }) => tools::convert(&input, &output),
        Some(Command::Simulate(args)) => simulate::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Load(args)) => load::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyperion: {e}");
            ExitCode::FAILURE
        }
    }
}
