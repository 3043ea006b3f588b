//! `apinode-runtime`: what an API node is, without HTTP.
//!
//! The [`Runtime`] holds the node's services, their imported generations (bundles loaded for
//! serving) and the mapping that spreads queries over them, persists all of that in its data
//! directory, and answers typed user queries ([`Runtime::call`]) and admin operations.
//!
//! What it is not: no HTTP, routing or JSON request parsing (the server does that and hands
//! over parsed bodies); no bundle parsing of its own (`apinode-bundle`), no lookup engine of
//! its own (`apinode-lookup`) and no model scorer of its own (`apinode-scoring`). It enriches
//! prediction records with lookups, scores them with the endpoint's model, and writes the
//! protocol's `result` objects.
//!
//! Invariants: a generation is fully loaded before it can be activated, and a generation that
//! fails to load never replaces a serving one; a service's active set is swapped atomically,
//! so a query reads it with one atomic load and finishes on the generation it picked even if
//! the set changes meanwhile; every state change is on disk before it is visible.

mod admin_keys;
mod error;
mod generation;
mod metrics;
mod prediction;
mod referenced;
mod runtime;
mod state;
mod workers;

pub use admin_keys::AdminKeyInfo;
pub use error::{Error, Result};
pub use generation::{
    Credentials, MemoryReport, SERVED_KINDS, check_bundled_sql, memory_report, model_reports,
};
pub use metrics::{EndpointMetrics, Metrics, ServiceMetrics};
pub use prediction::{PredictOutput, ignore_reason_code, write_result as write_prediction_result};
pub use referenced::{PendingOutput, Resolved};
pub use runtime::{
    Action, CallBody, CallRequest, CallResponse, Dispatch, GenerationInfo, GenerationsView,
    LookupItem, LookupOutput, Output, Runtime, RuntimeConfig, ServiceSummary,
};
pub use state::{Mapping, MappingEntry};
pub use workers::{WorkerCall, WorkerOutput};
