//! `apinode data sync`: loads a CSV or Parquet file into a table of a PostgreSQL connection,
//! for datasets a bundle references instead of carrying (Dataiku's "sync the dataset to
//! api-node-referenced-data").

use crate::config::NodeConfig;
use anyhow::Context;
use apinode_lookup::{KeyType, PgConfig, PgConnection, Table, TableLoader};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows sent to `COPY` at a time (the progress bar moves by as much).
const CHUNK_ROWS: usize = 65_536;

#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    /// A `.csv` or `.parquet` file; column types are inferred as `apinode bundle build` does.
    file: PathBuf,
    /// The connection: a `[connections.<name>]` of the node's configuration, or a name its
    /// `[connection_remap]` maps to one (such as `api-node-referenced-data`).
    #[arg(long, default_value = apinode_lookup::DEFAULT_CONNECTION)]
    connection: String,
    /// The table to create (`schema.table` or `table`).
    #[arg(long)]
    table: String,
    /// Replace the table if it exists (in one transaction: readers see the old table or the
    /// new one).
    #[arg(long)]
    replace: bool,
    /// Create a B-tree index on these columns once the rows are in (comma-separated for a
    /// composite index; repeat for several). Index a lookup's key columns: without one,
    /// every lookup scans the table.
    #[arg(long = "index", value_name = "COLUMNS", value_delimiter = None)]
    indexes: Vec<String>,
    /// The node's configuration file, which declares the connection.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A PostgreSQL URL to use instead of the configured connection.
    #[arg(long)]
    url: Option<String>,
}

pub(crate) fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let pg = match &args.url {
        Some(url) => PgConfig::new(url),
        None => connection_config(&args)?,
    };
    let connection = Arc::new(
        PgConnection::new(&args.connection, &pg)
            .with_context(|| format!("cannot use connection `{}`", args.connection))?,
    );

    let spinner = ProgressBar::new_spinner().with_message(format!(
        "reading {} (inferring column types)",
        args.file.display()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let (parquet, _) = apinode_bundle::normalize_dataset(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let table = Table::from_parquet(&args.table, parquet.into())
        .with_context(|| format!("cannot read {} back", args.file.display()))?;
    spinner.finish_and_clear();

    let batch = table.batch();
    let mut columns = Vec::with_capacity(batch.num_columns());
    for field in batch.schema().fields() {
        let key_type = KeyType::of(field.data_type()).with_context(|| {
            format!(
                "{}: column `{}` is of type {}, which a referenced table cannot hold",
                args.file.display(),
                field.name(),
                field.data_type()
            )
        })?;
        columns.push((field.name().clone(), key_type));
    }
    let indexes: Vec<Vec<String>> = args
        .indexes
        .iter()
        .map(|index| index.split(',').map(|c| c.trim().to_owned()).collect())
        .collect();
    let mut loader = TableLoader::start(&connection, &args.table, &columns, args.replace, &indexes)
        .with_context(|| {
            format!(
                "cannot create table `{}` on connection `{}`",
                args.table, args.connection
            )
        })?;
    let rows = batch.num_rows();
    let bar = ProgressBar::new(rows as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {per_sec}, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut offset = 0;
    while offset < rows {
        let len = CHUNK_ROWS.min(rows - offset);
        loader
            .write(batch.slice(offset, len))
            .with_context(|| format!("cannot load rows {}..{}", offset + 1, offset + len))?;
        offset += len;
        bar.inc(len as u64);
    }
    let loaded = loader
        .finish()
        .with_context(|| format!("cannot commit table `{}`", args.table))?;
    bar.finish_and_clear();
    println!(
        "synced {loaded} rows and {} columns ({}) from {} into table `{}` on connection `{}`{} in {:.1} s",
        columns.len(),
        columns
            .iter()
            .map(|(name, t)| format!("{name} {}", apinode_lookup::pg_type_name(*t)))
            .collect::<Vec<_>>()
            .join(", "),
        args.file.display(),
        args.table,
        args.connection,
        if indexes.is_empty() {
            String::new()
        } else {
            let on: Vec<String> = indexes
                .iter()
                .map(|i| format!("({})", i.join(", ")))
                .collect();
            format!(", indexed on {}", on.join(" and "))
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The connection's settings from the node configuration, through its remap.
fn connection_config(args: &SyncArgs) -> anyhow::Result<PgConfig> {
    let config = NodeConfig::resolve(args.config.as_deref(), None, None)?;
    let name = config
        .connection_remap
        .get(&args.connection)
        .unwrap_or(&args.connection);
    anyhow::ensure!(
        !config.s3_connections.iter().any(|c| c == name),
        "connection `{name}` is an S3 connection (an object store, such as the audit log's): \
         `data sync` loads into PostgreSQL connections"
    );
    config.connections.get(name).cloned().with_context(|| {
        let declared: Vec<&str> = config.connections.keys().map(String::as_str).collect();
        format!(
            "connection `{}` is not declared{}: add [connections.{name}] with its url to the \
             configuration file (--config), or pass --url",
            args.connection,
            if declared.is_empty() {
                String::new()
            } else {
                format!(" (declared: {})", declared.join(", "))
            }
        )
    })
}
