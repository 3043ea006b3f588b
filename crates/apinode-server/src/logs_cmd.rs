//! `apinode logs query | tail`: the query audit log read back from its store
//! (`apinode_audit::LogReader`): SQL over the tables `queries`, `auth` and `admin`, or the last
//! records as stored, optionally following new ones.

use crate::config::NodeConfig;
use anyhow::Context;
use apinode_audit::{LogReader, Stream};
use clap::{Args, ValueEnum};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How often `tail --follow` looks for new objects.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Which store to read: `--store`, else the node configuration's.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The log store: a directory, file:///path or s3://bucket/prefix [default: the audit store
    /// of the node configuration (--config), else <data-dir>/audit-logs].
    #[arg(long, conflicts_with_all = ["config", "data_dir"])]
    store: Option<String>,
    /// An object_store S3 option, KEY=VALUE (aws_endpoint, aws_region, aws_allow_http,
    /// aws_access_key_id, ...); repeatable. Without them, S3 credentials, region and endpoint
    /// come from the environment (AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT, ...).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// The node's configuration file: the log is read where the node writes it ([audit] store,
    /// or the customer-audit-log connection).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's data directory [default: ./apinode-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
enum Format {
    /// A text table with a header.
    #[default]
    Table,
    /// One JSON object per row (payload columns as JSON).
    Json,
    /// CSV with a header.
    Csv,
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// One SQL statement over the tables `queries`, `auth` and `admin`, e.g.
    /// "SELECT service, count(*) FROM queries GROUP BY service".
    sql: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StreamArg {
    Queries,
    Auth,
    Admin,
}

impl From<StreamArg> for Stream {
    fn from(stream: StreamArg) -> Stream {
        match stream {
            StreamArg::Queries => Stream::Queries,
            StreamArg::Auth => Stream::Auth,
            StreamArg::Admin => Stream::Admin,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this service's queries.
    #[arg(long)]
    service: Option<String>,
    /// Which log: user queries, authentication failures, or admin mutations.
    #[arg(long, value_enum, default_value = "queries")]
    stream: StreamArg,
    /// How many of the last records to print.
    #[arg(short = 'n', long = "lines", default_value_t = 10)]
    lines: usize,
    /// Then keep printing the records of new objects as they reach the store (looked for every
    /// second), until interrupted.
    #[arg(short, long)]
    follow: bool,
}

/// The reader of the store the arguments name, and a description of that store.
fn open(args: &StoreArgs) -> anyhow::Result<(LogReader, String)> {
    let mut options = Vec::new();
    for option in &args.options {
        let (key, value) = option
            .split_once('=')
            .with_context(|| format!("--option `{option}` is not KEY=VALUE"))?;
        options.push((key.trim().to_owned(), value.to_owned()));
    }
    let (url, options, shown) = match &args.store {
        Some(url) => (url.clone(), options, format!("`{url}` (--store)")),
        None => {
            let config = NodeConfig::resolve(args.config.as_deref(), args.data_dir.clone(), None)?;
            let store = config.audit_store;
            // The command line's options win over the configuration's.
            let mut all = store.options;
            all.extend(options);
            let shown = format!("`{}` ({})", store.url, store.origin);
            (store.url, all, shown)
        }
    };
    let store = apinode_audit::open_existing_store(&url, &options).with_context(|| {
        format!(
            "cannot open the audit log store {shown}; pass --store URL, or --config FILE to read \
             where the node writes it"
        )
    })?;
    Ok((LogReader::new(store)?, shown))
}

pub(crate) fn query(args: QueryArgs) -> anyhow::Result<()> {
    let (reader, shown) = open(&args.store)?;
    let output = crate::serve::tokio_runtime()?
        .block_on(reader.query(&args.sql))
        .with_context(|| format!("on the audit log store {shown}"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        Format::Table => writeln!(out, "{}", output.to_table()?)?,
        Format::Json => output.write_json_lines(&mut out)?,
        Format::Csv => output.write_csv(&mut out)?,
    }
    out.flush()?;
    Ok(())
}

pub(crate) fn tail(args: TailArgs) -> anyhow::Result<()> {
    let stream = Stream::from(args.stream);
    anyhow::ensure!(
        args.service.is_none() || stream == Stream::Queries,
        "--service applies to the queries stream only (the auth and admin logs are not \
         partitioned by service)"
    );
    let (reader, shown) = open(&args.store)?;
    let service = args.service.as_deref();
    let runtime = crate::serve::tokio_runtime()?;
    let in_store = || format!("on the audit log store {shown}");
    if !args.follow {
        let lines = runtime
            .block_on(reader.tail(stream, service, args.lines, None))
            .with_context(in_store)?;
        return print(&lines);
    }
    runtime.block_on(async {
        // Objects dated yesterday or later are followed (a segment of 23:59 reaches the store
        // after midnight); the last lines come from them and, if they hold too few, from the
        // days before, so every record is printed once.
        let since = || (chrono::Utc::now() - chrono::Duration::days(1)).date_naive();
        let first = since();
        let recent = reader
            .objects(stream, service, Some(first))
            .await
            .with_context(in_store)?;
        let mut lines = reader
            .last_lines(&recent, args.lines)
            .await
            .with_context(in_store)?;
        if lines.len() < args.lines {
            let mut older = reader
                .tail(stream, service, args.lines - lines.len(), Some(first))
                .await
                .with_context(in_store)?;
            older.append(&mut lines);
            lines = older;
        }
        print(&lines)?;
        let mut seen: BTreeSet<(chrono::NaiveDate, String)> =
            recent.into_iter().map(|o| (o.date, o.path)).collect();
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            let since = since();
            let objects = match reader.objects(stream, service, Some(since)).await {
                Ok(objects) => objects,
                Err(e) => {
                    // A store that blips is retried at the next look.
                    eprintln!("apinode logs tail: {e}");
                    continue;
                }
            };
            for object in objects {
                if seen.contains(&(object.date, object.path.clone())) {
                    continue;
                }
                let lines = reader.lines(&object).await.with_context(in_store)?;
                print(&lines)?;
                seen.insert((object.date, object.path));
            }
            // What is dated before the followed days is looked at no more.
            seen.retain(|(date, _)| *date >= since);
        }
    })
}

fn print(lines: &[String]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
