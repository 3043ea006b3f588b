//! A lookup: a table indexed on its key columns, with the endpoint's behaviours.

use crate::error::{Error, Result};
use crate::index::KeyIndex;
use crate::json::ColumnWriter;
use crate::key::{Converted, KeyType, KeyValue, TypedColumn, convert};
use crate::pg::{Answer, ReferencedLookup, Written};
use crate::record::{JsonRef, Record};
use crate::table::Table;
use serde_json::{Map, Value};
use smallvec::SmallVec;
use std::sync::Arc;

/// What to do when a key is missing from the input, matches nothing, or matches several rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupAction {
    /// The query fails (a client error).
    Fail,
    /// The record is answered `ignored: true` with an [`IgnoreReason`].
    Ignore,
    /// The record is kept; every output column is null.
    Null,
    /// The first matching row in table order (only for several matches).
    First,
}

/// A key column and the name its value has in the query's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub column: String,
    pub input: String,
}

/// A column copied out, under a possibly different name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    pub column: String,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupConfig {
    pub keys: Vec<KeyColumn>,
    /// Empty: every column of the table under its own name.
    pub columns: Vec<OutputColumn>,
    pub on_missing_key: LookupAction,
    pub on_no_match: LookupAction,
    pub on_multiple_matches: LookupAction,
}

impl LookupConfig {
    /// A lookup on the given key columns (input names = column names), returning every column,
    /// ignoring records that match nothing or several rows, failing on a missing key.
    pub fn on_keys(keys: &[&str]) -> LookupConfig {
        LookupConfig {
            keys: keys
                .iter()
                .map(|k| KeyColumn {
                    column: (*k).to_owned(),
                    input: (*k).to_owned(),
                })
                .collect(),
            columns: Vec::new(),
            on_missing_key: LookupAction::Fail,
            on_no_match: LookupAction::Ignore,
            on_multiple_matches: LookupAction::Ignore,
        }
    }
}

/// Why a record was answered `ignored: true`; the protocol's `ignoreReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    MissingKey,
    NoMatch,
    MultipleMatches,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::MissingKey => "MISSING_LOOKUP_KEY",
            IgnoreReason::NoMatch => "NO_LOOKUP_MATCH",
            IgnoreReason::MultipleMatches => "MULTIPLE_LOOKUP_MATCHES",
        }
    }
}

/// The answer for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The matching row.
    Row(usize),
    /// No row, but the record is kept with null outputs.
    Nulls,
    Ignored(IgnoreReason),
}

/// Batches at least this large are written through gathered columns.
const GATHER_THRESHOLD: usize = 8;

/// A record's key, ready to probe.
pub(crate) enum Key<'a> {
    Values(SmallVec<[KeyValue<'a>; 4]>),
    /// A key that cannot match anything (NaN).
    NeverMatches,
    /// A missing key already decided the answer.
    Decided(Match),
}

/// What enrichment did to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enriched {
    /// The features were filled (or set to null, with the `null` behaviour).
    Applied,
    /// The record is to be answered `ignored: true` with this reason.
    Ignored(IgnoreReason),
}

/// One enrichment step: a lookup in a bundled table, or in a referenced one (PostgreSQL).
#[derive(Debug)]
pub enum EnrichStep {
    Bundled(Lookup),
    Referenced(Arc<ReferencedLookup>),
}

/// Why a batch could not be enriched: `record` (None: every record, the database being
/// unreachable) failed at `step` (0-based).
#[derive(Debug)]
pub struct EnrichError {
    pub record: Option<usize>,
    pub step: usize,
    pub source: Error,
}

/// Enrichment steps applied in order to a record's features, as prediction endpoints do
/// before scoring: each step may use features filled by the steps before it.
#[derive(Debug, Default)]
pub struct Enrichment {
    steps: Vec<EnrichStep>,
}

impl Enrichment {
    /// Steps on bundled tables only.
    pub fn new(steps: Vec<Lookup>) -> Enrichment {
        Enrichment::with_steps(steps.into_iter().map(EnrichStep::Bundled).collect())
    }

    pub fn with_steps(steps: Vec<EnrichStep>) -> Enrichment {
        Enrichment { steps }
    }

    pub fn steps(&self) -> &[EnrichStep] {
        &self.steps
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether a step reads a referenced table: then records are enriched with
    /// [`Enrichment::apply_batch`], which waits for the database.
    pub fn is_referenced(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, EnrichStep::Referenced(_)))
    }

    /// The bundled steps' lookups.
    pub fn lookups(&self) -> impl Iterator<Item = &Lookup> {
        self.steps.iter().filter_map(|s| match s {
            EnrichStep::Bundled(lookup) => Some(lookup),
            EnrichStep::Referenced(_) => None,
        })
    }

    /// Applies every step; stops at the first that ignores the record. An error names the
    /// step (0-based) that failed. A referenced step cannot be applied here (it needs the
    /// database): that is an error naming it; use [`Enrichment::apply_batch`].
    pub fn apply(&self, features: &mut Map<String, Value>) -> Result<Enriched, (usize, Error)> {
        for (i, step) in self.steps.iter().enumerate() {
            let EnrichStep::Bundled(lookup) = step else {
                return Err((
                    i,
                    Error::Config("a referenced step is applied with apply_batch".into()),
                ));
            };
            match lookup.enrich(features) {
                Ok(Enriched::Applied) => {}
                Ok(ignored @ Enriched::Ignored(_)) => return Ok(ignored),
                Err(e) => return Err((i, e)),
            }
        }
        Ok(Enriched::Applied)
    }

    /// Applies every step to every record, step by step: one statement per referenced step
    /// for the whole batch. Each record ends as [`Enrichment::apply`] would leave it (its
    /// steps in order, stopping at the first that ignores it); the error reported is the
    /// first in record order, as `apply` record by record would find it.
    pub async fn apply_batch(
        &self,
        records: &mut [Map<String, Value>],
    ) -> Result<Vec<Enriched>, EnrichError> {
        let mut outcome = vec![Enriched::Applied; records.len()];
        let mut ignored = vec![false; records.len()];
        // Records at or past the first failing one need no more work: it is the answer.
        let mut first_error: Option<EnrichError> = None;
        for (step_index, step) in self.steps.iter().enumerate() {
            let live = first_error
                .as_ref()
                .and_then(|e| e.record)
                .unwrap_or(records.len());
            let pending: Vec<usize> = (0..live).filter(|&i| !ignored[i]).collect();
            if pending.is_empty() {
                break;
            }
            let failed = |record: usize, source: Error| EnrichError {
                record: Some(record),
                step: step_index,
                source,
            };
            match step {
                EnrichStep::Bundled(lookup) => {
                    for &i in &pending {
                        match lookup.enrich(&mut records[i]) {
                            Ok(Enriched::Applied) => {}
                            Ok(Enriched::Ignored(reason)) => {
                                ignored[i] = true;
                                outcome[i] = Enriched::Ignored(reason);
                            }
                            Err(e) => {
                                first_error = Some(failed(i, e));
                                break;
                            }
                        }
                    }
                }
                EnrichStep::Referenced(lookup) => {
                    let mut pending = pending;
                    let written = loop {
                        let refs: Vec<&Map<String, Value>> =
                            pending.iter().map(|&i| &records[i]).collect();
                        match lookup.query(&refs).finish().await {
                            Ok(written) => break written,
                            Err((Some(k), e)) => {
                                // That record's error is the answer, unless one before it
                                // fails later; the records before it still need this step,
                                // whose answers the failed statement did not return.
                                first_error = Some(failed(pending[k], e));
                                pending.truncate(k);
                                if pending.is_empty() {
                                    break Written::default();
                                }
                            }
                            Err((None, e)) => {
                                return Err(EnrichError {
                                    record: None,
                                    step: step_index,
                                    source: e,
                                });
                            }
                        }
                    };
                    for (k, answer) in written.answers.iter().enumerate() {
                        let i = pending[k];
                        match answer {
                            Answer::Ignored(reason) => {
                                ignored[i] = true;
                                outcome[i] = Enriched::Ignored(*reason);
                            }
                            Answer::Data(range) => {
                                // The same values `Outputs::set_features` sets, read back
                                // from the same writers' JSON.
                                let row: Map<String, Value> =
                                    serde_json::from_slice(&written.buffer[range.clone()])
                                        .map_err(|e| {
                                            failed(i, Error::Config(format!("unreadable row: {e}")))
                                        })?;
                                records[i].extend(row);
                            }
                        }
                    }
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(outcome),
        }
    }
}

/// A table indexed on key columns, answering lookups.
#[derive(Debug)]
pub struct Lookup {
    table: Arc<Table>,
    index: KeyIndex,
    keys: Vec<(String, KeyType)>,
    outputs: Outputs,
    config: LookupConfig,
}

impl Lookup {
    /// Indexes `table` on the configured keys. Fails if a column is unknown or of a type
    /// lookups cannot use, or if the configuration is inconsistent.
    pub fn new(table: Arc<Table>, config: LookupConfig) -> Result<Lookup> {
        check_config(&config)?;
        let batch = table.batch();
        let mut key_arrays = Vec::with_capacity(config.keys.len());
        let mut keys = Vec::with_capacity(config.keys.len());
        for key in &config.keys {
            let array = batch.column(table.column_index(&key.column)?);
            let key_array = TypedColumn::new(array).ok_or_else(|| Error::UnsupportedType {
                dataset: table.name().to_owned(),
                column: key.column.clone(),
                data_type: array.data_type().to_string(),
            })?;
            keys.push((key.input.clone(), key_array.key_type()));
            key_arrays.push(key_array);
        }
        let columns = output_columns(&config, table.column_names());
        let mut arrays = Vec::with_capacity(columns.len());
        for column in &columns {
            arrays.push(batch.column(table.column_index(&column.column)?).clone());
        }
        let outputs = Outputs::new(table.name(), &columns, &arrays)?;
        let index = KeyIndex::build(key_arrays, table.num_rows());
        Ok(Lookup {
            table,
            index,
            keys,
            outputs,
            config,
        })
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    pub fn config(&self) -> &LookupConfig {
        &self.config
    }

    /// Number of distinct (non-NULL) keys in the index.
    pub fn distinct_keys(&self) -> usize {
        self.index.distinct_keys()
    }

    /// Heap bytes of the index alone; the table's are [`Table::resident_bytes`].
    pub fn index_bytes(&self) -> usize {
        self.index.memory_bytes()
    }

    /// Finds the row for a record whose key values are under the configured input names.
    /// A JSON `null` counts as a missing key.
    pub fn find<R: Record + ?Sized>(&self, data: &R) -> Result<Match> {
        let describe = || self.describe_keys(data);
        match self.key_of(data)? {
            Key::Values(values) => {
                let rows = self.index.probe(&values);
                self.decide(describe, rows)
            }
            Key::Decided(decided) => Ok(decided),
            Key::NeverMatches => self.decide(describe, std::iter::empty()),
        }
    }

    /// Finds the row for a key given as typed values, one per key column in the configured
    /// order: what [`Lookup::find`] does after reading and converting the JSON, for programs
    /// that already hold typed keys. A float NaN matches nothing; the no-match and
    /// several-matches behaviours apply as configured.
    pub fn find_key(&self, key: &[KeyValue<'_>]) -> Result<Match> {
        if key.len() != self.keys.len() {
            return Err(Error::KeyArity {
                expected: self.keys.len(),
                got: key.len(),
            });
        }
        let mut never_matches = false;
        for ((input, key_type), value) in self.keys.iter().zip(key) {
            if !key_type.accepts(value) {
                return Err(Error::InvalidKey {
                    input: input.clone(),
                    expected: key_type.describe(),
                    got: format!("{value:?}"),
                });
            }
            never_matches |= matches!(value, KeyValue::Float(f) if f.is_nan());
        }
        let describe = || {
            self.keys
                .iter()
                .zip(key)
                .map(|((input, _), value)| format!("{input}={value:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if never_matches {
            return self.decide(describe, std::iter::empty());
        }
        self.decide(describe, self.index.probe(key))
    }

    /// Finds the rows of many records: converts and hashes every key first, then probes, so
    /// the probes' cache misses overlap instead of following one another. Same answers as
    /// [`Lookup::find`] on each record; an error comes with the index of its record.
    pub fn find_batch<R: Record + ?Sized>(
        &self,
        records: &[&R],
    ) -> std::result::Result<Vec<Match>, (usize, Error)> {
        let mut keys = Vec::with_capacity(records.len());
        // A key error stops the conversion; the records before it are still probed first, so
        // the error reported is the first in record order, as one-by-one lookups would give.
        let mut pending = None;
        for (i, data) in records.iter().enumerate() {
            match self.key_of(*data) {
                Ok(key) => {
                    let hash = match &key {
                        Key::Values(values) => self.index.hash_values(values),
                        _ => 0,
                    };
                    keys.push((hash, key));
                }
                Err(e) => {
                    pending = Some((i, e));
                    break;
                }
            }
        }
        let mut matches = Vec::with_capacity(records.len());
        for (i, (hash, key)) in keys.iter().enumerate() {
            let found = match key {
                Key::Values(values) => self.decide(
                    || self.describe_keys(records[i]),
                    self.index.probe_hashed(*hash, values),
                ),
                Key::Decided(decided) => Ok(*decided),
                Key::NeverMatches => {
                    self.decide(|| self.describe_keys(records[i]), std::iter::empty())
                }
            };
            matches.push(found.map_err(|e| (i, e))?);
        }
        match pending {
            Some(error) => Err(error),
            None => Ok(matches),
        }
    }

    fn key_of<'a, R: Record + ?Sized>(&self, data: &'a R) -> Result<Key<'a>> {
        key_of(&self.keys, &self.config, data)
    }

    fn decide(
        &self,
        describe: impl FnOnce() -> String,
        rows: impl Iterator<Item = usize>,
    ) -> Result<Match> {
        decide(&self.config, self.table.name(), describe, rows)
    }

    fn describe_keys<R: Record + ?Sized>(&self, data: &R) -> String {
        describe_keys(&self.keys, data)
    }

    /// Writes the output columns of `row` as a JSON object; `None` writes every column null.
    pub fn write_row(&self, row: Option<usize>, out: &mut Vec<u8>) {
        self.outputs.write_row(row, out);
    }

    /// The output columns of `row` as a JSON object value (for callers that need a tree);
    /// `None` gives every column null.
    pub fn row_to_value(&self, row: Option<usize>) -> Value {
        self.outputs.row_to_value(row)
    }

    /// Writes the answers of a batch: for each match with data (a row, or nulls) its output
    /// columns as a JSON object, one after the other in `out`; returns each match's byte range
    /// (None for an ignored record). Beyond a few records, each output column is first
    /// gathered with Arrow's `take` kernel, so the reads of all the rows overlap instead of
    /// waiting row by row (14% faster on 1,000 random rows of a 1M-row table).
    pub fn write_matches(
        &self,
        matches: &[Match],
        out: &mut Vec<u8>,
    ) -> Vec<Option<std::ops::Range<usize>>> {
        self.outputs.write_matches(matches, out)
    }

    /// Names of the output columns, in output order.
    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.outputs.names()
    }

    /// Enriches a record: finds its row (key values are read from `features` under the
    /// configured input names) and sets each output column as a feature, overriding a feature
    /// of the same name. With the `null` behaviour the output features are set to null.
    pub fn enrich(&self, features: &mut Map<String, Value>) -> Result<Enriched> {
        let row = match self.find(features)? {
            Match::Row(row) => Some(row),
            Match::Nulls => None,
            Match::Ignored(reason) => return Ok(Enriched::Ignored(reason)),
        };
        self.outputs.set_features(row, features);
        Ok(Enriched::Applied)
    }
}

/// The output columns to write: the configured ones, or every column of the table (`table_columns`,
/// in table order) under its own name.
pub(crate) fn output_columns<'a>(
    config: &LookupConfig,
    table_columns: impl IntoIterator<Item = &'a str>,
) -> Vec<OutputColumn> {
    if config.columns.is_empty() {
        table_columns
            .into_iter()
            .map(|c| OutputColumn {
                column: c.to_owned(),
                output: c.to_owned(),
            })
            .collect()
    } else {
        config.columns.clone()
    }
}

/// A record's key converted to the key columns' types, or the answer already decided by a
/// missing key. `keys` are (input name, type) per key column.
pub(crate) fn key_of<'a, R: Record + ?Sized>(
    keys: &[(String, KeyType)],
    config: &LookupConfig,
    data: &'a R,
) -> Result<Key<'a>> {
    let mut values: SmallVec<[KeyValue<'a>; 4]> = SmallVec::new();
    let mut never_matches = false;
    for (input, key_type) in keys {
        match data.field(input) {
            None | Some(JsonRef::Null) => return on_missing_key(config, input).map(Key::Decided),
            Some(value) => match convert(input, *key_type, value)? {
                Converted::Value(v) => values.push(v),
                Converted::NeverMatches => never_matches = true,
            },
        }
    }
    Ok(if never_matches {
        Key::NeverMatches
    } else {
        Key::Values(values)
    })
}

/// Applies the no-match and several-matches behaviours to the rows found (in table order).
/// `describe` names the key in errors (only called when one is returned).
pub(crate) fn decide(
    config: &LookupConfig,
    dataset: &str,
    describe: impl FnOnce() -> String,
    mut rows: impl Iterator<Item = usize>,
) -> Result<Match> {
    let Some(first) = rows.next() else {
        return match config.on_no_match {
            LookupAction::Fail => Err(Error::NoMatch {
                dataset: dataset.to_owned(),
                keys: describe(),
            }),
            LookupAction::Ignore => Ok(Match::Ignored(IgnoreReason::NoMatch)),
            LookupAction::Null | LookupAction::First => Ok(Match::Nulls),
        };
    };
    if rows.next().is_none() {
        return Ok(Match::Row(first));
    }
    match config.on_multiple_matches {
        LookupAction::First => Ok(Match::Row(first)),
        LookupAction::Null => Ok(Match::Nulls),
        LookupAction::Ignore => Ok(Match::Ignored(IgnoreReason::MultipleMatches)),
        LookupAction::Fail => Err(Error::MultipleMatches {
            dataset: dataset.to_owned(),
            keys: describe(),
            count: 2 + rows.count(),
        }),
    }
}

fn on_missing_key(config: &LookupConfig, input: &str) -> Result<Match> {
    match config.on_missing_key {
        LookupAction::Fail => Err(Error::MissingKey {
            input: input.to_owned(),
        }),
        LookupAction::Ignore => Ok(Match::Ignored(IgnoreReason::MissingKey)),
        LookupAction::Null | LookupAction::First => Ok(Match::Nulls),
    }
}

/// `input=value, ...` for error messages, with the record's JSON values as sent.
pub(crate) fn describe_keys<R: Record + ?Sized>(keys: &[(String, KeyType)], data: &R) -> String {
    keys.iter()
        .map(|(input, _)| format!("{input}={}", data.field(input).unwrap_or(JsonRef::Null)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the behaviours a configuration asks for: a key column at least, no `first` where
/// there is no row to take.
pub(crate) fn check_config(config: &LookupConfig) -> Result<()> {
    if config.keys.is_empty() {
        return Err(Error::Config(
            "a lookup needs at least one key column".into(),
        ));
    }
    for (name, action) in [
        ("on_missing_key", config.on_missing_key),
        ("on_no_match", config.on_no_match),
    ] {
        if action == LookupAction::First {
            return Err(Error::Config(format!(
                "`{name}` cannot be `first`: there is no row to take"
            )));
        }
    }
    Ok(())
}

/// The output columns of a lookup, one JSON writer each over the rows they are read from
/// (the table's, or the rows a database returned).
#[derive(Debug)]
pub(crate) struct Outputs {
    writers: Vec<ColumnWriter>,
}

impl Outputs {
    /// Writers for `columns`, reading `arrays` (one per column, in the same order). Fails on
    /// a type lookups do not support or an output name used twice.
    pub(crate) fn new(
        dataset: &str,
        columns: &[OutputColumn],
        arrays: &[arrow_array::ArrayRef],
    ) -> Result<Outputs> {
        let mut writers: Vec<ColumnWriter> = Vec::with_capacity(columns.len());
        for (column, array) in columns.iter().zip(arrays) {
            let writer = ColumnWriter::new(dataset, &column.column, &column.output, array)?;
            if writers.iter().any(|w| w.name() == writer.name()) {
                return Err(Error::Config(format!(
                    "output column `{}` is named twice",
                    column.output
                )));
            }
            writers.push(writer);
        }
        Ok(Outputs { writers })
    }

    /// Each column's `"name":`, escaped, in order: for rows written from elsewhere than
    /// these writers' arrays (a database's answer).
    pub(crate) fn prefixes(&self) -> impl Iterator<Item = &[u8]> {
        self.writers.iter().map(|w| w.prefix())
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.writers.iter().map(|w| w.name())
    }

    /// Sets each output column of `row` (None: null) as a feature.
    pub(crate) fn set_features(&self, row: Option<usize>, features: &mut Map<String, Value>) {
        for writer in &self.writers {
            features.insert(writer.name().to_owned(), writer.value(row));
        }
    }

    /// Writes the output columns of `row` as a JSON object; `None` writes every column null.
    pub(crate) fn write_row(&self, row: Option<usize>, out: &mut Vec<u8>) {
        if let Some(row) = row {
            let touched = self
                .writers
                .iter()
                .fold(0u64, |acc, w| acc.wrapping_add(w.touch(row)));
            std::hint::black_box(touched);
        }
        out.push(b'{');
        for (i, writer) in self.writers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            writer.write(row, out);
        }
        out.push(b'}');
    }

    /// The output columns of `row` as a JSON object value (for callers that need a tree);
    /// `None` gives every column null.
    pub(crate) fn row_to_value(&self, row: Option<usize>) -> Value {
        Value::Object(
            self.writers
                .iter()
                .map(|w| (w.name().to_owned(), w.value(row)))
                .collect(),
        )
    }

    /// Writes the answers of a batch: for each match with data (a row, or nulls) its output
    /// columns as a JSON object, one after the other in `out`; returns each match's byte range
    /// (None for an ignored record). Beyond a few records, each output column is first
    /// gathered with Arrow's `take` kernel, so the reads of all the rows overlap instead of
    /// waiting row by row (14% faster on 1,000 random rows of a 1M-row table).
    pub(crate) fn write_matches(
        &self,
        matches: &[Match],
        out: &mut Vec<u8>,
    ) -> Vec<Option<std::ops::Range<usize>>> {
        let mut ranges = Vec::with_capacity(matches.len());
        if matches.len() < GATHER_THRESHOLD {
            for found in matches {
                let row = match found {
                    Match::Row(row) => Some(*row),
                    Match::Nulls => None,
                    Match::Ignored(_) => {
                        ranges.push(None);
                        continue;
                    }
                };
                let start = out.len();
                self.write_row(row, out);
                ranges.push(Some(start..out.len()));
            }
            return ranges;
        }
        // A null index gathers nulls in every column: exactly the `Nulls` answer.
        let indices: arrow_array::UInt32Array = matches
            .iter()
            .filter_map(|m| match m {
                Match::Row(row) => Some(Some(*row as u32)),
                Match::Nulls => Some(None),
                Match::Ignored(_) => None,
            })
            .collect();
        let writers: Vec<ColumnWriter> =
            self.writers.iter().map(|w| w.gathered(&indices)).collect();
        let mut gathered = 0;
        for found in matches {
            if matches!(found, Match::Ignored(_)) {
                ranges.push(None);
                continue;
            }
            let start = out.len();
            out.push(b'{');
            for (c, writer) in writers.iter().enumerate() {
                if c > 0 {
                    out.push(b',');
                }
                writer.write(Some(gathered), out);
            }
            out.push(b'}');
            gathered += 1;
            ranges.push(Some(start..out.len()));
        }
        ranges
    }
}
