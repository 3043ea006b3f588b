//! Per-endpoint counters, kept in each generation's endpoints (lock-free on the query path)
//! and summed per service and endpoint in a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    items: AtomicU64,
    total_micros: AtomicU64,
}

impl EndpointStats {
    pub(crate) fn record(&self, items: usize, micros: u64, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_to(&self, snapshot: &mut EndpointMetrics) {
        snapshot.requests += self.requests.load(Ordering::Relaxed);
        snapshot.errors += self.errors.load(Ordering::Relaxed);
        snapshot.items += self.items.load(Ordering::Relaxed);
        snapshot.total_micros += self.total_micros.load(Ordering::Relaxed);
    }
}

/// Counters of one endpoint, summed over its service's loaded generations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMetrics {
    pub requests: u64,
    /// Queries answered with an error by the endpoint.
    pub errors: u64,
    /// Records answered (items of multi queries).
    pub items: u64,
    pub total_micros: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceMetrics {
    pub service: String,
    pub enabled: bool,
    pub generations: usize,
    pub active_generations: Vec<String>,
    /// Bytes of tables and indexes held by the service's loaded generations.
    pub resident_bytes: usize,
    pub endpoints: Vec<(String, EndpointMetrics)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub uptime_seconds: u64,
    pub services: Vec<ServiceMetrics>,
}
