//! Node configuration: an optional TOML file, overridden by command-line flags.

use anyhow::Context;
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
    /// Named PostgreSQL connections for referenced datasets (`[connections.<name>]`).
    #[serde(default)]
    pub(crate) connections: BTreeMap<String, ConnectionFile>,
    /// A bundle's connection name → a declared connection's name.
    #[serde(default)]
    pub(crate) connection_remap: BTreeMap<String, String>,
    /// Per-service settings (`[services.<id>]`).
    #[serde(default)]
    pub(crate) services: BTreeMap<String, ServiceFile>,
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

/// `[connections.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionFile {
    /// `postgres://user:password@host:port/database`.
    pub(crate) url: String,
    /// Sessions kept open at most (default 8).
    pub(crate) pool_size: Option<usize>,
    /// Longest a statement may run, and a query wait for a session (default 5000).
    pub(crate) statement_timeout_ms: Option<u64>,
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
    pub(crate) connections: BTreeMap<String, PgConfig>,
    pub(crate) connection_remap: BTreeMap<String, String>,
    pub(crate) service_connection_remap: BTreeMap<String, BTreeMap<String, String>>,
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
        for (name, c) in &file.connections {
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
        for (from, to) in &file.connection_remap {
            anyhow::ensure!(
                connections.contains_key(to),
                "{}: [connection_remap] maps `{from}` to `{to}`, which no [connections.{to}] declares",
                shown.as_deref().unwrap_or("configuration")
            );
        }
        for (service, settings) in &file.services {
            for (from, to) in &settings.connection_remap {
                anyhow::ensure!(
                    connections.contains_key(to),
                    "{}: [services.{service}.connection_remap] maps `{from}` to `{to}`, which no \
                     [connections.{to}] declares",
                    shown.as_deref().unwrap_or("configuration")
                );
            }
        }
        Ok(NodeConfig {
            bind: bind
                .or(file.bind)
                .unwrap_or_else(|| DEFAULT_BIND.parse().expect("valid default address")),
            data_dir: data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            max_body_bytes: file.max_body_bytes.unwrap_or(16 << 20),
            max_archive_bytes: file.max_archive_bytes.unwrap_or(4 << 30),
            python: file.python.unwrap_or_else(|| PathBuf::from("python3")),
            rscript: file.rscript.unwrap_or_else(|| PathBuf::from("Rscript")),
            envs_dir: std::env::var_os("APINODE_ENVS_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or(file.envs_dir),
            connections,
            connection_remap: file.connection_remap,
            service_connection_remap: file
                .services
                .into_iter()
                .map(|(id, s)| (id, s.connection_remap))
                .collect(),
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
}
