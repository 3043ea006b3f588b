//! What one audit record holds, and where it goes in the store.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;

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
///
/// Text is borrowed where the caller has it (`Cow`): a record is written into its line when it
/// is logged and not kept, so a query's record can point into the query's own state and cost no
/// allocation.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord<'a> {
    #[serde(skip)]
    pub stream: Stream,
    /// When the query reached the node (RFC 3339, UTC, microseconds).
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    pub request_id: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    pub service: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_kind: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<Cow<'a, str>>,
    /// The API key's id, never its secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "address")]
    pub client_address: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Cow<'a, Value>>,
    /// Features, parameters or lookup keys (absent when payload capture is off), as JSON
    /// text: an answer's bytes go into the record as they are, never parsed into a tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Payload<'a>>,
    /// Prediction and probabilities, rows, or the function's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Payload<'a>>,
    /// Whether `inputs` or `outputs` were cut to the service's payload size cap.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<Cow<'a, str>>,
    /// Where the time went, in microseconds (`total`, `lookup`, `prediction`, ...): a JSON
    /// object, in this order.
    #[serde(skip_serializing_if = "<[_]>::is_empty", serialize_with = "steps")]
    pub timing: &'a [(&'a str, u64)],
}

fn address<S: serde::Serializer>(
    address: &Option<SocketAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match address {
        Some(address) => serializer.collect_str(address),
        None => serializer.serialize_none(),
    }
}

fn steps<S: serde::Serializer>(timing: &[(&str, u64)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(timing.iter().map(|(step, micros)| (step, micros)))
}

/// A payload (inputs or outputs) as JSON text, written into the record's line as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload<'a>(Cow<'a, [u8]>);

impl<'a> Payload<'a> {
    /// JSON text the caller wrote itself (the answer the node sends, byte for byte): not
    /// parsed again, which on the query path would cost as much as the rest of the record
    /// (checked in debug builds). Text that is not JSON would break its record's line.
    pub fn trusted(json: impl Into<Cow<'a, str>>) -> Payload<'a> {
        let bytes = match json.into() {
            Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
            Cow::Owned(text) => Cow::Owned(text.into_bytes()),
        };
        Payload::trusted_bytes(bytes)
    }

    /// As [`Payload::trusted`], for JSON the caller wrote as UTF-8 bytes from text it holds
    /// (a buffer of answers and inputs): not checked for UTF-8 again either, which was a pass
    /// over the record's largest part per query. Bytes that are not UTF-8 would break the
    /// line's text.
    pub fn trusted_bytes(json: impl Into<Cow<'a, [u8]>>) -> Payload<'a> {
        let json = json.into();
        debug_assert!(
            serde_json::from_slice::<&RawValue>(&json).is_ok(),
            "a trusted payload is not JSON: {}",
            String::from_utf8_lossy(&json)
        );
        Payload(json)
    }

    /// The JSON text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Checked JSON text.
impl From<Box<RawValue>> for Payload<'static> {
    fn from(raw: Box<RawValue>) -> Payload<'static> {
        let text: Box<str> = raw.into();
        Payload(Cow::Owned(text.into_boxed_bytes().into_vec()))
    }
}

/// As raw JSON, for serializers other than the line writer (checked here again).
impl Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_slice(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Without chrono's `serde` feature (it would rebuild the Arrow stack with it): the time as
/// RFC 3339 text, which every JSON reader parses.
fn rfc3339<S: serde::Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl<'a> AuditRecord<'a> {
    /// A record of `stream` for `service` at `time`, with nothing else filled in.
    pub fn new(
        stream: Stream,
        time: DateTime<Utc>,
        request_id: impl Into<Cow<'a, str>>,
        service: impl Into<Cow<'a, str>>,
        status: u16,
    ) -> AuditRecord<'a> {
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
            timing: &[],
        }
    }

    /// Where the record goes.
    pub fn key(&self) -> RecordKey<'_> {
        RecordKey {
            stream: self.stream,
            time: self.time,
            service: &self.service,
        }
    }
}

/// Where a record goes: its stream, its service (the query stream's partitions), the hour of
/// its time.
#[derive(Debug, Clone, Copy)]
pub struct RecordKey<'a> {
    pub stream: Stream,
    pub time: DateTime<Utc>,
    pub service: &'a str,
}

impl RecordKey<'_> {
    /// Whether the record goes to `partition`'s segment (without building its partition).
    pub(crate) fn belongs_to(&self, partition: &Partition) -> bool {
        self.stream == partition.stream
            && self.time.timestamp().div_euclid(3600) == partition.hour
            && match self.stream {
                Stream::Queries => self.service == partition.service,
                Stream::Auth | Stream::Admin => partition.service.is_empty(),
            }
    }

    /// The segment the record goes to: its stream, its service (queries only), its hour.
    pub(crate) fn partition(&self) -> Partition {
        Partition {
            stream: self.stream,
            service: match self.stream {
                Stream::Queries => self.service.to_owned(),
                Stream::Auth | Stream::Admin => String::new(),
            },
            hour: self.time.timestamp().div_euclid(3600),
        }
    }
}

/// Which payload [`RecordLine::trusted_payload`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadField {
    Inputs,
    Outputs,
}

/// A record's JSON line, written straight into its batch by the caller of
/// [`crate::AuditLog::log_with`], field by field from the caller's own state: no
/// [`AuditRecord`] assembled, no payload copied into a buffer of its own first. Each method
/// writes its fields of [`AuditRecord`] (those it is given `None` for left out); called once
/// each, in the order below, the line is the one [`AuditRecord`] with the same fields writes,
/// byte for byte (the record's own line is written through them).
#[derive(Debug)]
pub struct RecordLine<'o> {
    out: &'o mut Vec<u8>,
}

impl<'o> RecordLine<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>) -> RecordLine<'o> {
        RecordLine { out }
    }

    /// `time`, `request_id` and `item`: first.
    pub fn start(&mut self, time: &DateTime<Utc>, request_id: &str, item: Option<usize>) {
        let out = &mut *self.out;
        write_time(out, time);
        write_str(out, request_id);
        if let Some(item) = item {
            out.extend_from_slice(b",\"item\":");
            out.extend_from_slice(itoa::Buffer::new().format(item).as_bytes());
        }
    }

    /// `service`, `endpoint`, `endpoint_kind`, `generation`, `deployment_id`, `api_key_id`:
    /// copied from this thread's last line when they are the same (six comparisons), else
    /// written and kept. Written each time, their string scans and copies were a tenth of the
    /// log's instructions per query.
    pub fn names(&mut self, names: Names<'_>) {
        let out = &mut *self.out;
        let copied = LAST_NAMES.try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return false;
            };
            let same = last
                .names
                .iter()
                .zip(names)
                .all(|((present, kept), name)| (*present).then_some(kept.as_str()) == name);
            if !same {
                let LastNames { names: kept, text } = &mut *last;
                for ((present, kept), name) in kept.iter_mut().zip(names) {
                    *present = name.is_some();
                    kept.clear();
                    kept.push_str(name.unwrap_or_default());
                }
                text.clear();
                write_names(text, names);
            }
            out.extend_from_slice(&last.text);
            true
        });
        if copied != Ok(true) {
            write_names(out, names);
        }
    }

    /// `client_address`.
    pub fn client_address(&mut self, address: Option<&SocketAddr>) {
        if let Some(address) = address {
            self.out.extend_from_slice(b",\"client_address\":\"");
            write_address(self.out, address);
            self.out.push(b'"');
        }
    }

    /// `context`.
    pub fn context(&mut self, context: Option<&Value>) {
        if let Some(context) = context {
            self.out.extend_from_slice(b",\"context\":");
            write_json(self.out, context);
        }
    }

    /// `inputs` or `outputs` (inputs first), as what `write` appends to the line: JSON text,
    /// UTF-8, which the caller vouches for as [`Payload::trusted_bytes`] does (checked in debug
    /// builds). `write` returns what the caller wants back (whether it cut the payload, say).
    pub fn trusted_payload<R>(
        &mut self,
        field: PayloadField,
        write: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> R {
        self.out.extend_from_slice(match field {
            PayloadField::Inputs => b",\"inputs\":",
            PayloadField::Outputs => b",\"outputs\":",
        });
        let start = self.out.len();
        let result = write(self.out);
        debug_assert!(
            serde_json::from_slice::<&RawValue>(&self.out[start..]).is_ok(),
            "a trusted payload is not JSON: {}",
            String::from_utf8_lossy(&self.out[start..])
        );
        result
    }

    /// `truncated`, `status`, `error_type`, `error_message`, `timing`, and the line's end:
    /// last.
    pub fn end(
        self,
        truncated: bool,
        status: u16,
        (error_type, error_message): (Option<&str>, Option<&str>),
        timing: &[(&str, u64)],
    ) {
        let out = self.out;
        if truncated {
            out.extend_from_slice(b",\"truncated\":true");
        }
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        for (name, value) in [
            (&b",\"error_type\":"[..], error_type),
            (b",\"error_message\":", error_message),
        ] {
            if let Some(value) = value {
                out.extend_from_slice(name);
                write_str(out, value);
            }
        }
        if !timing.is_empty() {
            out.extend_from_slice(b",\"timing\":{");
            for (i, (step, micros)) in timing.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, step);
                out.push(b':');
                out.extend_from_slice(itoa::Buffer::new().format(*micros).as_bytes());
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"}\n");
    }
}

impl AuditRecord<'_> {
    /// Appends the record's JSON line (and its newline) to `out`: the same bytes as serde's
    /// serialization of the record, written field by field, with no intermediate string (the
    /// time formatted from its parts, strings copied as they are unless they need escaping).
    #[cfg(test)]
    pub(crate) fn write_line(&self, out: &mut Vec<u8>) {
        self.write_to(RecordLine::new(out));
    }

    pub(crate) fn write_to(&self, mut line: RecordLine<'_>) {
        line.start(&self.time, &self.request_id, self.item);
        line.names(self.names());
        line.client_address(self.client_address.as_ref());
        line.context(self.context.as_deref());
        for (field, payload) in [
            (PayloadField::Inputs, &self.inputs),
            (PayloadField::Outputs, &self.outputs),
        ] {
            if let Some(payload) = payload {
                line.trusted_payload(field, |out| out.extend_from_slice(payload.as_bytes()));
            }
        }
        line.end(
            self.truncated,
            self.status,
            (self.error_type.as_deref(), self.error_message.as_deref()),
            self.timing,
        );
    }
}

/// The fields from `service` to `api_key_id`, which a node's queries repeat from record to
/// record.
pub type Names<'r> = [Option<&'r str>; 6];

/// A thread's last [`Names`] and their text in the line. A name's buffer is kept while the
/// name is absent, so records that alternate a field's presence do not allocate.
#[derive(Default)]
struct LastNames {
    names: [(bool, String); 6],
    text: Vec<u8>,
}

thread_local! {
    static LAST_NAMES: RefCell<LastNames> = RefCell::default();
}

impl AuditRecord<'_> {
    fn names(&self) -> Names<'_> {
        [
            Some(&self.service),
            self.endpoint.as_ref(),
            self.endpoint_kind.as_ref(),
            self.generation.as_ref(),
            self.deployment_id.as_ref(),
            self.api_key_id.as_ref(),
        ]
        .map(|name| name.map(|n| &**n))
    }
}

fn write_names(out: &mut Vec<u8>, names: Names<'_>) {
    const FIELDS: [&[u8]; 6] = [
        b",\"service\":",
        b",\"endpoint\":",
        b",\"endpoint_kind\":",
        b",\"generation\":",
        b",\"deployment_id\":",
        b",\"api_key_id\":",
    ];
    for (field, name) in FIELDS.into_iter().zip(names) {
        if let Some(name) = name {
            out.extend_from_slice(field);
            write_str(out, name);
        }
    }
}

/// A JSON string, as serde_json writes it: copied as is when nothing needs escaping (the
/// common case, found eight bytes at a time), else escaped by serde_json. For callers writing
/// a [`RecordLine`]'s payload from their own state.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    write_str(out, s);
}

/// [`write_json_str`].
fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        write_json(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether `bytes` hold one that a JSON string escapes (a control character, `"` or `\`),
/// eight at a time (a string under 8 bytes padded with a plain byte). A record's strings are
/// short (ids, names: 5 to 40 bytes), so a byte loop, or a vector loop's byte-by-byte tail,
/// went through most of them one byte at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Nonzero exactly when a byte of `word` is below `n` (n <= 0x80): a byte below `n` borrows
    // into its high bit, which `!word` keeps only for bytes below 0x80.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let escaped = |word: u64| {
        below(word, 0x20)
            | below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
    };
    let load = |chunk: &[u8]| {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        u64::from_le_bytes(word)
    };
    let mut words = bytes.chunks_exact(8);
    let mut found = 0;
    for chunk in &mut words {
        found |= escaped(load(chunk));
    }
    if !words.remainder().is_empty() {
        found |= escaped(match bytes.len().checked_sub(8) {
            // The last 8 bytes, overlapping the word before: padding the rest instead was a
            // copy of a variable length, a call per string.
            Some(last) => load(&bytes[last..]),
            // Under 8 bytes, without a loop: two 4-byte halves that overlap, or for 1 to 3
            // bytes the first, the middle and the last (which are all of them), padded.
            None if bytes.len() >= 4 => {
                let half = |at: usize| {
                    let mut half = [0; 4];
                    half.copy_from_slice(&bytes[at..at + 4]);
                    u64::from(u32::from_le_bytes(half))
                };
                half(0) | half(bytes.len() - 4) << 32
            }
            None => {
                let (len, pad) = (bytes.len(), b'a');
                let (first, middle, last) = (bytes[0], bytes[len / 2], bytes[len - 1]);
                u64::from_le_bytes([first, middle, last, pad, pad, pad, pad, pad])
            }
        });
    }
    found != 0
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing a string or a JSON value to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// An address as `Display` writes it (nothing to escape): IPv4 by hand, put together on the
/// stack and copied once (`core::fmt` took half of a record's line, a copy per part a tenth);
/// IPv6 through `Display`.
fn write_address(out: &mut Vec<u8>, address: &SocketAddr) {
    match address {
        SocketAddr::V4(v4) => {
            // `255.255.255.255:65535`, and room for the last octet's three digits.
            let mut text = [0; 24];
            let mut at = 0;
            for octet in v4.ip().octets() {
                let (digits, len) = OCTETS[usize::from(octet)];
                text[at..at + 3].copy_from_slice(&digits);
                text[at + len] = b'.';
                at += len + 1;
            }
            text[at - 1] = b':';
            let mut port = itoa::Buffer::new();
            let port = port.format(v4.port()).as_bytes();
            text[at..at + port.len()].copy_from_slice(port);
            out.extend_from_slice(&text[..at + port.len()]);
        }
        SocketAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Each byte's decimal digits (left-aligned) and their count.
const OCTETS: [([u8; 3], usize); 256] = {
    let mut octets = [([0; 3], 0); 256];
    let mut i = 0;
    while i < 256 {
        let (hundreds, tens, ones) = (i / 100, i / 10 % 10, i % 10);
        octets[i] = if i >= 100 {
            (
                [b'0' + hundreds as u8, b'0' + tens as u8, b'0' + ones as u8],
                3,
            )
        } else if i >= 10 {
            ([b'0' + tens as u8, b'0' + ones as u8, 0], 2)
        } else {
            ([b'0' + ones as u8, 0, 0], 1)
        };
        i += 1;
    }
    octets
};

thread_local! {
    /// The second of this thread's last record and its `YYYY-MM-DDTHH:MM:SS`: the calendar
    /// date is worked out once a second, not per record.
    static LAST_SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
}

/// `{"time":"YYYY-MM-DDTHH:MM:SS.ffffffZ","request_id":`, the time as
/// `to_rfc3339_opts(Micros, true)` writes it, put together on the stack and copied once; years
/// outside 0..=9999 and leap seconds through chrono itself.
fn write_time(out: &mut Vec<u8>, time: &DateTime<Utc>) {
    const BEFORE: &[u8] = b"{\"time\":\"";
    const AFTER: &[u8] = b"\",\"request_id\":";
    let (second, nanos) = (time.timestamp(), time.timestamp_subsec_nanos());
    let cached = LAST_SECOND
        .try_with(|last| {
            let (last_second, text) = last.get();
            if last_second == second {
                return Some(text);
            }
            let text = second_text(time)?;
            last.set((second, text));
            Some(text)
        })
        .ok()
        .flatten();
    // A leap second's nanoseconds go beyond a billion: chrono writes it as `:60`.
    match cached.or_else(|| second_text(time)) {
        Some(text) if nanos < 1_000_000_000 => {
            let mut line = [0; BEFORE.len() + 27 + AFTER.len()];
            let (before, rest) = line.split_at_mut(BEFORE.len());
            before.copy_from_slice(BEFORE);
            let (date, rest) = rest.split_at_mut(19);
            date.copy_from_slice(&text);
            rest[0] = b'.';
            let mut micros = nanos / 1000;
            for digit in rest[1..7].iter_mut().rev() {
                *digit = b'0' + (micros % 10) as u8;
                micros /= 10;
            }
            rest[7] = b'Z';
            rest[8..].copy_from_slice(AFTER);
            out.extend_from_slice(&line);
        }
        _ => {
            out.extend_from_slice(BEFORE);
            let text = time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(AFTER);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of `time`'s second, for years 0 to 9999.
fn second_text(time: &DateTime<Utc>) -> Option<[u8; 19]> {
    use chrono::{Datelike, Timelike};
    // Once: each accessor of a `DateTime` converts it to local (UTC) time again.
    let time = time.naive_utc();
    let year = u32::try_from(time.year()).ok().filter(|y| *y <= 9999)?;
    let mut text = Vec::with_capacity(19);
    write_digits(&mut text, year, 4);
    text.push(b'-');
    write_digits(&mut text, time.month(), 2);
    text.push(b'-');
    write_digits(&mut text, time.day(), 2);
    text.push(b'T');
    write_digits(&mut text, time.hour(), 2);
    text.push(b':');
    write_digits(&mut text, time.minute(), 2);
    text.push(b':');
    write_digits(&mut text, time.second(), 2);
    text.try_into().ok()
}

/// `n` in `width` decimal digits, zero-padded (`width` ≤ 9).
fn write_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let mut buffer = [b'0'; 9];
    for slot in buffer[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buffer[..width]);
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
    use proptest::prelude::*;

    /// A thread's records whose names repeat, change one at a time (a field gone, another
    /// value, one needing escapes) and come back: each line is still serde's.
    #[test]
    fn names_kept_from_the_last_record_are_never_stale() {
        let time = Utc.with_ymd_and_hms(2026, 12, 6, 1, 2, 3).unwrap();
        let base = || {
            let mut r = AuditRecord::new(Stream::Queries, time, "r", "shop", 200);
            r.endpoint = Some("price".into());
            r.endpoint_kind = Some("dataset-lookup".into());
            r.generation = Some("g-1".into());
            r.api_key_id = Some("k1".into());
            r
        };
        let changes: [fn(&mut AuditRecord<'_>); 8] = [
            |_| {},
            |_| {},
            |r| r.generation = Some("g-2".into()),
            |r| r.api_key_id = None,
            |r| r.deployment_id = Some("prod \"eu\"".into()),
            |r| r.service = "shop2".into(),
            |r| r.endpoint = None,
            |_| {},
        ];
        for change in changes {
            let mut record = base();
            change(&mut record);
            let mut line = Vec::new();
            record.write_line(&mut line);
            let mut expected = serde_json::to_vec(&record).unwrap();
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    fn escaped_one_by_one(bytes: &[u8]) -> bool {
        bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    /// Every byte value at every position of strings of 1 to 24 bytes (within a word, at a
    /// word's edges, in the padded last word), among plain bytes and among bytes of 0x80 and
    /// up (UTF-8's), which must not pass for control characters.
    #[test]
    fn every_byte_json_escapes_is_found_wherever_it_is() {
        for len in 1..=24 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    for filler in [b'a', 0x80, 0xff, 0x21, 0x5d] {
                        let mut text = vec![filler; len];
                        text[at] = byte;
                        assert_eq!(
                            needs_escape(&text),
                            escaped_one_by_one(&text),
                            "{byte:#04x} at {at} of {len} among {filler:#04x}"
                        );
                    }
                }
            }
        }
        assert!(!needs_escape(b""));
    }

    #[test]
    fn records_go_to_their_service_and_hour() {
        let time = Utc.with_ymd_and_hms(2026, 12, 5, 7, 30, 0).unwrap();
        let record = AuditRecord::new(Stream::Queries, time, "r1", "churn", 200);
        let partition = record.key().partition();
        assert_eq!(partition.folder(), "service=churn/date=2026-12-05/hour=07");
        let name = partition.spool_name("node1-0001");
        assert_eq!(
            Partition::from_spool_name(&name),
            Some((partition, "node1-0001".to_owned()))
        );
        let auth = AuditRecord::new(Stream::Auth, time, "r2", "churn", 401);
        let auth = auth.key().partition();
        assert_eq!(auth.folder(), "_auth/date=2026-12-05/hour=07");
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["service"], "churn");
        assert_eq!(json["time"], "2026-12-05T07:30:00.000000Z");
        assert!(json.get("inputs").is_none() && json.get("truncated").is_none());
    }

    #[test]
    fn times_are_chronos_text_within_a_second_and_across_seconds() {
        let chrono_text =
            |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let base = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 1_500_000))
            .unwrap()
            .and_utc();
        let times = [
            base,
            base + chrono::Duration::microseconds(1),
            base + chrono::Duration::microseconds(999_999),
            base + chrono::Duration::seconds(1),
            base - chrono::Duration::days(400),
            base,
            leap,
            leap - chrono::Duration::milliseconds(500),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            base,
        ];
        for time in times {
            let mut text = Vec::new();
            write_time(&mut text, &time);
            let expected = format!("{{\"time\":\"{}\",\"request_id\":", chrono_text(&time));
            assert_eq!(String::from_utf8(text).unwrap(), expected);
        }
    }

    #[test]
    fn ipv4_addresses_are_as_display_writes_them() {
        for octet in 0..=255u8 {
            for (port, at) in [(0, 0), (9, 1), (80, 2), (443, 3), (65535, 0), (10000, 2)] {
                let mut octets = [255, 0, 1, 10];
                octets[at] = octet;
                let address = SocketAddr::from((octets, port));
                let mut text = Vec::new();
                write_address(&mut text, &address);
                assert_eq!(String::from_utf8(text).unwrap(), address.to_string());
            }
        }
    }

    /// A string that often needs escaping.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9-]{0,12}",
            any::<String>(),
            Just("q\"b\\n\n\u{1}é".to_owned())
        ]
    }

    prop_compose! {
        /// A record (owning its text) and its timing steps, which a record borrows.
        fn any_record()(
            micros in -62_135_596_800_000_000i64..253_402_300_799_999_999,
            stream in prop_oneof![Just(Stream::Queries), Just(Stream::Auth), Just(Stream::Admin)],
            (request_id, service) in (text(), text()),
            item in proptest::option::of(0usize..10_000),
            address in proptest::option::of(any::<SocketAddr>()),
            strings in proptest::collection::vec(proptest::option::of(text()), 8),
            context in proptest::option::of(text()),
            (inputs, outputs) in (proptest::option::of(text()), proptest::option::of(-1e6f64..1e6)),
            truncated in any::<bool>(),
            status in 100u16..600,
            timing in proptest::collection::vec((text(), any::<u64>()), 0..4),
        ) -> (AuditRecord<'static>, Vec<(String, u64)>) {
            let time = DateTime::from_timestamp_micros(micros).unwrap();
            let mut r = AuditRecord::new(stream, time, request_id, service, status);
            let owned = |i: usize| strings[i].clone().map(Cow::Owned);
            r.item = item;
            r.endpoint = owned(0);
            r.endpoint_kind = owned(1);
            r.generation = owned(2);
            r.deployment_id = owned(3);
            r.api_key_id = owned(4);
            r.client_address = address;
            r.error_type = owned(6);
            r.error_message = owned(7);
            r.context = context
                .map(|c| Cow::Owned(serde_json::json!({"note": c, "n": [1, 2.5, null]})));
            r.inputs = inputs.map(|i| {
                serde_json::value::to_raw_value(&serde_json::json!({"key": i})).unwrap().into()
            });
            r.outputs = outputs.map(|o| Payload::trusted(serde_json::to_string(&o).unwrap()));
            r.truncated = truncated;
            (r, timing)
        }
    }

    proptest! {
        // The hand-written line is byte for byte serde's serialization of the record.
        #[test]
        fn lines_are_serdes_serialization((mut record, timing) in any_record()) {
            let steps: Vec<(&str, u64)> = timing.iter().map(|(s, m)| (s.as_str(), *m)).collect();
            record.timing = &steps;
            let mut line = Vec::new();
            record.write_line(&mut line);
            let mut expected = serde_json::to_vec(&record).unwrap();
            expected.push(b'\n');
            prop_assert_eq!(String::from_utf8(line).unwrap(), String::from_utf8(expected).unwrap());
        }

        #[test]
        fn the_word_scan_finds_what_the_byte_scan_finds(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(needs_escape(&bytes), escaped_one_by_one(&bytes));
        }
    }
}
