//! Validation of a `service.toml` spec and of a `manifest.json` manifest.
//!
//! Both run the same endpoint rules; they differ in where files live (the service folder or
//! the archive's file list) and in what is known about dataset columns. Errors carry the file
//! (`service.toml` or `manifest.json`) and the field path, such as `endpoints[2].lookup.keys`.
//! Validation stops at the first problem, in document order.

use crate::error::{Error, Result};
use crate::manifest::*;
use crate::paths::{Expect, archive_path_problem, normalize_spec_path, resolve_in_folder};
use std::collections::{HashMap, HashSet};
use std::path::Path;

pub(crate) const SPEC_FILE: &str = crate::SERVICE_FILE;
pub(crate) const MANIFEST_FILE: &str = crate::MANIFEST_FILE;

/// Whether `s` is a valid id: `[A-Za-z0-9_-]{1,64}`. Service ids, endpoint ids, dataset names,
/// folder names, API key ids and SQL parameter names follow this rule.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is a valid generation (version) id: `[A-Za-z0-9._-]{1,128}`, not starting
/// with `.`.
pub fn is_valid_version(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Whether `s` is a lower-case hex SHA-256 (64 characters of `0-9a-f`).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The byte offsets of a SQL statement's `?` placeholders, skipping those inside string
/// literals (`'...'`, a doubled `''` escaping a quote, and PostgreSQL's `$tag$...$tag$`),
/// quoted identifiers (`"..."`) and comments (`-- ...` to the end of the line, `/* ... */`).
pub fn sql_placeholders(sql: &str) -> Vec<usize> {
    let bytes = sql.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    // Skips to just after the next `close` from `from`, or to the end.
    let skip_to = |from: usize, close: &[u8]| {
        bytes[from..]
            .windows(close.len())
            .position(|w| w == close)
            .map_or(bytes.len(), |p| from + p + close.len())
    };
    while i < bytes.len() {
        i = match bytes[i] {
            b'?' => {
                found.push(i);
                i + 1
            }
            // A doubled quote inside a literal reads as the literal closing and reopening.
            b'\'' => skip_to(i + 1, b"'"),
            b'"' => skip_to(i + 1, b"\""),
            b'-' if bytes.get(i + 1) == Some(&b'-') => skip_to(i + 2, b"\n"),
            b'/' if bytes.get(i + 1) == Some(&b'*') => skip_to(i + 2, b"*/"),
            b'$' => match dollar_tag(&bytes[i..]) {
                Some(tag) => skip_to(i + tag.len(), tag),
                None => i + 1,
            },
            _ => i + 1,
        };
    }
    found
}

/// `$tag$` or `$$` at the start of `rest` (a dollar-quoted string's opening), not `$1`.
fn dollar_tag(rest: &[u8]) -> Option<&[u8]> {
    let end = rest[1..].iter().position(|&b| b == b'$')? + 1;
    let tag = &rest[1..end];
    let valid = tag.first().is_none_or(|b| !b.is_ascii_digit())
        && tag.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
    valid.then_some(&rest[..=end])
}

/// Counts the `?` placeholders of a SQL statement (see [`sql_placeholders`]).
pub fn count_sql_placeholders(sql: &str) -> usize {
    sql_placeholders(sql).len()
}

/// The statement with its `?` placeholders numbered `$1`, `$2`, ... in order, the form
/// PostgreSQL and DataFusion bind positionally.
pub fn number_sql_placeholders(sql: &str) -> String {
    let mut numbered = String::with_capacity(sql.len() + 8);
    let mut last = 0;
    for (n, at) in sql_placeholders(sql).into_iter().enumerate() {
        numbered.push_str(&sql[last..at]);
        numbered.push('$');
        numbered.push_str(&(n + 1).to_string());
        last = at + 1;
    }
    numbered.push_str(&sql[last..]);
    numbered
}

fn check_id(file: &str, path: &str, value: &str, what: &str) -> Result<()> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(Error::invalid(
            file,
            path,
            format!("`{value}` is not a valid {what}; use 1 to 64 letters, digits, `_` or `-`"),
        ))
    }
}

fn check_version(file: &str, path: &str, value: &str) -> Result<()> {
    if is_valid_version(value) {
        Ok(())
    } else {
        Err(Error::invalid(
            file,
            path,
            format!(
                "`{value}` is not a valid version id; use 1 to 128 letters, digits, `.`, `_` or \
                 `-`, not starting with `.`"
            ),
        ))
    }
}

fn check_not_blank(file: &str, path: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(Error::invalid(file, path, "must not be empty"))
    } else {
        Ok(())
    }
}

/// Remembers ids seen so far and reports the second use of one.
struct Seen<'a> {
    file: &'a str,
    ids: HashSet<&'a str>,
}

impl<'a> Seen<'a> {
    fn new(file: &'a str) -> Self {
        Seen {
            file,
            ids: HashSet::new(),
        }
    }

    fn add(&mut self, path: impl Into<String>, id: &'a str) -> Result<()> {
        if self.ids.insert(id) {
            Ok(())
        } else {
            Err(Error::DuplicateId {
                file: self.file.to_string(),
                path: path.into(),
                id: id.to_string(),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared context and endpoint rules
// ---------------------------------------------------------------------------------------------

/// What endpoints may know about a dataset.
#[derive(Debug, Clone)]
pub(crate) enum DatasetInfo<'a> {
    /// Bundled; the column names when known (always in a manifest, in a spec only with an
    /// explicit schema).
    Bundled(Option<Vec<&'a str>>),
    Referenced {
        connection: &'a str,
        table: &'a str,
    },
}

/// Checks that a file named at a field exists, as `Expect` says.
pub(crate) type FileCheck<'a> = dyn Fn(&str, &str, Expect) -> Result<()> + 'a;

pub(crate) struct Context<'a> {
    pub(crate) file: &'static str,
    pub(crate) datasets: HashMap<&'a str, DatasetInfo<'a>>,
    pub(crate) folders: HashSet<&'a str>,
    pub(crate) files: &'a FileCheck<'a>,
}

impl Context<'_> {
    fn invalid(&self, path: impl Into<String>, message: impl Into<String>) -> Error {
        Error::invalid(self.file, path, message)
    }
}

pub(crate) fn validate_endpoints(ctx: &Context<'_>, endpoints: &[EndpointSpec]) -> Result<()> {
    let mut ids = Seen::new(ctx.file);
    for (i, endpoint) in endpoints.iter().enumerate() {
        let p = format!("endpoints[{i}]");
        check_id(ctx.file, &format!("{p}.id"), &endpoint.id, "endpoint id")?;
        ids.add(format!("{p}.id"), &endpoint.id)?;
        validate_endpoint(ctx, &p, endpoint)?;
    }
    Ok(())
}

fn validate_endpoint(ctx: &Context<'_>, p: &str, ep: &EndpointSpec) -> Result<()> {
    let kind = ep.kind;
    let required = kind.section();
    let sections = [
        ("lookup", ep.lookup.is_some()),
        ("model", ep.model.is_some()),
        ("python", ep.python.is_some()),
        ("r", ep.r.is_some()),
        ("sql", ep.sql.is_some()),
    ];
    for (name, present) in sections {
        if present && name != required {
            return Err(ctx.invalid(
                format!("{p}.{name}"),
                format!(
                    "section `{name}` is not allowed for kind `{kind}`, which takes a \
                     `{required}` section"
                ),
            ));
        }
    }
    for (name, present) in sections {
        if !present && name == required {
            return Err(ctx.invalid(
                format!("{p}.{name}"),
                format!("kind `{kind}` needs a `{name}` section ([endpoints.{name}])"),
            ));
        }
    }
    if !ep.enrich.is_empty() && !kind.is_prediction() {
        return Err(ctx.invalid(
            format!("{p}.enrich"),
            format!(
                "`enrich` is not allowed for kind `{kind}`; only prediction kinds (prediction, \
                 clustering, python-prediction, r-prediction) take enrichment lookups"
            ),
        ));
    }
    let pooled = matches!(
        kind,
        EndpointKind::PythonPrediction
            | EndpointKind::PythonFunction
            | EndpointKind::RPrediction
            | EndpointKind::RFunction
    );
    if ep.pool.is_some() && !pooled {
        return Err(ctx.invalid(
            format!("{p}.pool"),
            format!(
                "`pool` is not allowed for kind `{kind}`; only Python and R kinds run worker pools"
            ),
        ));
    }

    if let Some(lookup) = &ep.lookup {
        validate_lookup(ctx, &format!("{p}.lookup"), lookup)?;
    }
    if let Some(model) = &ep.model {
        (ctx.files)(&format!("{p}.model.path"), &model.path, Expect::FileOrDir)?;
    }
    if let Some(python) = &ep.python {
        validate_python(ctx, &format!("{p}.python"), kind, python)?;
    }
    if let Some(r) = &ep.r {
        let rp = format!("{p}.r");
        (ctx.files)(&format!("{rp}.code"), &r.code, Expect::File)?;
        check_not_blank(ctx.file, &format!("{rp}.function"), &r.function)?;
        for (j, package) in r.packages.iter().enumerate() {
            check_not_blank(ctx.file, &format!("{rp}.packages[{j}]"), package)?;
        }
        validate_folder_refs(ctx, &rp, &r.folders)?;
    }
    if let Some(sql) = &ep.sql {
        validate_sql(ctx, &format!("{p}.sql"), sql)?;
    }
    for (j, lookup) in ep.enrich.iter().enumerate() {
        validate_lookup(ctx, &format!("{p}.enrich[{j}]"), lookup)?;
    }
    if let Some(pool) = &ep.pool {
        validate_pool(ctx, &format!("{p}.pool"), pool)?;
    }
    Ok(())
}

fn validate_python(ctx: &Context<'_>, pp: &str, kind: EndpointKind, py: &PythonSpec) -> Result<()> {
    (ctx.files)(&format!("{pp}.code"), &py.code, Expect::File)?;
    let (wanted, unwanted, wanted_value, unwanted_value) = if kind == EndpointKind::PythonFunction {
        ("function", "class", &py.function, &py.class)
    } else {
        ("class", "function", &py.class, &py.function)
    };
    if unwanted_value.is_some() {
        return Err(ctx.invalid(
            format!("{pp}.{unwanted}"),
            format!("kind `{kind}` takes `{wanted}`, not `{unwanted}`"),
        ));
    }
    match wanted_value {
        None => {
            return Err(ctx.invalid(
                format!("{pp}.{wanted}"),
                format!("kind `{kind}` needs `{wanted}`, the name of the {wanted} in `code`"),
            ));
        }
        Some(value) => check_not_blank(ctx.file, &format!("{pp}.{wanted}"), value)?,
    }
    if let Some(requirements) = &py.requirements {
        (ctx.files)(&format!("{pp}.requirements"), requirements, Expect::File)?;
    }
    validate_folder_refs(ctx, pp, &py.folders)
}

fn validate_folder_refs(ctx: &Context<'_>, section: &str, folders: &[String]) -> Result<()> {
    let mut seen = Seen::new(ctx.file);
    for (j, name) in folders.iter().enumerate() {
        let path = format!("{section}.folders[{j}]");
        if !ctx.folders.contains(name.as_str()) {
            return Err(ctx.invalid(
                path,
                format!("names no declared folder `{name}`; declare it in a [[folders]] entry"),
            ));
        }
        seen.add(path, name)?;
    }
    Ok(())
}

fn validate_lookup(ctx: &Context<'_>, lp: &str, lookup: &LookupSpec) -> Result<()> {
    let Some(info) = ctx.datasets.get(lookup.dataset.as_str()) else {
        return Err(ctx.invalid(
            format!("{lp}.dataset"),
            format!(
                "names no declared dataset `{}`; declare it in a [[datasets]] entry",
                lookup.dataset
            ),
        ));
    };
    let columns = match info {
        DatasetInfo::Bundled(Some(columns)) => Some(columns),
        _ => None,
    };
    let check_column = |path: String, column: &str| -> Result<()> {
        check_not_blank(ctx.file, &path, column)?;
        if let Some(columns) = columns
            && !columns.contains(&column)
        {
            return Err(ctx.invalid(
                path,
                format!(
                    "column `{column}` is not in dataset `{}` (its columns: {})",
                    lookup.dataset,
                    quote_list(columns)
                ),
            ));
        }
        Ok(())
    };

    if lookup.keys.is_empty() {
        return Err(ctx.invalid(
            format!("{lp}.keys"),
            "the list of key columns is empty; give at least one key column",
        ));
    }
    let mut key_columns = Seen::new(ctx.file);
    for (j, key) in lookup.keys.iter().enumerate() {
        let path = format!("{lp}.keys[{j}]");
        check_column(path.clone(), &key.column)?;
        check_not_blank(ctx.file, &format!("{path}.input"), &key.input)?;
        key_columns.add(path, &key.column)?;
    }
    let mut outputs = Seen::new(ctx.file);
    for (j, column) in lookup.columns.iter().enumerate() {
        let path = format!("{lp}.columns[{j}]");
        check_column(path.clone(), &column.column)?;
        check_not_blank(ctx.file, &format!("{path}.output"), &column.output)?;
        outputs.add(path, &column.output)?;
    }
    for (field, action) in [
        ("on_missing_key", lookup.on_missing_key),
        ("on_no_match", lookup.on_no_match),
    ] {
        if action == LookupAction::First {
            return Err(ctx.invalid(
                format!("{lp}.{field}"),
                "`first` is only allowed for `on_multiple_matches`; use `fail`, `ignore` or `null`",
            ));
        }
    }
    Ok(())
}

fn validate_sql(ctx: &Context<'_>, sp: &str, sql: &SqlSpec) -> Result<()> {
    match (&sql.connection, sql.datasets.is_empty()) {
        (Some(_), false) => {
            return Err(ctx.invalid(
                sp.to_string(),
                "give either `connection` (statements run on that database) or `datasets` \
                 (statements run on bundled datasets), not both",
            ));
        }
        (None, true) => {
            return Err(ctx.invalid(
                format!("{sp}.datasets"),
                "name the bundled `datasets` the statements query, or a `connection`",
            ));
        }
        (Some(connection), true) => {
            check_not_blank(ctx.file, &format!("{sp}.connection"), connection)?
        }
        (None, false) => {}
    }
    let mut seen_datasets = Seen::new(ctx.file);
    for (k, name) in sql.datasets.iter().enumerate() {
        let path = format!("{sp}.datasets[{k}]");
        match ctx.datasets.get(name.as_str()) {
            None => {
                return Err(ctx.invalid(
                    path,
                    format!(
                        "names no declared dataset `{name}`; declare it in a [[datasets]] entry"
                    ),
                ));
            }
            Some(DatasetInfo::Referenced { connection, table }) => {
                return Err(ctx.invalid(
                    path,
                    format!(
                        "dataset `{name}` is referenced (table `{table}` on connection \
                         `{connection}`), but `datasets` must be bundled; query it with \
                         `connection = \"{connection}\"` instead"
                    ),
                ));
            }
            Some(DatasetInfo::Bundled(_)) => {}
        }
        seen_datasets.add(path, name)?;
    }

    let mut declared = HashMap::new();
    let mut seen_params = Seen::new(ctx.file);
    for (k, param) in sql.parameters.iter().enumerate() {
        let path = format!("{sp}.parameters[{k}].name");
        check_id(ctx.file, &path, &param.name, "parameter name")?;
        seen_params.add(path, &param.name)?;
        if let Some(default) = &param.default
            && !default.is_null()
            && !json_fits(default, param.param_type)
        {
            return Err(ctx.invalid(
                format!("{sp}.parameters[{k}].default"),
                format!(
                    "the default `{default}` is not a {} value",
                    param.param_type
                ),
            ));
        }
        declared.insert(param.name.as_str(), param);
    }

    if sql.statements.is_empty() {
        return Err(ctx.invalid(
            format!("{sp}.statements"),
            "the list of statements is empty; give at least one statement",
        ));
    }
    for (j, statement) in sql.statements.iter().enumerate() {
        let stp = format!("{sp}.statements[{j}]");
        check_not_blank(ctx.file, &format!("{stp}.sql"), &statement.sql)?;
        let placeholders = count_sql_placeholders(&statement.sql);
        if placeholders != statement.params.len() {
            return Err(ctx.invalid(
                format!("{stp}.params"),
                format!(
                    "the statement has {placeholders} `?` placeholder(s) but `params` names {} \
                     parameter(s); give one parameter name per placeholder, in order",
                    statement.params.len()
                ),
            ));
        }
        for (k, name) in statement.params.iter().enumerate() {
            if !declared.contains_key(name.as_str()) {
                return Err(ctx.invalid(
                    format!("{stp}.params[{k}]"),
                    format!(
                        "parameter `{name}` is not declared; add it to `{sp}.parameters` with \
                         its type"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a JSON default suits a parameter type.
fn json_fits(value: &serde_json::Value, ty: ColumnType) -> bool {
    match ty {
        ColumnType::String | ColumnType::Date | ColumnType::Timestamp => value.is_string(),
        ColumnType::Int64 => value.is_i64() || value.is_u64() && value.as_i64().is_some(),
        ColumnType::Float64 => value.is_number(),
        ColumnType::Boolean => value.is_boolean(),
    }
}

fn validate_pool(ctx: &Context<'_>, pp: &str, pool: &PoolSpec) -> Result<()> {
    if pool.min_workers < 1 {
        return Err(ctx.invalid(format!("{pp}.min_workers"), "must be at least 1"));
    }
    if pool.max_workers > 256 {
        return Err(ctx.invalid(
            format!("{pp}.max_workers"),
            format!("is {} but must be at most 256", pool.max_workers),
        ));
    }
    if pool.max_workers < pool.min_workers {
        return Err(ctx.invalid(
            format!("{pp}.max_workers"),
            format!(
                "is {} but must be at least `min_workers` ({})",
                pool.max_workers, pool.min_workers
            ),
        ));
    }
    if pool.timeout_ms < 1 {
        return Err(ctx.invalid(format!("{pp}.timeout_ms"), "must be at least 1"));
    }
    Ok(())
}

fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Auth (spec and manifest share the rules)
// ---------------------------------------------------------------------------------------------

struct KeyView<'a> {
    id: Option<&'a str>,
    key: Option<&'a str>,
    key_sha256: Option<&'a str>,
}

fn validate_auth(
    file: &str,
    mode: AuthMode,
    keys: &[KeyView<'_>],
    oauth2: Option<&OAuth2Spec>,
) -> Result<()> {
    match mode {
        AuthMode::ApiKeys if keys.is_empty() => {
            return Err(Error::invalid(
                file,
                "auth.keys",
                "mode `api-keys` needs at least one key; add an [[auth.keys]] entry",
            ));
        }
        AuthMode::ApiKeys => {}
        _ if !keys.is_empty() => {
            return Err(Error::invalid(
                file,
                "auth.keys",
                format!("keys are only used with mode `api-keys`, but the mode is `{mode}`"),
            ));
        }
        _ => {}
    }
    let mut ids: HashSet<String> = HashSet::new();
    let mut hashes: HashMap<String, usize> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let kp = format!("auth.keys[{i}]");
        let id = key
            .id
            .map(str::to_string)
            .unwrap_or_else(|| default_key_id(i));
        check_id(file, &format!("{kp}.id"), &id, "key id")?;
        if !ids.insert(id.clone()) {
            return Err(Error::DuplicateId {
                file: file.to_string(),
                path: format!("{kp}.id"),
                id,
            });
        }
        let hash = match (key.key, key.key_sha256) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    file,
                    kp,
                    "give either `key` (the secret) or `key_sha256` (its hash), not both",
                ));
            }
            (None, None) => {
                return Err(Error::invalid(
                    file,
                    kp,
                    "give `key` (the secret) or `key_sha256` (its lower-case hex SHA-256)",
                ));
            }
            (Some(secret), None) => {
                if secret.is_empty() {
                    return Err(Error::invalid(
                        file,
                        format!("{kp}.key"),
                        "must not be empty",
                    ));
                }
                crate::sha256_hex(secret.as_bytes())
            }
            (None, Some(hash)) => {
                if !is_sha256_hex(hash) {
                    return Err(Error::invalid(
                        file,
                        format!("{kp}.key_sha256"),
                        "is not a SHA-256: give 64 lower-case hex characters",
                    ));
                }
                hash.to_string()
            }
        };
        if let Some(first) = hashes.insert(hash, i) {
            return Err(Error::invalid(
                file,
                kp,
                format!(
                    "this key has the same secret as `auth.keys[{first}]`; give each key its own secret"
                ),
            ));
        }
    }
    match (mode, oauth2) {
        (AuthMode::Oauth2, None) => Err(Error::invalid(
            file,
            "auth.oauth2",
            "mode `oauth2` needs an [auth.oauth2] section with `issuer` and `jwks_uri` or `jwks`",
        )),
        (AuthMode::Oauth2, Some(o)) => {
            check_not_blank(file, "auth.oauth2.issuer", &o.issuer)?;
            match (&o.jwks_uri, &o.jwks) {
                (Some(_), Some(_)) => Err(Error::invalid(
                    file,
                    "auth.oauth2",
                    "give either `jwks_uri` or `jwks`, not both",
                )),
                (None, None) => Err(Error::invalid(
                    file,
                    "auth.oauth2",
                    "give `jwks_uri` (where to fetch the signing keys) or `jwks` (the keys inline)",
                )),
                (Some(uri), None) => check_not_blank(file, "auth.oauth2.jwks_uri", uri),
                (None, Some(jwks)) => check_not_blank(file, "auth.oauth2.jwks", jwks),
            }
        }
        (_, Some(_)) => Err(Error::invalid(
            file,
            "auth.oauth2",
            format!(
                "an [auth.oauth2] section is only used with mode `oauth2`, but the mode is `{mode}`"
            ),
        )),
        (_, None) => Ok(()),
    }
}

/// The id given to the `index`-th (0-based) API key when it has none: `key-<n>`, 1-based.
pub(crate) fn default_key_id(index: usize) -> String {
    format!("key-{}", index + 1)
}

// ---------------------------------------------------------------------------------------------
// service.toml
// ---------------------------------------------------------------------------------------------

/// How a bundled dataset of a spec is read.
pub(crate) fn dataset_format(spec: &DatasetSpec, path: &str) -> Option<DatasetFormat> {
    spec.format.or_else(|| format_from_extension(path))
}

pub(crate) fn format_from_extension(path: &str) -> Option<DatasetFormat> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".csv") || lower.ends_with(".tsv") {
        Some(DatasetFormat::Csv)
    } else if lower.ends_with(".parquet") {
        Some(DatasetFormat::Parquet)
    } else {
        None
    }
}

/// A path field of the spec, normalized, or `UnsafePath`.
pub(crate) fn spec_path(field: &str, value: &str) -> Result<String> {
    normalize_spec_path(value).map_err(|reason| Error::UnsafePath {
        origin: SPEC_FILE.to_string(),
        entry: value.to_string(),
        reason: format!("{reason} (at `{field}`)"),
    })
}

/// Validates a parsed `service.toml`. With `service_dir`, also checks that every file and
/// folder it names exists there (without symbolic links).
pub(crate) fn validate_spec(spec: &ServiceSpec, service_dir: Option<&Path>) -> Result<()> {
    let file = SPEC_FILE;
    check_id(file, "service.id", &spec.service.id, "service id")?;
    if let Some(version) = &spec.service.version {
        check_version(file, "service.version", version)?;
    }
    let keys: Vec<KeyView<'_>> = spec
        .auth
        .keys
        .iter()
        .map(|k| KeyView {
            id: k.id.as_deref(),
            key: k.key.as_deref(),
            key_sha256: k.key_sha256.as_deref(),
        })
        .collect();
    validate_auth(file, spec.auth.mode, &keys, spec.auth.oauth2.as_ref())?;

    let check_file = |field: &str, value: &str, expect: Expect| -> Result<()> {
        let rel = spec_path(field, value)?;
        if let Some(dir) = service_dir {
            resolve_in_folder(dir, &rel, expect, &format!("service.toml `{field}`"))?;
        }
        Ok(())
    };

    let mut names = Seen::new(file);
    let mut datasets = HashMap::new();
    for (i, ds) in spec.datasets.iter().enumerate() {
        let dp = format!("datasets[{i}]");
        check_id(file, &format!("{dp}.name"), &ds.name, "dataset name")?;
        names.add(format!("{dp}.name"), &ds.name)?;
        let info = validate_dataset_spec(&dp, ds, &check_file)?;
        datasets.insert(ds.name.as_str(), info);
    }

    let mut folder_names = Seen::new(file);
    let mut folders = HashSet::new();
    for (i, folder) in spec.folders.iter().enumerate() {
        let fp = format!("folders[{i}]");
        check_id(file, &format!("{fp}.name"), &folder.name, "folder name")?;
        folder_names.add(format!("{fp}.name"), &folder.name)?;
        check_file(&format!("{fp}.path"), &folder.path, Expect::Dir)?;
        folders.insert(folder.name.as_str());
    }

    let ctx = Context {
        file,
        datasets,
        folders,
        files: &check_file,
    };
    validate_endpoints(&ctx, &spec.endpoints)
}

fn validate_dataset_spec<'a>(
    dp: &str,
    ds: &'a DatasetSpec,
    check_file: &FileCheck<'_>,
) -> Result<DatasetInfo<'a>> {
    let file = SPEC_FILE;
    match (&ds.path, &ds.table) {
        (Some(_), Some(_)) => Err(Error::invalid(
            file,
            dp,
            "give either `path` (a file bundled with the service) or `table` (a table left in a \
             database), not both",
        )),
        (None, None) => Err(Error::invalid(
            file,
            dp,
            "give `path` (a CSV or Parquet file bundled with the service) or `table` (a table \
             left in a database)",
        )),
        (None, Some(table)) => {
            for (field, present) in [
                ("format", ds.format.is_some()),
                ("csv", ds.csv.is_some()),
                ("schema", ds.schema.is_some()),
            ] {
                if present {
                    return Err(Error::invalid(
                        file,
                        format!("{dp}.{field}"),
                        format!(
                            "only bundled datasets (with `path`) take `{field}`; this one \
                             references a table"
                        ),
                    ));
                }
            }
            check_not_blank(file, &format!("{dp}.table"), table)?;
            let connection = match &ds.connection {
                Some(connection) => {
                    check_not_blank(file, &format!("{dp}.connection"), connection)?;
                    connection.as_str()
                }
                None => DEFAULT_REFERENCED_CONNECTION,
            };
            Ok(DatasetInfo::Referenced {
                connection,
                table: table.as_str(),
            })
        }
        (Some(path), None) => {
            if ds.connection.is_some() {
                return Err(Error::invalid(
                    file,
                    format!("{dp}.connection"),
                    "only referenced datasets (with `table`) take a `connection`",
                ));
            }
            let rel = spec_path(&format!("{dp}.path"), path)?;
            let Some(format) = dataset_format(ds, &rel) else {
                return Err(Error::invalid(
                    file,
                    format!("{dp}.path"),
                    format!(
                        "cannot tell the format of `{path}` from its extension (.csv, .tsv or \
                         .parquet); set `format = \"csv\"` or `format = \"parquet\"`"
                    ),
                ));
            };
            if let Some(csv) = &ds.csv {
                if format != DatasetFormat::Csv {
                    return Err(Error::invalid(
                        file,
                        format!("{dp}.csv"),
                        "only CSV datasets take a `csv` section; this one is Parquet",
                    ));
                }
                let d = csv.delimiter;
                if !d.is_ascii() || matches!(d, '"' | '\n' | '\r') {
                    return Err(Error::invalid(
                        file,
                        format!("{dp}.csv.delimiter"),
                        format!(
                            "{d:?} cannot be a delimiter; use one ASCII character other than a \
                             quote or a line break"
                        ),
                    ));
                }
            }
            let columns = match &ds.schema {
                None => None,
                Some(schema) => {
                    if schema.is_empty() {
                        return Err(Error::invalid(
                            file,
                            format!("{dp}.schema"),
                            "the schema lists no column; list the columns to keep, or remove \
                             `schema` to infer it",
                        ));
                    }
                    let mut seen = Seen::new(file);
                    for (j, column) in schema.iter().enumerate() {
                        let path = format!("{dp}.schema[{j}].name");
                        check_not_blank(file, &path, &column.name)?;
                        seen.add(path, &column.name)?;
                    }
                    Some(schema.iter().map(|c| c.name.as_str()).collect())
                }
            };
            check_file(&format!("{dp}.path"), path, Expect::File)?;
            Ok(DatasetInfo::Bundled(columns))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// manifest.json
// ---------------------------------------------------------------------------------------------

/// Validates a manifest on its own: the format version, ids, auth, datasets, folders, the file
/// list (sorted, unique, safe paths, SHA-256s) and every endpoint, with files looked up in the
/// manifest's own file list. [`Bundle::open`](crate::Bundle::open) runs it after checking the
/// archive's entries against `files`.
pub fn validate_manifest(m: &Manifest) -> Result<()> {
    let file = MANIFEST_FILE;
    if m.format_version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: u64::from(m.format_version),
            supported: FORMAT_VERSION,
        });
    }
    check_id(file, "service_id", &m.service_id, "service id")?;
    check_version(file, "version", &m.version)?;

    // Files first: everything else is checked against them.
    let mut previous: Option<&str> = None;
    for (i, entry) in m.files.iter().enumerate() {
        let fp = format!("files[{i}]");
        if let Some(reason) = archive_path_problem(&entry.path) {
            return Err(Error::UnsafePath {
                origin: file.to_string(),
                entry: entry.path.clone(),
                reason: format!("{reason} (at `{fp}.path`)"),
            });
        }
        if entry.path == MANIFEST_FILE {
            return Err(Error::invalid(
                file,
                format!("{fp}.path"),
                "manifest.json cannot list itself",
            ));
        }
        if let Some(prev) = previous {
            if prev == entry.path {
                return Err(Error::DuplicateId {
                    file: file.to_string(),
                    path: format!("{fp}.path"),
                    id: entry.path.clone(),
                });
            }
            if prev > entry.path.as_str() {
                return Err(Error::invalid(
                    file,
                    format!("{fp}.path"),
                    format!(
                        "files must be sorted by path, but `{}` comes after `{prev}`",
                        entry.path
                    ),
                ));
            }
        }
        if !is_sha256_hex(&entry.sha256) {
            return Err(Error::invalid(
                file,
                format!("{fp}.sha256"),
                "is not a SHA-256: expected 64 lower-case hex characters",
            ));
        }
        previous = Some(&entry.path);
    }
    for (i, entry) in m.files.iter().enumerate() {
        let prefix = format!("{}/", entry.path);
        let start = m
            .files
            .partition_point(|f| f.path.as_str() < prefix.as_str());
        if m.files
            .get(start)
            .is_some_and(|f| f.path.starts_with(&prefix))
        {
            return Err(Error::invalid(
                file,
                format!("files[{i}].path"),
                format!(
                    "`{}` is listed as a file but other files are listed under it",
                    entry.path
                ),
            ));
        }
    }
    let listed = |path: &str| {
        m.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .is_ok()
    };
    let has_dir = |path: &str| {
        let prefix = format!("{path}/");
        let start = m
            .files
            .partition_point(|f| f.path.as_str() < prefix.as_str());
        m.files
            .get(start)
            .is_some_and(|f| f.path.starts_with(&prefix))
    };
    let check_file = |field: &str, value: &str, expect: Expect| -> Result<()> {
        if let Some(reason) = archive_path_problem(value) {
            return Err(Error::UnsafePath {
                origin: file.to_string(),
                entry: value.to_string(),
                reason: format!("{reason} (at `{field}`)"),
            });
        }
        let found = match expect {
            Expect::File => listed(value),
            Expect::Dir => has_dir(value),
            Expect::FileOrDir => listed(value) || has_dir(value),
        };
        if found {
            Ok(())
        } else {
            Err(Error::MissingFile {
                origin: "the bundle".to_string(),
                entry: value.to_string(),
                needed_by: format!("manifest.json `{field}`"),
            })
        }
    };

    let keys: Vec<KeyView<'_>> = m
        .auth
        .keys
        .iter()
        .map(|k| KeyView {
            id: Some(&k.id),
            key: None,
            key_sha256: Some(&k.key_sha256),
        })
        .collect();
    validate_auth(file, m.auth.mode, &keys, m.auth.oauth2.as_ref())?;

    let mut names = Seen::new(file);
    let mut datasets = HashMap::new();
    for (i, ds) in m.datasets.iter().enumerate() {
        let dp = format!("datasets[{i}]");
        check_id(file, &format!("{dp}.name"), &ds.name, "dataset name")?;
        names.add(format!("{dp}.name"), &ds.name)?;
        let info = match &ds.source {
            DatasetSource::Bundled {
                file: data_file,
                rows: _,
                columns,
            } => {
                check_file(&format!("{dp}.file"), data_file, Expect::File)?;
                if columns.is_empty() {
                    return Err(Error::invalid(
                        file,
                        format!("{dp}.columns"),
                        "a bundled dataset has at least one column",
                    ));
                }
                let mut seen = Seen::new(file);
                for (j, column) in columns.iter().enumerate() {
                    let path = format!("{dp}.columns[{j}].name");
                    check_not_blank(file, &path, &column.name)?;
                    seen.add(path, &column.name)?;
                }
                DatasetInfo::Bundled(Some(columns.iter().map(|c| c.name.as_str()).collect()))
            }
            DatasetSource::Referenced { connection, table } => {
                check_not_blank(file, &format!("{dp}.connection"), connection)?;
                check_not_blank(file, &format!("{dp}.table"), table)?;
                DatasetInfo::Referenced { connection, table }
            }
        };
        datasets.insert(ds.name.as_str(), info);
    }

    let mut folder_names = Seen::new(file);
    let mut folders = HashSet::new();
    for (i, folder) in m.folders.iter().enumerate() {
        let fp = format!("folders[{i}]");
        check_id(file, &format!("{fp}.name"), &folder.name, "folder name")?;
        folder_names.add(format!("{fp}.name"), &folder.name)?;
        let expected = folder_archive_path(&folder.name);
        if folder.path != expected {
            return Err(Error::invalid(
                file,
                format!("{fp}.path"),
                format!(
                    "is `{}` but folder `{}` is stored at `{expected}`",
                    folder.path, folder.name
                ),
            ));
        }
        folders.insert(folder.name.as_str());
    }

    let ctx = Context {
        file,
        datasets,
        folders,
        files: &check_file,
    };
    validate_endpoints(&ctx, &m.endpoints)
}

/// Where a folder's files live in a bundle: `folders/<name>`.
pub(crate) fn folder_archive_path(name: &str) -> String {
    format!("folders/{name}")
}

/// Where a bundled dataset's Parquet file lives in a bundle: `datasets/<name>.parquet`.
pub(crate) fn dataset_archive_path(name: &str) -> String {
    format!("datasets/{name}.parquet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_versions() {
        assert!(is_valid_id("customers_v2-a"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(is_valid_version("1.2.3-rc_1"));
        assert!(!is_valid_version(".hidden"));
        assert!(!is_valid_version("a/b"));
        assert!(!is_valid_version(&"1".repeat(129)));
    }

    #[test]
    fn sha256_hex_is_lower_case_64() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }

    #[test]
    fn placeholders_outside_strings() {
        assert_eq!(
            count_sql_placeholders("SELECT * FROM t WHERE a = ? AND b = ?"),
            2
        );
        assert_eq!(count_sql_placeholders("SELECT '?' , ? FROM t"), 1);
        assert_eq!(
            count_sql_placeholders("SELECT 'it''s ?', ? FROM t WHERE x = ?"),
            2
        );
        assert_eq!(count_sql_placeholders("SELECT 1"), 0);
    }

    #[test]
    fn placeholders_outside_identifiers_comments_and_dollar_quotes() {
        let sql =
            "SELECT \"why?\", $$a ? b$$, $q$?$q$ -- is it?\nFROM t /* ? */ WHERE a = ? AND b = $1";
        assert_eq!(count_sql_placeholders(sql), 1);
        assert_eq!(
            number_sql_placeholders("SELECT ? + ?, '?' FROM t WHERE k = ?"),
            "SELECT $1 + $2, '?' FROM t WHERE k = $3"
        );
        // An unterminated literal hides the rest of the statement, as the database reads it.
        assert_eq!(count_sql_placeholders("SELECT 'open ? FROM t"), 0);
        assert_eq!(sql_placeholders("?é?"), vec![0, 3]);
    }

    #[test]
    fn json_defaults_match_types() {
        assert!(json_fits(&serde_json::json!(3), ColumnType::Int64));
        assert!(!json_fits(&serde_json::json!(3.5), ColumnType::Int64));
        assert!(json_fits(&serde_json::json!(3), ColumnType::Float64));
        assert!(json_fits(
            &serde_json::json!("2024-01-01"),
            ColumnType::Date
        ));
        assert!(!json_fits(&serde_json::json!("x"), ColumnType::Boolean));
    }
}
