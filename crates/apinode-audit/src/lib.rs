//! `apinode-audit`: the query audit log. Every answered query leaves one [`AuditRecord`]; the
//! records reach object storage as JSON lines, partitioned by service, date and hour, through
//! a local spool that survives outages of the store and crashes of the node.
//!
//! [`AuditLog::open`] recovers what an earlier run left in the spool (a torn last line is cut,
//! open segments are sealed) and starts a writer thread and an uploader task.
//! [`AuditLog::log`] never blocks: a `write` or `async` record is serialized straight into the
//! pending batch, which is written to the open segments (one per stream, service and hour)
//! with one `write` per segment: by the caller's runtime once the queries of the same instant
//! have joined it when a `write` record waits for it, else on the runtime's blocking pool at
//! the end of the `async` window; an `fsync` record is serialized too and queued to the
//! writer thread, which group-commits whatever is queued and fsyncs. With
//! [`AuditConfig::direct_writes`] (for logs whose writes are made off the request path)
//! segments are written around the page cache, in whole blocks. A record is borrowed
//! ([`AuditRecord`]'s text is `Cow`) and nothing of it is kept, so a caller can log from its
//! own state without copying it. The returned [`Logged`] resolves when the record is as
//! durable as asked ([`Durability`]): at once (`async`), once its batch is written to the
//! spool file (`write`: a killed process loses nothing), or once fsynced (`fsync`: a machine
//! crash loses nothing). Segments are sealed by size or age and uploaded (moved, into a local directory
//! on the same file system); a segment is deleted only after its upload succeeded, so a store
//! that is down only makes the spool grow, up to a cap with a chosen policy ([`FullPolicy`]).
//!
//! [`LogReader`] (the `reader` feature, on by default) reads the logs back: SQL over the
//! tables `queries`, `auth` and `admin` with DataFusion, and the last records of a stream
//! (`apinode logs query | tail`). A program that only writes the log can leave the feature out,
//! and DataFusion with it.
//!
//! What it is not: it does not decide what a record holds (the server fills it).
//!
//! Invariants: a record acknowledged at a durability level is in the spool at that level until
//! its segment's upload succeeded; every record reaches the store at most once per segment
//! upload (a crash between an upload and the local delete re-uploads the same object, under the
//! same name, so the store still holds each record once).

mod direct;
mod error;
#[cfg(feature = "reader")]
mod reader;
mod record;
mod spool;
mod store;
mod upload;

pub use error::{Error, Result};
#[cfg(feature = "reader")]
pub use reader::{JSON_COLUMN, LogObject, LogReader, LogTable, QueryOutput, log_schema};
pub use record::{
    AuditRecord, Names, Payload, PayloadField, RecordKey, RecordLine, Stream, write_json_str,
};
pub use spool::{AuditConfig, AuditLog, AuditMetrics, Durability, FullPolicy, Logged};
pub use store::{LogStore, open_existing_store, open_store};
