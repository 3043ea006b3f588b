//! `apinode bundle build` and `apinode bundle inspect`.

use anyhow::Context;
use apinode_bundle::{BuildOptions, Bundle, DatasetSource, Limits, LookupAction, LookupSpec};
use std::fmt::Write as _;
use std::path::Path;

pub(crate) fn build(dir: &Path, output: &Path, version: Option<String>) -> anyhow::Result<()> {
    let options = BuildOptions {
        version,
        built_by: concat!("apinode ", env!("CARGO_PKG_VERSION")).to_owned(),
    };
    let report = apinode_bundle::build(dir, output, &options)
        .with_context(|| format!("cannot build a bundle from {}", dir.display()))?;
    // Load every model as a node would: a broken export fails here, not at import.
    let models = Bundle::open(output, &Limits::default())
        .map_err(anyhow::Error::from)
        .and_then(|bundle| Ok(apinode_runtime::model_reports(&bundle)?));
    if let Err(e) = models {
        let _ = std::fs::remove_file(output);
        return Err(e.context(format!(
            "cannot build a bundle from {}: a model does not load",
            dir.display()
        )));
    }
    // Plan every SQL statement on bundled data as a node would.
    let statements = Bundle::open(output, &Limits::default())
        .map_err(anyhow::Error::from)
        .and_then(|bundle| Ok(apinode_runtime::check_bundled_sql(&bundle)?));
    if let Err(e) = statements {
        let _ = std::fs::remove_file(output);
        return Err(e.context(format!(
            "cannot build a bundle from {}: a SQL statement does not run on the bundled datasets",
            dir.display()
        )));
    }
    let m = &report.manifest;
    println!(
        "built {} ({}): service `{}`, generation `{}`, {} endpoint(s), {} dataset(s), {} file(s)",
        output.display(),
        human_bytes(report.archive_size),
        m.service_id,
        m.version,
        m.endpoints.len(),
        m.datasets.len(),
        m.files.len()
    );
    Ok(())
}

pub(crate) fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let bundle = Bundle::open(file, &Limits::default())
        .with_context(|| format!("{} is not a valid bundle", file.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(bundle.manifest())?);
        return Ok(());
    }
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    print!("{}", describe(&bundle, file, size));
    let models =
        apinode_runtime::model_reports(&bundle).context("cannot load the bundle's models")?;
    for (endpoint, model) in &models {
        println!("{}", describe_model(endpoint, model));
    }
    let memory = apinode_runtime::memory_report(&bundle)
        .context("cannot load the bundle's lookups to measure them")?;
    print!("{}", describe_memory(&memory));
    Ok(())
}

fn describe(bundle: &Bundle, file: &Path, size: u64) -> String {
    let m = bundle.manifest();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bundle     {} ({}, every checksum verified)",
        file.display(),
        human_bytes(size)
    );
    let _ = writeln!(out, "service    {}", m.service_id);
    let _ = writeln!(out, "generation {}", m.version);
    if let Some(description) = &m.description {
        let _ = writeln!(out, "about      {description}");
    }
    let _ = writeln!(out, "built by   {}", m.built_by);
    let keys: Vec<String> = m.auth.keys.iter().map(|k| k.id.clone()).collect();
    if keys.is_empty() {
        let _ = writeln!(out, "auth       {}", m.auth.mode);
    } else {
        let _ = writeln!(
            out,
            "auth       {} (key ids: {})",
            m.auth.mode,
            keys.join(", ")
        );
    }
    let _ = writeln!(out, "datasets");
    for dataset in &m.datasets {
        match &dataset.source {
            DatasetSource::Bundled {
                file,
                rows,
                columns,
            } => {
                let bytes = bundle.file(file).map_or(0, |b| b.len() as u64);
                let _ = writeln!(
                    out,
                    "  {:<20} bundled, {rows} rows, {} ({})",
                    dataset.name,
                    file,
                    human_bytes(bytes)
                );
                let cols: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.column_type))
                    .collect();
                let _ = writeln!(out, "  {:<20} columns: {}", "", cols.join(", "));
            }
            DatasetSource::Referenced { connection, table } => {
                let _ = writeln!(
                    out,
                    "  {:<20} referenced: table `{table}` on connection `{connection}`",
                    dataset.name
                );
            }
        }
    }
    let _ = writeln!(out, "endpoints");
    for endpoint in &m.endpoints {
        let detail = match &endpoint.lookup {
            Some(lookup) => describe_lookup(lookup),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<18} {detail}",
            endpoint.id,
            endpoint.kind.as_str()
        );
        for enrich in &endpoint.enrich {
            let _ = writeln!(out, "  {:<20} enrich: {}", "", describe_lookup(enrich));
        }
    }
    let _ = writeln!(out, "files");
    for f in &m.files {
        let _ = writeln!(
            out,
            "  {:<40} {:>10}  sha256 {}",
            f.path,
            human_bytes(f.size),
            f.sha256
        );
    }
    out
}

/// One line per model: `model <endpoint>: <task> <algorithm> (<detail>), <n> inputs[, classes]`.
fn describe_model(endpoint: &str, model: &apinode_scoring::ModelSummary) -> String {
    let mut line = format!(
        "model      {endpoint}: {} {} ({}), {} input columns",
        model.task.as_str(),
        model.algorithm,
        model.algorithm_detail,
        model.inputs.len()
    );
    if !model.classes.is_empty() {
        let _ = write!(line, ", classes: {}", model.classes.join(", "));
    }
    line
}

fn describe_memory(memory: &apinode_runtime::MemoryReport) -> String {
    let mut out = String::new();
    if memory.tables.is_empty() {
        return out;
    }
    let per = |bytes: usize, n: usize| if n == 0 { 0.0 } else { bytes as f64 / n as f64 };
    let _ = writeln!(out, "memory once loaded (as a node holds it)");
    for (name, rows, bytes) in &memory.tables {
        let _ = writeln!(
            out,
            "  table {name:<24} {:>10}  {:.1} B/row",
            human_bytes(*bytes as u64),
            per(*bytes, *rows)
        );
    }
    for (name, keys, bytes) in &memory.indexes {
        let _ = writeln!(
            out,
            "  index {name:<24} {:>10}  {:.1} B/key, {keys} keys",
            human_bytes(*bytes as u64),
            per(*bytes, *keys)
        );
    }
    out
}

fn describe_lookup(lookup: &LookupSpec) -> String {
    let keys: Vec<String> = lookup
        .keys
        .iter()
        .map(|k| {
            if k.input == k.column {
                k.column.clone()
            } else {
                format!("{} (input `{}`)", k.column, k.input)
            }
        })
        .collect();
    let columns = if lookup.columns.is_empty() {
        "all columns".to_owned()
    } else {
        lookup
            .columns
            .iter()
            .map(|c| {
                if c.output == c.column {
                    c.column.clone()
                } else {
                    format!("{} as {}", c.column, c.output)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "`{}` on {} -> {}; missing key: {}, no match: {}, several matches: {}",
        lookup.dataset,
        keys.join(" + "),
        columns,
        action(lookup.on_missing_key),
        action(lookup.on_no_match),
        action(lookup.on_multiple_matches)
    )
}

fn action(action: LookupAction) -> &'static str {
    match action {
        LookupAction::Fail => "fail",
        LookupAction::Ignore => "ignore",
        LookupAction::Null => "null",
        LookupAction::First => "first",
    }
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
