//! `apinode`: the API node binary. Thin: parses the command line and hands over to the
//! commands; HTTP lives in `http`, everything else in the library crates.

mod bundle_cmd;
mod config;
mod data_cmd;
mod demo;
mod http;
mod huge_pages;
mod logs_cmd;
mod model_cmd;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "apinode",
    version,
    about = "A real-time API serving node, compatible with Dataiku's API node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the node's services over HTTP.
    Serve(serve::ServeArgs),
    /// Build and inspect service bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Check a Dataiku visual-model export (folder, model.zip or export zip) before bundling it.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Build the example customers service, start a node serving it, print example queries.
    Demo(demo::DemoArgs),
    /// Load datasets into the SQL connections referenced datasets live in.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Read the query audit log back from its store (see docs/operations.md).
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LogsCommand {
    /// Run SQL over the log with DataFusion: the tables `queries`, `auth` and `admin`, with
    /// the record's fields and the partition columns `service`, `date` and `hour`.
    Query(logs_cmd::QueryArgs),
    /// Print the last records as stored (JSON lines), newest last; --follow prints new ones.
    Tail(logs_cmd::TailArgs),
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Load a CSV or Parquet file into a new PostgreSQL table with COPY (column types as
    /// `apinode bundle build` infers them), with a progress bar and a summary.
    Sync(data_cmd::SyncArgs),
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Print what the model is: task, algorithm, preprocessing, input features, classes.
    Inspect { path: PathBuf },
    /// Score JSON lines of feature objects read on stdin; write one `result` object per line
    /// (`prediction`, `probas` keyed by class, `ignored`), as the `predict` route answers.
    Predict { path: PathBuf },
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Validate a service folder and write its bundle archive.
    Build {
        /// The service folder (holding service.toml).
        dir: PathBuf,
        /// The archive to write.
        #[arg(short, long)]
        output: PathBuf,
        /// The generation id (default: service.toml's `version`, else derived from the content).
        #[arg(long)]
        version: Option<String>,
    },
    /// Verify an archive and print what it holds.
    Inspect {
        file: PathBuf,
        /// Print the manifest as JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_) | Command::Demo(_)) {
        // Before any thread or allocation that matters: the new process starts from here.
        huge_pages::enable();
    }
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bundle { command } => match command {
            BundleCommand::Build {
                dir,
                output,
                version,
            } => bundle_cmd::build(&dir, &output, version),
            BundleCommand::Inspect { file, json } => bundle_cmd::inspect(&file, json),
        },
        Command::Model { command } => match command {
            ModelCommand::Inspect { path } => model_cmd::inspect(&path),
            ModelCommand::Predict { path } => model_cmd::predict(&path),
        },
        Command::Demo(args) => demo::run(args),
        Command::Data { command } => match command {
            DataCommand::Sync(args) => data_cmd::sync(args),
        },
        Command::Logs { command } => match command {
            LogsCommand::Query(args) => logs_cmd::query(args),
            LogsCommand::Tail(args) => logs_cmd::tail(args),
        },
    }
}
