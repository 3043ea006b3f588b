//! Referenced datasets: the node's named PostgreSQL connections, the remapping of a bundle's
//! connection names to them, and the endpoints that use them (`dataset-lookup` on a referenced
//! table, `sql-query` on a connection or on bundled datasets), whose answers are asynchronous ([`PendingOutput`]: the server awaits it; the statement runs on
//! `apinode-lookup`'s own executor).

use crate::error::{Error, Result};
use crate::runtime::{LookupItem, LookupOutput, Output};
use crate::workers::OnDone;
use apinode_lookup::{
    Answer, LookupConfig, PgConfig, PgConnection, ReferencedLookup, ReferencedQuery, ReferencedSql,
    SqlConfig, SqlQuery,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// The node's declared connections and the names bundles may use for them.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    declared: BTreeMap<String, Arc<PgConnection>>,
    /// Bundle name → node name.
    remap: BTreeMap<String, String>,
    /// Per service, bundle name → node name; wins over `remap`.
    service_remap: BTreeMap<String, BTreeMap<String, String>>,
}

impl Connections {
    /// Prepares a pool per connection (nothing is opened yet). A remap target must be
    /// declared.
    pub(crate) fn new(
        configs: &BTreeMap<String, PgConfig>,
        remap: &BTreeMap<String, String>,
        service_remap: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<Connections> {
        let mut declared = BTreeMap::new();
        for (name, config) in configs {
            let connection = PgConnection::new(name, config)
                .map_err(|e| Error::InvalidRequest(e.to_string()))?;
            declared.insert(name.clone(), Arc::new(connection));
        }
        let remaps =
            std::iter::once((None, remap)).chain(service_remap.iter().map(|(s, r)| (Some(s), r)));
        for (service, remap) in remaps {
            for (from, to) in remap {
                if !declared.contains_key(to) {
                    let of = service
                        .map(|s| format!(" of service `{s}`"))
                        .unwrap_or_default();
                    return Err(Error::InvalidRequest(format!(
                        "the connection remap{of} maps `{from}` to `{to}`, which is not a \
                         declared connection ({})",
                        names(&declared)
                    )));
                }
            }
        }
        Ok(Connections {
            declared,
            remap: remap.clone(),
            service_remap: service_remap.clone(),
        })
    }

    /// The connection a bundle's connection name designates for `service`: remapped for the
    /// service, else for the node, else the same name.
    pub(crate) fn resolve(
        &self,
        service: &str,
        name: &str,
    ) -> std::result::Result<Arc<PgConnection>, String> {
        let target = self
            .service_remap
            .get(service)
            .and_then(|r| r.get(name))
            .or_else(|| self.remap.get(name))
            .map_or(name, String::as_str);
        self.declared.get(target).cloned().ok_or_else(|| {
            let remapped = if target == name {
                String::new()
            } else {
                format!(" (remapped to `{target}`)")
            };
            format!(
                "connection `{name}`{remapped} is not declared on this node (declared: {}); \
                 declare it in the node configuration's [connections.{target}] or map it to a \
                 declared one in [connection_remap]",
                names(&self.declared)
            )
        })
    }
}

fn names(declared: &BTreeMap<String, Arc<PgConnection>>) -> String {
    if declared.is_empty() {
        "none".to_owned()
    } else {
        declared
            .keys()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A lookup on a referenced dataset: the table's columns are read now when the database
/// answers (an unknown column or table refuses the generation, as for a bundled dataset);
/// when it does not, the generation loads anyway and its queries answer 503 until it does.
pub(crate) fn load_referenced(
    connections: &Connections,
    service: &str,
    dataset: &str,
    connection: &str,
    table: &str,
    config: LookupConfig,
) -> std::result::Result<Arc<ReferencedLookup>, String> {
    let pg = connections
        .resolve(service, connection)
        .map_err(|m| format!("dataset `{dataset}`: {m}"))?;
    let lookup =
        Arc::new(ReferencedLookup::new(pg, dataset, table, config).map_err(|e| e.to_string())?);
    match lookup.resolve() {
        Ok(()) => Ok(lookup),
        Err(apinode_lookup::Error::Unavailable {
            connection,
            message,
        }) => {
            tracing::warn!(
                dataset,
                connection,
                table,
                "the referenced table's columns will be read on the first query: {message}"
            );
            Ok(lookup)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A SQL endpoint on a referenced connection: its statements are prepared now when the
/// database answers (a statement it refuses refuses the generation); when it does not, the
/// generation loads anyway and its queries answer 503 until it does.
pub(crate) fn load_referenced_sql(
    connections: &Connections,
    service: &str,
    connection: &str,
    config: SqlConfig,
) -> std::result::Result<Arc<ReferencedSql>, String> {
    let pg = connections.resolve(service, connection)?;
    let sql = Arc::new(ReferencedSql::new(pg, config).map_err(|e| e.to_string())?);
    match sql.check() {
        Ok(()) => Ok(sql),
        Err(apinode_lookup::Error::Unavailable {
            connection,
            message,
        }) => {
            tracing::warn!(
                connection,
                "the SQL endpoint's statements will be prepared on the first query: {message}"
            );
            Ok(sql)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The future of a pending answer.
type Answering = Pin<Box<dyn Future<Output = Result<Resolved>> + Send>>;

/// An answer that needs I/O (a referenced lookup's statement): await
/// [`PendingOutput::finish`]. Its metrics are recorded when it finishes.
pub struct PendingOutput {
    answering: Answering,
}

impl std::fmt::Debug for PendingOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingOutput").finish_non_exhaustive()
    }
}

/// A pending answer, answered.
#[derive(Debug)]
pub struct Resolved {
    pub output: Output,
    /// Time spent in the endpoint, in microseconds.
    pub endpoint_micros: u64,
}

impl PendingOutput {
    /// Waits for the answer; may be polled by any runtime.
    pub async fn finish(self) -> Result<Resolved> {
        self.answering.await
    }

    /// A SQL query's statements.
    pub(crate) fn sql(query: SqlQuery, on_done: OnDone) -> Self {
        PendingOutput::later(1, on_done, async move {
            query
                .finish()
                .await
                .map(Output::Sql)
                .map_err(|source| Error::Sql { source })
        })
    }

    /// An answer `answering` computes, for `items` records (a prediction enriched from a
    /// referenced table, for instance).
    pub(crate) fn later(
        items: usize,
        on_done: OnDone,
        answering: impl Future<Output = Result<Output>> + Send + 'static,
    ) -> Self {
        let answering = async move {
            let start = Instant::now();
            let result = answering.await;
            let micros = start.elapsed().as_micros() as u64;
            on_done(items, micros, result.is_ok());
            Ok(Resolved {
                output: result?,
                endpoint_micros: micros,
            })
        };
        PendingOutput {
            answering: Box::pin(answering),
        }
    }

    /// A referenced lookup's query; `multi` names the item of an error (`items[i]`).
    pub(crate) fn lookup(
        query: ReferencedQuery,
        items: usize,
        multi: bool,
        on_done: OnDone,
    ) -> Self {
        let answering = async move {
            let start = Instant::now();
            let result = query.finish().await;
            let micros = start.elapsed().as_micros() as u64;
            on_done(items, micros, result.is_ok());
            let written = result.map_err(|(item, source)| Error::Lookup {
                item: item.filter(|_| multi),
                source,
            })?;
            let items = written
                .answers
                .iter()
                .map(|answer| match answer {
                    Answer::Data(range) => LookupItem::Data(range.clone()),
                    Answer::Ignored(reason) => LookupItem::Ignored {
                        reason: reason.as_str(),
                    },
                })
                .collect();
            Ok(Resolved {
                output: Output::Lookup(LookupOutput {
                    buffer: written.buffer,
                    items,
                }),
                endpoint_micros: micros,
            })
        };
        PendingOutput {
            answering: Box::pin(answering),
        }
    }
}
