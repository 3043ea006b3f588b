//! Node configuration: an optional TOML file, overridden by command-line flags.

use anyhow::Context;
use apinode_audit::{AuditConfig, Durability, FullPolicy};
use apinode_lookup::PgConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const DEFAULT_BIND: &str = "127.0.0.1:12000";
pub(crate) const DEFAULT_DATA_DIR: &str = "./apinode-data";

/// The node configuration file (`apinode serve --config FILE`). Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    pub(crate) bind: Option<SocketAddr>,
    pub(crate) data_dir: Option<PathBuf>,
    /// Largest JSON body on the user and admin APIs (default 16 MiB).
    pub(crate) max_body_bytes: Option<usize>,
    /// Largest archive accepted by the upload route (default 4 GiB).
    pub(crate) max_archive_bytes: Option<usize>,
    /// The Python that runs Python endpoints and builds their environments (`python3`).
    pub(crate) python: Option<PathBuf>,
    /// The `Rscript` that runs R endpoints (`Rscript`).
    pub(crate) rscript: Option<PathBuf>,
    /// Where Python code environments are built and kept (`<data_dir>/envs`).
    pub(crate) envs_dir: Option<PathBuf>,
    /// Named connections (`[connections.<name>]`): PostgreSQL ones for referenced datasets,
    /// S3 ones (an `s3://` url) for the audit log's store.
    #[serde(default)]
    pub(crate) connections: BTreeMap<String, ConnectionFile>,
    /// A bundle's connection name → a declared connection's name.
    #[serde(default)]
    pub(crate) connection_remap: BTreeMap<String, String>,
    /// Per-service settings (`[services.<id>]`).
    #[serde(default)]
    pub(crate) services: BTreeMap<String, ServiceFile>,
    /// The query audit log (`[audit]`).
    #[serde(default)]
    pub(crate) audit: Option<AuditFile>,
}

/// `[services.<id>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceFile {
    /// The service's own remap, winning over the node's `[connection_remap]`: one bundle
    /// serves a design, a test and a production service on one node.
    #[serde(default)]
    pub(crate) connection_remap: BTreeMap<String, String>,
}

/// `[audit]`: where the query audit log goes and how durable a record is before its answer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditFile {
    /// Whether queries are logged (default true once the section is there; without an
    /// `[audit]` section nothing is logged).
    pub(crate) enabled: Option<bool>,
    /// A directory, `file:///path` or `s3://bucket/prefix` (default: the S3 connection
    /// `connection` names, else `<data_dir>/audit-logs`).
    pub(crate) store: Option<String>,
    /// object_store's S3 options (`aws_endpoint`, `aws_region`, ...), for an `s3://` store.
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
    /// An S3 connection (`[connections.<name>]` with an `s3://` url) to store the log in
    /// (default `customer-audit-log`, when it is declared and `store` is not given).
    pub(crate) connection: Option<String>,
    /// Default `<data_dir>/audit-spool`.
    pub(crate) spool_dir: Option<PathBuf>,
    /// `async`, `write` (default) or `fsync`.
    pub(crate) durability: Option<String>,
    /// `reject` (default) or `drop`.
    pub(crate) on_full: Option<String>,
    pub(crate) spool_cap_bytes: Option<u64>,
    pub(crate) segment_max_bytes: Option<u64>,
    pub(crate) segment_max_age_ms: Option<u64>,
    /// How long `async` records may wait for their batch's write (default 5).
    pub(crate) async_window_ms: Option<u64>,
    /// An `async` batch this large is written without waiting for its window (default 1 MiB).
    pub(crate) async_batch_bytes: Option<usize>,
    /// Whether segments are written around the page cache (default: with `async` and
    /// `fsync`, whose writes are made off the request path).
    pub(crate) direct_writes: Option<bool>,
    /// Names this node's segments (default: the host name).
    pub(crate) node_id: Option<String>,
    pub(crate) deployment_id: Option<String>,
    /// `[audit.services.<id>]`.
    #[serde(default)]
    pub(crate) services: BTreeMap<String, AuditServiceFile>,
}

/// `[audit.services.<id>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditServiceFile {
    /// The fraction of queries logged, 0 to 1 (default 1).
    pub(crate) sample: Option<f64>,
    /// Whether inputs and outputs are captured (default true).
    pub(crate) payloads: Option<bool>,
    /// Inputs or outputs longer than this (as JSON) are cut (default 65536).
    pub(crate) max_payload_bytes: Option<usize>,
}

/// The audit log settings in effect.
#[derive(Debug, Clone)]
pub(crate) struct AuditSettings {
    pub(crate) store: String,
    pub(crate) options: Vec<(String, String)>,
    /// What chose the store (`[audit] store`, `[connections.<name>]`, the default).
    pub(crate) store_origin: String,
    pub(crate) durability: Durability,
    pub(crate) log: AuditConfig,
    pub(crate) deployment_id: Option<String>,
    pub(crate) services: BTreeMap<String, ServicePolicy>,
}

/// What is logged of one service's queries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ServicePolicy {
    pub(crate) sample: f64,
    pub(crate) payloads: bool,
    pub(crate) max_payload_bytes: usize,
}

impl Default for ServicePolicy {
    fn default() -> ServicePolicy {
        ServicePolicy {
            sample: 1.0,
            payloads: true,
            max_payload_bytes: 64 << 10,
        }
    }
}

impl AuditFile {
    /// `None` when the log is disabled.
    fn resolve(
        self,
        data_dir: &Path,
        store: LogStore,
        shown: &str,
    ) -> anyhow::Result<Option<AuditSettings>> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let durability = match self.durability.as_deref() {
            None | Some("write") => Durability::Write,
            Some("async") => Durability::Async,
            Some("fsync") => Durability::Fsync,
            Some(other) => anyhow::bail!(
                "{shown}: [audit] durability `{other}` is not one of async, write, fsync"
            ),
        };
        let on_full = match self.on_full.as_deref() {
            None | Some("reject") => FullPolicy::Reject,
            Some("drop") => FullPolicy::Drop,
            Some(other) => {
                anyhow::bail!("{shown}: [audit] on_full `{other}` is not one of reject, drop")
            }
        };
        let node_id = sanitize_node_id(&self.node_id.unwrap_or_else(host_name));
        let spool_dir = self
            .spool_dir
            .unwrap_or_else(|| data_dir.join("audit-spool"));
        let mut log = AuditConfig::new(spool_dir, node_id);
        log.on_full = on_full;
        log.direct_writes = self
            .direct_writes
            .unwrap_or(durability != Durability::Write);
        if let Some(cap) = self.spool_cap_bytes {
            log.spool_cap_bytes = cap;
        }
        if let Some(bytes) = self.segment_max_bytes {
            anyhow::ensure!(
                bytes >= 1,
                "{shown}: [audit] segment_max_bytes must be at least 1"
            );
            log.segment_max_bytes = bytes;
        }
        if let Some(ms) = self.segment_max_age_ms {
            anyhow::ensure!(
                ms >= 1,
                "{shown}: [audit] segment_max_age_ms must be at least 1"
            );
            log.segment_max_age = Duration::from_millis(ms);
        }
        if let Some(ms) = self.async_window_ms {
            anyhow::ensure!(
                (1..=1000).contains(&ms),
                "{shown}: [audit] async_window_ms must be between 1 and 1000, got {ms}"
            );
            log.async_window = Duration::from_millis(ms);
        }
        if let Some(bytes) = self.async_batch_bytes {
            anyhow::ensure!(
                (4096..=64 << 20).contains(&bytes),
                "{shown}: [audit] async_batch_bytes must be between 4096 and 67108864, got {bytes}"
            );
            log.async_batch_bytes = bytes;
        }
        let mut services = BTreeMap::new();
        for (id, s) in self.services {
            let mut policy = ServicePolicy::default();
            if let Some(sample) = s.sample {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&sample),
                    "{shown}: [audit.services.{id}] sample must be between 0 and 1, got {sample}"
                );
                policy.sample = sample;
            }
            if let Some(payloads) = s.payloads {
                policy.payloads = payloads;
            }
            if let Some(max) = s.max_payload_bytes {
                policy.max_payload_bytes = max;
            }
            services.insert(id, policy);
        }
        Ok(Some(AuditSettings {
            store: store.url,
            options: store.options,
            store_origin: store.origin,
            durability,
            log,
            deployment_id: self.deployment_id,
            services,
        }))
    }
}

/// The machine's host name (Linux), else `HOSTNAME`, else `apinode`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "apinode".to_owned())
}

/// A node id names files in the spool and the store: letters, digits, `.`, `_` and `-` only.
fn sanitize_node_id(id: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "apinode".to_owned()
    } else {
        id
    }
}

/// `[connections.<name>]`: a PostgreSQL connection, or an S3 one when the url is `s3://...`.
/// Each kind takes only its own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionFile {
    /// `postgres://user:password@host:port/database`, or `s3://bucket/prefix`.
    pub(crate) url: String,
    /// PostgreSQL: sessions kept open at most (default 8).
    pub(crate) pool_size: Option<usize>,
    /// PostgreSQL: longest a statement may run, and a query wait for a session (default 5000).
    pub(crate) statement_timeout_ms: Option<u64>,
    /// S3: the address of an S3-compatible server (default: AWS's, from the region).
    pub(crate) endpoint: Option<String>,
    /// S3: the bucket's region (default: `AWS_REGION`, else `us-east-1`).
    pub(crate) region: Option<String>,
    /// S3: whether a plain `http://` endpoint is allowed (default false).
    pub(crate) allow_http: Option<bool>,
    /// S3: more object_store options (`aws_access_key_id`, `aws_session_token`, ...); without
    /// them, credentials come from the environment as the AWS tools read it.
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
}

/// The S3 connection the audit log uses when `[audit]` names no store (issue 7).
pub(crate) const AUDIT_CONNECTION: &str = "customer-audit-log";

/// Where the audit log is stored: a URL and object_store options, and what chose it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogStore {
    pub(crate) url: String,
    pub(crate) options: Vec<(String, String)>,
    /// `[audit] store`, `[connections.<name>]`, or the default, for messages.
    pub(crate) origin: String,
}

impl ConnectionFile {
    fn is_s3(&self) -> bool {
        self.url.starts_with("s3://")
    }

    /// The settings given that do not apply to this connection's kind.
    fn misplaced(&self) -> Vec<&'static str> {
        let mut wrong = Vec::new();
        if self.is_s3() {
            if self.pool_size.is_some() {
                wrong.push("pool_size");
            }
            if self.statement_timeout_ms.is_some() {
                wrong.push("statement_timeout_ms");
            }
        } else {
            if self.endpoint.is_some() {
                wrong.push("endpoint");
            }
            if self.region.is_some() {
                wrong.push("region");
            }
            if self.allow_http.is_some() {
                wrong.push("allow_http");
            }
            if !self.options.is_empty() {
                wrong.push("options");
            }
        }
        wrong
    }

    /// An S3 connection as a log store: its url, its settings as object_store options.
    fn log_store(&self, name: &str) -> LogStore {
        let mut options = Vec::new();
        if let Some(endpoint) = &self.endpoint {
            options.push(("aws_endpoint".to_owned(), endpoint.clone()));
        }
        if let Some(region) = &self.region {
            options.push(("aws_region".to_owned(), region.clone()));
        }
        if let Some(allow) = self.allow_http {
            options.push(("aws_allow_http".to_owned(), allow.to_string()));
        }
        options.extend(self.options.iter().map(|(k, v)| (k.clone(), v.clone())));
        LogStore {
            url: self.url.clone(),
            options,
            origin: format!("[connections.{name}]"),
        }
    }
}

/// The audit log's store: `[audit] store` (with `[audit.options]`), else the S3 connection
/// `[audit] connection` names, else `customer-audit-log` if declared, else
/// `<data_dir>/audit-logs`. Resolved whether or not the log is on: `apinode logs` reads it.
fn audit_store(
    audit: Option<&AuditFile>,
    connections: &BTreeMap<String, ConnectionFile>,
    data_dir: &Path,
    shown: &str,
) -> anyhow::Result<LogStore> {
    let options: Vec<(String, String)> = audit
        .map(|a| {
            a.options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let named = audit.and_then(|a| a.connection.as_deref());
    if let Some(url) = audit.and_then(|a| a.store.as_deref()) {
        anyhow::ensure!(
            named.is_none(),
            "{shown}: [audit] gives both store and connection: keep one"
        );
        return Ok(LogStore {
            url: url.to_owned(),
            options,
            origin: "[audit] store".to_owned(),
        });
    }
    let connection = match named {
        Some(name) => match connections.get(name) {
            Some(c) if c.is_s3() => Some((name, c)),
            Some(c) => anyhow::bail!(
                "{shown}: [audit] connection `{name}` is a PostgreSQL connection (url `{}`): the \
                 audit log needs an S3 one (url = \"s3://bucket/prefix\")",
                redacted(&c.url)
            ),
            None => anyhow::bail!(
                "{shown}: [audit] connection `{name}` is not declared: add [connections.{name}] \
                 with url = \"s3://bucket/prefix\""
            ),
        },
        None => connections
            .get(AUDIT_CONNECTION)
            .filter(|c| c.is_s3())
            .map(|c| (AUDIT_CONNECTION, c)),
    };
    if let Some((name, connection)) = connection {
        anyhow::ensure!(
            options.is_empty(),
            "{shown}: [audit.options] apply to [audit] store; the log is stored through \
             [connections.{name}]: give its options there ([connections.{name}.options])"
        );
        return Ok(connection.log_store(name));
    }
    Ok(LogStore {
        url: data_dir.join("audit-logs").to_string_lossy().into_owned(),
        options,
        origin: "the default, <data_dir>/audit-logs".to_owned(),
    })
}

/// A connection URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl ConfigFile {
    pub(crate) fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))
    }
}

/// The configuration in effect.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) bind: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_archive_bytes: usize,
    pub(crate) python: PathBuf,
    pub(crate) rscript: PathBuf,
    /// `None`: `<data_dir>/envs`. `APINODE_ENVS_DIR` overrides the file.
    pub(crate) envs_dir: Option<PathBuf>,
    /// The PostgreSQL connections (the S3 ones are log stores: `audit_store`).
    pub(crate) connections: BTreeMap<String, PgConfig>,
    /// The names of the declared S3 connections.
    pub(crate) s3_connections: Vec<String>,
    pub(crate) connection_remap: BTreeMap<String, String>,
    pub(crate) service_connection_remap: BTreeMap<String, BTreeMap<String, String>>,
    /// `None`: the audit log is disabled.
    pub(crate) audit: Option<AuditSettings>,
    /// Where the audit log is (or would be) stored, whether or not it is on.
    pub(crate) audit_store: LogStore,
}

impl NodeConfig {
    pub(crate) fn resolve(
        file: Option<&Path>,
        data_dir: Option<PathBuf>,
        bind: Option<SocketAddr>,
    ) -> anyhow::Result<NodeConfig> {
        let shown = file.map(|p| p.display().to_string());
        let file = match file {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let mut connections = BTreeMap::new();
        let mut s3_connections = Vec::new();
        for (name, c) in &file.connections {
            let misplaced = c.misplaced();
            anyhow::ensure!(
                misplaced.is_empty(),
                "{}: [connections.{name}] {} {} not apply to {} connection (url `{}`)",
                shown.as_deref().unwrap_or("configuration"),
                misplaced.join(", "),
                if misplaced.len() == 1 { "does" } else { "do" },
                if c.is_s3() { "an S3" } else { "a PostgreSQL" },
                redacted(&c.url)
            );
            if c.is_s3() {
                s3_connections.push(name.clone());
                continue;
            }
            let mut pg = PgConfig::new(&c.url);
            if let Some(size) = c.pool_size {
                anyhow::ensure!(
                    size >= 1,
                    "{}: [connections.{name}] pool_size must be at least 1",
                    shown.as_deref().unwrap_or("configuration")
                );
                pg.pool_size = size;
            }
            if let Some(ms) = c.statement_timeout_ms {
                anyhow::ensure!(
                    ms >= 1,
                    "{}: [connections.{name}] statement_timeout_ms must be at least 1",
                    shown.as_deref().unwrap_or("configuration")
                );
                pg.statement_timeout = Duration::from_millis(ms);
            }
            connections.insert(name.clone(), pg);
        }
        let remaps = file
            .connection_remap
            .iter()
            .map(|(from, to)| ("[connection_remap]".to_owned(), from, to))
            .chain(file.services.iter().flat_map(|(service, settings)| {
                settings.connection_remap.iter().map(move |(from, to)| {
                    (format!("[services.{service}.connection_remap]"), from, to)
                })
            }));
        for (section, from, to) in remaps {
            let shown = shown.as_deref().unwrap_or("configuration");
            anyhow::ensure!(
                !s3_connections.contains(to),
                "{shown}: {section} maps `{from}` to `{to}`, an S3 connection: referenced \
                 datasets need a PostgreSQL one"
            );
            anyhow::ensure!(
                connections.contains_key(to),
                "{shown}: {section} maps `{from}` to `{to}`, which no [connections.{to}] declares"
            );
        }
        let data_dir = data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        // Opt-in until its hot path meets its goal (issue 7): writing records costs the node
        // about half its HTTP throughput today (docs/benchmarks.md).
        let audit_store = audit_store(
            file.audit.as_ref(),
            &file.connections,
            &data_dir,
            shown.as_deref().unwrap_or("configuration"),
        )?;
        let audit = match file.audit {
            Some(audit) => audit.resolve(
                &data_dir,
                audit_store.clone(),
                shown.as_deref().unwrap_or("configuration"),
            )?,
            None => None,
        };
        Ok(NodeConfig {
            bind: bind
                .or(file.bind)
                .unwrap_or_else(|| DEFAULT_BIND.parse().expect("valid default address")),
            data_dir,
            max_body_bytes: file.max_body_bytes.unwrap_or(16 << 20),
            max_archive_bytes: file.max_archive_bytes.unwrap_or(4 << 30),
            python: file.python.unwrap_or_else(|| PathBuf::from("python3")),
            rscript: file.rscript.unwrap_or_else(|| PathBuf::from("Rscript")),
            envs_dir: std::env::var_os("APINODE_ENVS_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or(file.envs_dir),
            connections,
            s3_connections,
            connection_remap: file.connection_remap,
            service_connection_remap: file
                .services
                .into_iter()
                .map(|(id, s)| (id, s.connection_remap))
                .collect(),
            audit,
            audit_store,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "bind = \"127.0.0.1:9000\"\ndata_dir = \"/srv/a\"\n").unwrap();
        let config = NodeConfig::resolve(Some(&path), Some("/srv/b".into()), None).unwrap();
        assert_eq!(config.bind.port(), 9000);
        assert_eq!(config.data_dir, PathBuf::from("/srv/b"));
        let defaults = NodeConfig::resolve(None, None, None).unwrap();
        assert_eq!(defaults.bind.to_string(), DEFAULT_BIND);

        std::fs::write(&path, "bindd = 1\n").unwrap();
        let err = format!(
            "{:#}",
            NodeConfig::resolve(Some(&path), None, None).unwrap_err()
        );
        assert!(err.contains("unknown field `bindd`"), "{err}");
    }

    #[test]
    fn connections_and_their_remap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            r#"
[connections.api-node-referenced-data]
url = "postgres://postgres@127.0.0.1:5432/test"
pool_size = 3
statement_timeout_ms = 250

[connections.warehouse]
url = "postgres://postgres@127.0.0.1:5432/test"

[connection_remap]
dss-warehouse = "warehouse"
"#,
        )
        .unwrap();
        let config = NodeConfig::resolve(Some(&path), None, None).unwrap();
        let main = &config.connections["api-node-referenced-data"];
        assert_eq!(main.pool_size, 3);
        assert_eq!(main.statement_timeout, Duration::from_millis(250));
        assert_eq!(config.connections["warehouse"].pool_size, 8);
        assert_eq!(config.connection_remap["dss-warehouse"], "warehouse");

        std::fs::write(&path, "[connection_remap]\na = \"nowhere\"\n").unwrap();
        let err = format!(
            "{:#}",
            NodeConfig::resolve(Some(&path), None, None).unwrap_err()
        );
        assert!(err.contains("`nowhere`"), "{err}");
        std::fs::write(
            &path,
            "[connections.x]\nurl = \"postgres://h/d\"\npool = 2\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            NodeConfig::resolve(Some(&path), None, None).unwrap_err()
        );
        assert!(err.contains("unknown field `pool`"), "{err}");
    }

    #[test]
    fn the_audit_section_is_read_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        // Without an [audit] section nothing is logged; an empty one takes the defaults.
        assert!(
            NodeConfig::resolve(None, Some("/srv/d".into()), None)
                .unwrap()
                .audit
                .is_none()
        );
        std::fs::write(&path, "[audit]\n").unwrap();
        let defaults = NodeConfig::resolve(Some(&path), Some("/srv/d".into()), None)
            .unwrap()
            .audit
            .unwrap();
        assert_eq!(defaults.store, "/srv/d/audit-logs");
        assert_eq!(defaults.log.spool_dir, PathBuf::from("/srv/d/audit-spool"));
        assert_eq!(defaults.durability, Durability::Write);
        assert_eq!(defaults.log.on_full, FullPolicy::Reject);
        assert!(
            !defaults.log.direct_writes,
            "write batches run on the runtime: buffered"
        );
        assert!(!defaults.log.node_id.is_empty());
        std::fs::write(
            &path,
            r#"
[audit]
store = "s3://logs/apinode"
durability = "fsync"
on_full = "drop"
spool_cap_bytes = 1000
segment_max_age_ms = 250
async_window_ms = 2
async_batch_bytes = 65536
node_id = "node 1/a"
deployment_id = "prod"
[audit.options]
aws_endpoint = "http://127.0.0.1:9000"
[audit.services.shop]
sample = 0.25
payloads = false
"#,
        )
        .unwrap();
        let audit = NodeConfig::resolve(Some(&path), None, None)
            .unwrap()
            .audit
            .unwrap();
        assert_eq!(audit.store, "s3://logs/apinode");
        assert_eq!(audit.options[0].0, "aws_endpoint");
        assert_eq!(audit.durability, Durability::Fsync);
        assert_eq!(audit.log.on_full, FullPolicy::Drop);
        assert_eq!(audit.log.spool_cap_bytes, 1000);
        assert_eq!(audit.log.segment_max_age, Duration::from_millis(250));
        assert_eq!(audit.log.async_window, Duration::from_millis(2));
        assert_eq!(audit.log.async_batch_bytes, 65536);
        assert!(
            audit.log.direct_writes,
            "fsync batches run on the writer thread: direct"
        );
        assert_eq!(audit.log.node_id, "node-1-a");
        assert_eq!(audit.deployment_id.as_deref(), Some("prod"));
        let shop = audit.services["shop"];
        assert_eq!((shop.sample, shop.payloads), (0.25, false));
        assert_eq!(shop.max_payload_bytes, 64 << 10);

        std::fs::write(
            &path,
            "[audit]\ndurability = \"async\"\ndirect_writes = false\n",
        )
        .unwrap();
        let audit = NodeConfig::resolve(Some(&path), None, None)
            .unwrap()
            .audit
            .unwrap();
        assert_eq!(audit.durability, Durability::Async);
        assert!(!audit.log.direct_writes);

        std::fs::write(&path, "[audit]\nenabled = false\n").unwrap();
        assert!(
            NodeConfig::resolve(Some(&path), None, None)
                .unwrap()
                .audit
                .is_none()
        );
        std::fs::write(&path, "[audit]\ndurability = \"sometimes\"\n").unwrap();
        let err = format!(
            "{:#}",
            NodeConfig::resolve(Some(&path), None, None).unwrap_err()
        );
        assert!(err.contains("sometimes"), "{err}");
        std::fs::write(&path, "[audit]\nasync_window_ms = 0\n").unwrap();
        let err = format!(
            "{:#}",
            NodeConfig::resolve(Some(&path), None, None).unwrap_err()
        );
        assert!(
            err.contains("async_window_ms must be between 1 and 1000, got 0"),
            "{err}"
        );
        std::fs::write(&path, "[audit.services.x]\nsample = 2.0\n").unwrap();
        assert!(NodeConfig::resolve(Some(&path), None, None).is_err());
    }

    #[test]
    fn an_s3_connection_named_customer_audit_log_is_the_audit_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let connections = r#"
[connections.api-node-referenced-data]
url = "postgres://postgres@127.0.0.1:5432/test"

[connections.customer-audit-log]
url = "s3://audit/apinode"
endpoint = "http://127.0.0.1:9000"
region = "eu-west-3"
allow_http = true
[connections.customer-audit-log.options]
aws_access_key_id = "test"
"#;
        let resolve = |text: &str| {
            std::fs::write(&path, text).unwrap();
            NodeConfig::resolve(Some(&path), Some("/srv/d".into()), None)
        };
        let error = |text: &str| format!("{:#}", resolve(text).unwrap_err());

        // Declared: the log goes there, and `apinode logs` reads there even with the log off.
        let config = resolve(&format!("{connections}\n[audit]\n")).unwrap();
        let audit = config.audit.unwrap();
        assert_eq!(audit.store, "s3://audit/apinode");
        assert_eq!(
            audit.options,
            [
                ("aws_endpoint", "http://127.0.0.1:9000"),
                ("aws_region", "eu-west-3"),
                ("aws_allow_http", "true"),
                ("aws_access_key_id", "test"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(audit.store_origin, "[connections.customer-audit-log]");
        // It is no PostgreSQL connection.
        assert_eq!(
            config.connections.keys().collect::<Vec<_>>(),
            ["api-node-referenced-data"]
        );
        assert_eq!(config.s3_connections, ["customer-audit-log"]);
        let off = resolve(connections).unwrap();
        assert!(off.audit.is_none());
        assert_eq!(off.audit_store.url, "s3://audit/apinode");

        // `[audit] store` wins; `[audit] connection` names another S3 connection.
        let store = resolve(&format!("{connections}\n[audit]\nstore = \"/logs\"\n")).unwrap();
        assert_eq!(store.audit_store.url, "/logs");
        assert!(store.audit_store.options.is_empty());
        let other = resolve(&format!(
            "{connections}\n[connections.archive]\nurl = \"s3://archive\"\n\
             [audit]\nconnection = \"archive\"\n"
        ))
        .unwrap();
        assert_eq!(other.audit_store.url, "s3://archive");
        // Without the connection: the data directory.
        let local = resolve("[audit]\n").unwrap();
        assert_eq!(local.audit_store.url, "/srv/d/audit-logs");

        let e = error(&format!(
            "{connections}\n[audit]\nconnection = \"api-node-referenced-data\"\n"
        ));
        assert!(e.contains("is a PostgreSQL connection"), "{e}");
        let e = error("[audit]\nconnection = \"nowhere\"\n");
        assert!(e.contains("[connections.nowhere]"), "{e}");
        let e = error(&format!(
            "{connections}\n[audit]\nstore = \"/x\"\nconnection = \"customer-audit-log\"\n"
        ));
        assert!(e.contains("both store and connection"), "{e}");
        let e = error(&format!(
            "{connections}\n[audit]\n[audit.options]\naws_region = \"x\"\n"
        ));
        assert!(
            e.contains("[connections.customer-audit-log.options]"),
            "{e}"
        );
        // Each kind of connection takes its own settings only.
        let e = error("[connections.logs]\nurl = \"s3://b\"\npool_size = 2\n");
        assert!(
            e.contains("[connections.logs] pool_size does not apply to an S3 connection"),
            "{e}"
        );
        let e = error(
            "[connections.pg]\nurl = \"postgres://u:secret@h/d\"\nregion = \"x\"\nallow_http = true\n",
        );
        assert!(
            e.contains("region, allow_http do not apply to a PostgreSQL connection"),
            "{e}"
        );
        assert!(
            !e.contains("secret") && e.contains("postgres://u:***@h/d"),
            "{e}"
        );
        // A bundle's connection cannot be remapped to an object store.
        let e = error(&format!(
            "{connections}\n[connection_remap]\ndss = \"customer-audit-log\"\n"
        ));
        assert!(e.contains("an S3 connection"), "{e}");
    }
}
