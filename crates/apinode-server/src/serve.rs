//! `apinode serve`: open the data directory, load every generation, then listen.

use crate::config::NodeConfig;
use crate::http::{HttpLimits, NodeAudit, node_service, serve_connections};
use anyhow::Context;
use apinode_runtime::{Runtime, RuntimeConfig};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long the shutdown waits for the audit log's last uploads (the rest goes at next start).
const AUDIT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file (see docs/operations.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the node keeps its state and generations [default: ./apinode-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:12000]; port 0 picks a free port.
    #[arg(long)]
    bind: Option<SocketAddr>,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = NodeConfig::resolve(args.config.as_deref(), args.data_dir, args.bind)?;
    tokio_runtime()?.block_on(async {
        let (runtime, _) = open_runtime(&config).await?;
        serve(runtime, &config, |_| {}).await
    })
}

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APINODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Opens the data directory (loading every generation) and makes sure an admin key exists.
/// Returns the admin key generated on first start, if one was (already printed).
pub(crate) async fn open_runtime(
    config: &NodeConfig,
) -> anyhow::Result<(Arc<Runtime>, Option<String>)> {
    let shown = config.data_dir.display().to_string();
    let mut runtime_config = RuntimeConfig::new(config.data_dir.clone());
    runtime_config.python = config.python.clone();
    runtime_config.rscript = config.rscript.clone();
    runtime_config.envs_dir = config.envs_dir.clone();
    runtime_config.connections = config.connections.clone();
    runtime_config.connection_remap = config.connection_remap.clone();
    runtime_config.service_connection_remap = config.service_connection_remap.clone();
    let runtime = tokio::task::spawn_blocking(move || Runtime::open(runtime_config))
        .await
        .context("the loading task failed")?
        .with_context(|| format!("cannot open the data directory {shown}"))?;
    let from_env = std::env::var("APINODE_ADMIN_KEY").ok();
    let generated = runtime.ensure_admin_key(from_env.as_deref())?;
    if let Some(secret) = &generated {
        println!("Generated an admin API key (shown only once, stored hashed): {secret}");
    }
    Ok((Arc::new(runtime), generated))
}

/// Listens until SIGINT or SIGTERM; in-flight requests finish first. `on_ready` runs once the
/// socket is bound, with the actual address (the port may have been picked by the system).
pub(crate) async fn serve(
    runtime: Arc<Runtime>,
    config: &NodeConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    let limits = HttpLimits {
        max_body_bytes: config.max_body_bytes,
        max_archive_bytes: config.max_archive_bytes,
    };
    let audit = match &config.audit {
        Some(settings) => {
            let audit = NodeAudit::open(settings).await?;
            tracing::info!(store = %settings.store, from = %settings.store_origin, "audit log on");
            Some(Arc::new(audit))
        }
        None => None,
    };
    let service = node_service(runtime, audit.clone(), limits);
    on_ready(addr);
    // Tests and scripts read this line to learn the port.
    println!("apinode listening on http://{addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "node ready");
    let served = serve_connections(listener, service, shutdown_signal())
        .await
        .context("the HTTP server failed");
    // After the drain: every answered query's record is in the spool; seal and upload it.
    if let Some(audit) = audit
        && !audit.close(AUDIT_CLOSE_TIMEOUT).await
    {
        tracing::warn!(
            "the audit log's last segments were not all uploaded within {} s: they stay in \
             the spool and are uploaded at the next start",
            AUDIT_CLOSE_TIMEOUT.as_secs()
        );
    }
    served
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
