//! What one audit record holds, and where it goes in the store.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The log a record belongs to: user queries (partitioned by service), authentication
/// failures, admin mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Queries,
    Auth,
    Admin,
}

impl Stream {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stream::Queries => "queries",
            Stream::Auth => "auth",
            Stream::Admin => "admin",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Stream> {
        Some(match text {
            "queries" => Stream::Queries,
            "auth" => Stream::Auth,
            "admin" => Stream::Admin,
            _ => return None,
        })
    }
}

/// One answered (or failed) query, an authentication failure, or an admin mutation. Fields
/// that do not apply are `None` and left out of the JSON line. A `predict-multi` or
/// `lookup-multi` call is one record per item, sharing the call's `request_id`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    #[serde(skip)]
    pub stream: Stream,
    /// When the query reached the node (RFC 3339, UTC, microseconds).
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// The API key's id, never its secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    /// Features, parameters or lookup keys (absent when payload capture is off), as JSON
    /// text: an answer's bytes go into the record as they are, never parsed into a tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Box<RawValue>>,
    /// Prediction and probabilities, rows, or the function's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Box<RawValue>>,
    /// Whether `inputs` or `outputs` were cut to the service's payload size cap.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Where the time went, in microseconds (`total`, `lookup`, `prediction`, ...).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub timing: Map<String, Value>,
}

/// Without chrono's `serde` feature (it would rebuild the Arrow stack with it): the time as
/// RFC 3339 text, which every JSON reader parses.
fn rfc3339<S: serde::Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl AuditRecord {
    /// A record of `stream` for `service` at `time`, with nothing else filled in.
    pub fn new(
        stream: Stream,
        time: DateTime<Utc>,
        request_id: impl Into<String>,
        service: impl Into<String>,
        status: u16,
    ) -> AuditRecord {
        AuditRecord {
            stream,
            time,
            request_id: request_id.into(),
            item: None,
            service: service.into(),
            endpoint: None,
            endpoint_kind: None,
            generation: None,
            deployment_id: None,
            api_key_id: None,
            client_address: None,
            context: None,
            inputs: None,
            outputs: None,
            truncated: false,
            status,
            error_type: None,
            error_message: None,
            timing: Map::new(),
        }
    }

    /// The segment the record goes to: its stream, its service (queries only), its hour.
    pub(crate) fn partition(&self) -> Partition {
        Partition {
            stream: self.stream,
            service: match self.stream {
                Stream::Queries => self.service.clone(),
                Stream::Auth | Stream::Admin => String::new(),
            },
            hour: self.time.timestamp().div_euclid(3600),
        }
    }
}

/// Records written to the same segment, and so to the same store folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Partition {
    pub(crate) stream: Stream,
    /// Empty for the auth and admin streams.
    pub(crate) service: String,
    /// Hours since the epoch (UTC): written out as the folder's date and hour only when a
    /// segment is named, not per record.
    pub(crate) hour: i64,
}

impl Partition {
    /// `YYYY-MM-DD` and `HH` of the partition's hour.
    fn date_and_hour(&self) -> (String, String) {
        let start = DateTime::<Utc>::from_timestamp(self.hour * 3600, 0).unwrap_or_default();
        (
            start.format("%Y-%m-%d").to_string(),
            start.format("%H").to_string(),
        )
    }

    /// The store folder: `service=<id>/date=YYYY-MM-DD/hour=HH` for queries (the layout
    /// readers query), `_auth/...` and `_admin/...` for the other streams (a leading `_`
    /// keeps Hive-style readers of the query logs from reading them as queries).
    pub(crate) fn folder(&self) -> String {
        let (date, hour) = self.date_and_hour();
        match self.stream {
            Stream::Queries => format!("service={}/date={date}/hour={hour}", self.service),
            other => format!("_{}/date={date}/hour={hour}", other.as_str()),
        }
    }

    /// The spool file name of a segment: the partition and the segment's name, so a sealed
    /// segment can be uploaded after a restart without any other state.
    /// `<stream>~<service>~<date>~<hour>~<segment>`.
    pub(crate) fn spool_name(&self, segment: &str) -> String {
        let (date, hour) = self.date_and_hour();
        format!(
            "{}~{}~{date}~{hour}~{segment}",
            self.stream.as_str(),
            self.service,
        )
    }

    /// The partition and the segment name of a spool file name (without its extension).
    pub(crate) fn from_spool_name(name: &str) -> Option<(Partition, String)> {
        let mut parts = name.splitn(5, '~');
        let stream = Stream::parse(parts.next()?)?;
        let service = parts.next()?.to_owned();
        let date = chrono::NaiveDate::parse_from_str(parts.next()?, "%Y-%m-%d").ok()?;
        let hour: u32 = parts.next()?.parse().ok().filter(|h| *h < 24)?;
        let segment = parts.next()?.to_owned();
        let start = date.and_hms_opt(hour, 0, 0)?.and_utc();
        Some((
            Partition {
                stream,
                service,
                hour: start.timestamp().div_euclid(3600),
            },
            segment,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn records_go_to_their_service_and_hour() {
        let time = Utc.with_ymd_and_hms(2026, 12, 5, 7, 30, 0).unwrap();
        let record = AuditRecord::new(Stream::Queries, time, "r1", "churn", 200);
        let partition = record.partition();
        assert_eq!(partition.folder(), "service=churn/date=2026-12-05/hour=07");
        let name = partition.spool_name("node1-0001");
        assert_eq!(
            Partition::from_spool_name(&name),
            Some((partition, "node1-0001".to_owned()))
        );
        let auth = AuditRecord::new(Stream::Auth, time, "r2", "churn", 401).partition();
        assert_eq!(auth.folder(), "_auth/date=2026-12-05/hour=07");
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["service"], "churn");
        assert_eq!(json["time"], "2026-12-05T07:30:00.000000Z");
        assert!(json.get("inputs").is_none() && json.get("truncated").is_none());
    }
}
