//! `apinode model inspect` and `apinode model predict`: check a Dataiku model export before
//! building a bundle around it.

use anyhow::Context;
use apinode_scoring::Model;
use serde_json::{Map, Value};
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

/// Lines scored together (one `predict_records` call): big enough to amortize the per-call
/// setup, small enough that output follows input closely.
const CHUNK: usize = 1024;

fn load(path: &Path) -> anyhow::Result<Model> {
    Model::load(path).with_context(|| format!("cannot load the model at {}", path.display()))
}

pub(crate) fn inspect(path: &Path) -> anyhow::Result<()> {
    let model = load(path)?;
    print!("{}", model.describe());
    Ok(())
}

/// Reads JSON lines of feature objects on stdin, writes one `result` object per line.
/// Blank lines are skipped; a line that is not a JSON object stops the run with its number.
pub(crate) fn predict(path: &Path) -> anyhow::Result<()> {
    let model = load(path)?;
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    // The records waiting to be scored, and the stdin line of each (for errors).
    let mut chunk: Vec<Map<String, Value>> = Vec::with_capacity(CHUNK);
    let mut lines: Vec<usize> = Vec::with_capacity(CHUNK);
    for (i, line) in stdin.lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Map<String, Value> = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: expected a JSON object of features", i + 1))?;
        chunk.push(record);
        lines.push(i + 1);
        if chunk.len() == CHUNK {
            write_chunk(&model, &chunk, &lines, &mut out)?;
            chunk.clear();
            lines.clear();
        }
    }
    write_chunk(&model, &chunk, &lines, &mut out)?;
    out.flush()?;
    Ok(())
}

fn write_chunk(
    model: &Model,
    chunk: &[Map<String, Value>],
    lines: &[usize],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let predictions = match model.predict_records(chunk) {
        Ok(predictions) => predictions,
        Err(error) => {
            // Name the line: the first record that fails on its own.
            for (record, line) in chunk.iter().zip(lines) {
                model
                    .predict(record)
                    .with_context(|| format!("stdin line {line}: cannot score this record"))?;
            }
            return Err(error).context("cannot score the records");
        }
    };
    let mut line = Vec::with_capacity(256);
    for i in 0..predictions.len() {
        line.clear();
        apinode_runtime::write_prediction_result(&predictions.get(i), None, &mut line);
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(())
}
