//! The preprocessing pipeline (format doc §3–§4), compiled at load time into steps over slot
//! indexes: a row is read into a numeric buffer (one f64 slot per feature and numeric input) and
//! a buffer of non-numeric values, the steps run in the reference's fixed order, and the
//! selection gathers (or projects) the final feature vector. No name is looked up per row.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use crate::archive::Files;
use crate::dates::{self, DateFormat, Period};
use crate::error::{Error, Result};
use crate::input::{Cell, Level, Val, py_str, to_numeric, to_value};
use crate::json::{Num, nums, parse};
use crate::text::Tokenizer;

/// What one input column of the schema is.
#[derive(Debug, Clone)]
pub(crate) struct InputColumn {
    pub(crate) name: String,
    pub(crate) storage: String,
    pub(crate) role: String,
    pub(crate) kind: String,
}

#[derive(Debug, Deserialize)]
struct FeatureParams {
    role: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PerFeatureFile {
    per_feature: HashMap<String, FeatureParams>,
}

#[derive(Debug, Deserialize)]
struct SchemaColumn {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SchemaInner {
    columns: Vec<SchemaColumn>,
}

#[derive(Debug, Deserialize)]
struct SplitFile {
    schema: SchemaInner,
}

/// Reads `rpreprocessing_params.json` and `split/split.json`: the input columns (schema order,
/// without the target).
pub(crate) fn read_schema(files: &Files) -> Result<Vec<InputColumn>> {
    let pf_name = "rpreprocessing_params.json";
    let pf: PerFeatureFile = parse(
        &files.shown(pf_name),
        &files.require(pf_name, "the role and type of each column")?,
    )?;
    let split_name = "split/split.json";
    let split: SplitFile = parse(
        &files.shown(split_name),
        &files.require(split_name, "the input schema")?,
    )?;
    let mut out = Vec::new();
    for (i, c) in split.schema.columns.into_iter().enumerate() {
        let Some(p) = pf.per_feature.get(&c.name) else {
            return Err(Error::invalid(
                &files.shown(pf_name),
                format!("per_feature.{}", c.name),
                format!(
                    "schema column `{}` (split/split.json schema.columns[{i}]) has no entry",
                    c.name
                ),
            ));
        };
        if p.role == "TARGET" {
            continue;
        }
        out.push(InputColumn {
            name: c.name,
            storage: c.kind.unwrap_or_default(),
            role: p.role.clone(),
            kind: p.kind.clone().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Feature selection (`feature_selection.json`).
#[derive(Debug, Clone)]
pub(crate) enum SelectionSpec {
    All,
    Pca {
        input_names: Vec<String>,
        rot: Vec<Vec<f64>>,
        means: Option<Vec<f64>>,
        explained_variance: Option<Vec<f64>>,
        sparse: bool,
    },
    Ica {
        input_names: Vec<String>,
        mixing: Vec<Vec<f64>>,
        means: Option<Vec<f64>>,
    },
}

#[derive(Debug, Deserialize)]
struct SelectionFile {
    method: String,
    #[serde(default)]
    selection_params: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct PcaParams {
    input_names: Vec<String>,
    rot: Vec<Vec<Num>>,
    #[serde(default)]
    means: Option<Vec<Num>>,
    #[serde(default)]
    explained_variance: Option<Vec<Num>>,
    #[serde(default)]
    sparse: bool,
}

#[derive(Debug, Deserialize)]
struct IcaParams {
    input_names: Vec<String>,
    mixing: Vec<Vec<Num>>,
    #[serde(default)]
    means: Option<Vec<Num>>,
}

pub(crate) fn read_selection(files: &Files) -> Result<SelectionSpec> {
    let name = "feature_selection.json";
    let Some(bytes) = files.read(name)? else {
        return Ok(SelectionSpec::All);
    };
    let shown = files.shown(name);
    let f: SelectionFile = parse(&shown, &bytes)?;
    let params = || {
        f.selection_params
            .clone()
            .ok_or_else(|| Error::invalid(&shown, "selection_params", "missing"))
    };
    let sub = |v: Value| -> Vec<u8> { serde_json::to_vec(&v).unwrap_or_default() };
    Ok(match f.method.as_str() {
        "ALL" | "DROP" => SelectionSpec::All,
        "PCA" => {
            let p: PcaParams = parse(&format!("{shown} selection_params"), &sub(params()?))?;
            SelectionSpec::Pca {
                input_names: p.input_names,
                rot: p.rot.iter().map(|r| nums(r)).collect(),
                means: p.means.map(|m| nums(&m)),
                explained_variance: p.explained_variance.map(|m| nums(&m)),
                sparse: p.sparse,
            }
        }
        "ICA" => {
            let p: IcaParams = parse(&format!("{shown} selection_params"), &sub(params()?))?;
            SelectionSpec::Ica {
                input_names: p.input_names,
                mixing: p.mixing.iter().map(|r| nums(r)).collect(),
                means: p.means.map(|m| nums(&m)),
            }
        }
        other => {
            return Err(Error::UnsupportedPreprocessing {
                file: shown,
                what: format!(
                    "feature selection method `{other}` (supported: ALL, DROP, PCA, ICA)"
                ),
            });
        }
    })
}

#[derive(Debug, Clone)]
enum Selection {
    Gather(Vec<usize>),
    Project {
        inputs: Vec<usize>,
        /// `F_in × K`, row-major.
        matrix: Vec<f64>,
        k: usize,
        /// Dense: NaN → 0, then minus these means (if any).
        dense: bool,
        means: Vec<f64>,
        /// PCA whitening: divide by √explained_variance.
        stds: Vec<f64>,
    },
}

/// The format's names for the steps, in the reference's order.
pub(crate) const STEP_KINDS: &[&str] = &[
    "Normalize",
    "Impute",
    "Binarize",
    "Flag",
    "Dummify",
    "DatetimeCyclical",
    "Rescale",
    "Derive",
    "DeriveRescale",
    "WordCount",
    "TfIdf",
    "VectorsUnfold",
    "RawCategoricalEncode",
    "CategoricalEncode",
    "NumNumInteraction",
    "NumCatInteraction",
    "CatCatInteraction",
];

#[derive(Debug, Clone)]
enum Op {
    Normalize {
        cat: usize,
        num: usize,
        fmt: DateFormat,
        column: String,
    },
    ImputeCat {
        cat: usize,
        value: Level,
    },
    ImputeNum {
        num: usize,
        value: f64,
    },
    Binarize(Vec<(usize, usize, f64)>),
    FlagNum {
        src: usize,
        dst: usize,
        u: f64,
    },
    FlagCat {
        src: usize,
        dst: usize,
        u: f64,
    },
    Dummy {
        cat: usize,
        by_str: HashMap<String, Option<usize>>,
        others_levels: Vec<(Level, Option<usize>)>,
        all: Vec<usize>,
        na: Option<usize>,
        others: Option<usize>,
        u: f64,
    },
    Cyclical {
        src: usize,
        outs: Vec<(Period, Option<usize>, Option<usize>)>,
    },
    Rescale(Vec<(usize, f64, f64)>),
    Derive {
        src: usize,
        log: Option<usize>,
        sqrt: Option<usize>,
        square: Option<usize>,
    },
    WordCount {
        cat: usize,
        tokenizer: Tokenizer,
        vocab: HashMap<String, usize>,
        u: f64,
    },
    Tfidf {
        cat: usize,
        tokenizer: Tokenizer,
        vocab: HashMap<String, (f64, Option<usize>)>,
        kept: Vec<usize>,
        norm: Norm,
        u: f64,
    },
    Unfold {
        cat: usize,
        outs: Vec<(usize, usize)>,
        column: String,
    },
    RawCategorical {
        cat: usize,
        dst: usize,
        by_str: HashMap<String, f64>,
        others: Vec<(Level, f64)>,
    },
    Impact {
        cat: usize,
        by_str: HashMap<String, usize>,
        others: Vec<(Level, usize)>,
        encodings: Vec<Vec<f64>>,
        defaults: Vec<f64>,
        outs: Vec<Option<usize>>,
    },
    NumNum {
        a: usize,
        b: usize,
        dst: usize,
        rescale: Option<(f64, f64)>,
    },
    NumCat {
        num: usize,
        cat: usize,
        values: Vec<(Level, usize)>,
        u: f64,
    },
    CatCat {
        c1: usize,
        c2: usize,
        pairs: Vec<(Level, Level, usize)>,
        u: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Norm {
    L1,
    L2,
    None,
}

/// One preprocessing step as [`crate::ModelSummary`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSummary {
    /// The reference's name for the step (`Impute`, `Dummify`, ...).
    pub kind: &'static str,
    /// What it does, in words.
    pub detail: String,
}

/// How a slot of the drop-rows check is read.
#[derive(Debug, Clone, Copy)]
enum SlotRef {
    Num(usize),
    Cat(usize),
}

/// One INPUT column as the pipeline reads it.
#[derive(Debug, Clone)]
struct Reader {
    position: usize,
    num: Option<usize>,
    cat: Option<usize>,
    categorical: bool,
}

/// The compiled pipeline of one (non-partitioned) model.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    pub(crate) inputs: Vec<InputColumn>,
    readers: Vec<Reader>,
    n_num: usize,
    n_cat: usize,
    drop_rows: Vec<(String, SlotRef)>,
    ops: Vec<Op>,
    selection: Selection,
    pub(crate) n_features: usize,
    pub(crate) steps: Vec<StepSummary>,
}

// ------------------------------------------------------------------------------------------
// Parameter files
// ------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ImputedFile {
    #[serde(default)]
    num_columns: Vec<String>,
    #[serde(default)]
    num_values: Vec<Value>,
    #[serde(default)]
    cat_columns: Vec<String>,
    #[serde(default)]
    cat_values: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct BinarizedFile {
    columns: Vec<String>,
    output_name: Vec<String>,
    thresholds: Vec<Num>,
}

#[derive(Debug, Deserialize)]
struct FlaggedFile {
    columns: Vec<String>,
    output_names: Vec<String>,
    #[serde(default)]
    unrecorded_value: Option<Num>,
}

#[derive(Debug, Deserialize)]
struct DummyDetail {
    levels: Vec<Value>,
    #[serde(default)]
    with_others: bool,
}

#[derive(Debug, Deserialize)]
struct DummiesFile {
    details: serde_json::Map<String, Value>,
    #[serde(default)]
    unrecorded_value: Option<Num>,
}

#[derive(Debug, Deserialize)]
struct CyclicalFile {
    mapping: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RescalersFile {
    columns: Vec<String>,
    shifts: Vec<Num>,
    inv_scales: Vec<Num>,
}

#[derive(Debug, Deserialize)]
struct DerivativesFile {
    columns: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct TextFile {
    column: Vec<String>,
    vocabulary: Vec<Vec<String>>,
    stop_words: Vec<Vec<String>>,
    min_n_grams: Vec<usize>,
    max_n_grams: Vec<usize>,
    #[serde(default)]
    idf: Vec<Vec<Num>>,
    #[serde(default)]
    output_names: Vec<Vec<String>>,
    #[serde(default)]
    norm: Vec<String>,
    #[serde(default)]
    unrecorded_value: Option<Num>,
}

#[derive(Debug, Deserialize)]
struct UnfoldFile {
    vector_lengths: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImpactFile {
    columns: Vec<String>,
    levels: Vec<Vec<Value>>,
    encodings: Vec<Vec<Vec<Num>>>,
    defaults: Vec<Vec<Num>>,
    output_names: Vec<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct NumNumFile {
    column_1: Vec<String>,
    column_2: Vec<String>,
    rescale: Vec<bool>,
    shift: Vec<Num>,
    inv_scale: Vec<Num>,
}

#[derive(Debug, Deserialize)]
struct NumCatFile {
    num: Vec<String>,
    cat: Vec<String>,
    values: Vec<Vec<Value>>,
    #[serde(default)]
    unrecorded_value: Option<Num>,
}

#[derive(Debug, Deserialize)]
struct CatCatFile {
    column_1: Vec<String>,
    column_2: Vec<String>,
    values: Vec<Vec<(Value, Value)>>,
    #[serde(default)]
    unrecorded_value: Option<Num>,
}

const DERIVATIVE_NAMES: [(&str, &str); 3] = [
    ("NUM_DERIVATIVE:log(", ")"),
    ("NUM_DERIVATIVE:sqrt(", ")"),
    ("NUM_DERIVATIVE:", "^2"),
];

fn derivative_names(c: &str) -> [String; 3] {
    DERIVATIVE_NAMES.map(|(a, b)| format!("{a}{c}{b}"))
}

/// Compilation state: slot maps and which numeric slots some step fills.
struct Builder<'f> {
    files: &'f Files,
    num: HashMap<String, usize>,
    cat: HashMap<String, usize>,
    produced: Vec<bool>,
    ops: Vec<Op>,
    steps: Vec<StepSummary>,
}

impl Builder<'_> {
    fn out(&mut self, name: &str) -> Option<usize> {
        let s = self.num.get(name).copied();
        if let Some(s) = s {
            self.produced[s] = true;
        }
        s
    }

    fn need_num(&self, file: &str, field: &str, name: &str) -> Result<usize> {
        self.num.get(name).copied().ok_or_else(|| {
            Error::invalid(
                file,
                field,
                format!("column `{name}` is neither a numeric input nor a feature of the model"),
            )
        })
    }

    fn need_cat(&self, file: &str, field: &str, name: &str) -> Result<usize> {
        self.cat.get(name).copied().ok_or_else(|| {
            Error::invalid(
                file,
                field,
                format!("column `{name}` is not a non-numeric input column of the model"),
            )
        })
    }

    fn file<T: serde::de::DeserializeOwned>(&self, stem: &str) -> Result<Option<(String, T)>> {
        let name = format!("{stem}.json");
        let shown = self.files.shown(&name);
        match self.files.read(&name)? {
            None => Ok(None),
            Some(b) => Ok(Some((shown.clone(), parse(&shown, &b)?))),
        }
    }

    fn step(&mut self, kind: &'static str, detail: String) {
        self.steps.push(StepSummary { kind, detail });
    }
}

fn same_len(file: &str, what: &[(&str, usize)]) -> Result<()> {
    let first = what[0];
    for &(name, len) in &what[1..] {
        if len != first.1 {
            return Err(Error::invalid(
                file,
                name,
                format!("has {len} entries but `{}` has {}", first.0, first.1),
            ));
        }
    }
    Ok(())
}

fn split_levels<T: Copy>(
    levels: impl IntoIterator<Item = (Level, T)>,
) -> (HashMap<String, T>, Vec<(Level, T)>) {
    let mut by_str = HashMap::new();
    let mut others = Vec::new();
    for (l, t) in levels {
        match l {
            Level::Str(s) => {
                by_str.insert(s, t);
            }
            other => others.push((other, t)),
        }
    }
    (by_str, others)
}

impl Pipeline {
    /// Compiles the pipeline of the model in `files`. `columns` are the final feature names
    /// (`meta.columns`), `unrecorded` the value of unrecorded sparse cells (§9).
    pub(crate) fn load(
        files: &Files,
        inputs: Vec<InputColumn>,
        columns: &[String],
        selection: &SelectionSpec,
        unrecorded: f64,
    ) -> Result<Pipeline> {
        let feature_columns: Vec<String> = match selection {
            SelectionSpec::All => columns.to_vec(),
            SelectionSpec::Pca { input_names, .. } | SelectionSpec::Ica { input_names, .. } => {
                input_names.clone()
            }
        };
        let mut b = Builder {
            files,
            num: HashMap::new(),
            cat: HashMap::new(),
            produced: Vec::new(),
            ops: Vec::new(),
            steps: Vec::new(),
        };
        let add_num = |b: &mut Builder<'_>, n: &str| {
            if !b.num.contains_key(n) {
                let k = b.num.len();
                b.num.insert(n.to_owned(), k);
                b.produced.push(false);
            }
        };
        for f in &feature_columns {
            add_num(&mut b, f);
        }
        let mut readers = Vec::new();
        let mut normalize = Vec::new();
        for (position, c) in inputs.iter().enumerate() {
            if c.role != "INPUT" {
                continue;
            }
            let date = DateFormat::from_storage(&c.storage);
            let numeric = date.is_some() || c.kind == "NUMERIC";
            let non_numeric = date.is_some() || c.kind != "NUMERIC";
            let mut r = Reader {
                position,
                num: None,
                cat: None,
                categorical: c.kind == "CATEGORY",
            };
            if numeric {
                add_num(&mut b, &c.name);
                let s = b.num[&c.name];
                if date.is_none() {
                    // Filled from the input.
                    b.produced[s] = true;
                    r.num = Some(s);
                }
            }
            if non_numeric {
                let k = b.cat.len();
                b.cat.insert(c.name.clone(), k);
                r.cat = Some(k);
            }
            if let (Some(fmt), "NUMERIC") = (date, c.kind.as_str()) {
                normalize.push((c.name.clone(), fmt));
            }
            readers.push(r);
        }

        // Normalize (dates).
        if !normalize.is_empty() {
            let mut shown = Vec::new();
            for (name, fmt) in normalize {
                let num = b.num[&name];
                b.produced[num] = true;
                let cat = b.cat[&name];
                shown.push(format!("{name} ({})", fmt.pattern()));
                b.ops.push(Op::Normalize {
                    cat,
                    num,
                    fmt,
                    column: name,
                });
            }
            b.step(
                "Normalize",
                format!("dates to seconds since 1900-01-01: {}", shown.join(", ")),
            );
        }

        // Impute.
        if let Some((file, f)) = b.file::<ImputedFile>("imputed")? {
            same_len(
                &file,
                &[
                    ("num_columns", f.num_columns.len()),
                    ("num_values", f.num_values.len()),
                ],
            )?;
            same_len(
                &file,
                &[
                    ("cat_columns", f.cat_columns.len()),
                    ("cat_values", f.cat_values.len()),
                ],
            )?;
            // A Python dict: the last value of a repeated column wins, at its first position.
            let mut order: Vec<(String, Value, String)> = Vec::new();
            let all = f
                .num_columns
                .iter()
                .zip(&f.num_values)
                .enumerate()
                .map(|(i, (c, v))| (c, v, format!("num_values[{i}]")))
                .chain(
                    f.cat_columns
                        .iter()
                        .zip(&f.cat_values)
                        .enumerate()
                        .map(|(i, (c, v))| (c, v, format!("cat_values[{i}]"))),
                );
            for (c, v, field) in all {
                match order.iter_mut().find(|(n, _, _)| n == c) {
                    Some(e) => {
                        e.1 = v.clone();
                        e.2 = field;
                    }
                    None => order.push((c.clone(), v.clone(), field)),
                }
            }
            let mut shown = Vec::new();
            for (c, v, field) in order {
                shown.push(format!("{c}={}", py_str(&v)));
                if let Some(&cat) = b.cat.get(&c) {
                    b.ops.push(Op::ImputeCat {
                        cat,
                        value: Level::from_json(&v),
                    });
                } else {
                    let num = b.need_num(&file, &field, &c)?;
                    let value = match &v {
                        Value::Null => f64::NAN,
                        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                        Value::Bool(x) => f64::from(u8::from(*x)),
                        other => {
                            return Err(Error::invalid(
                                &file,
                                field,
                                format!("numeric column `{c}` cannot be imputed with {other}"),
                            ));
                        }
                    };
                    b.ops.push(Op::ImputeNum { num, value });
                }
            }
            b.step("Impute", shown.join(", "));
        }

        // Binarize.
        if let Some((file, f)) = b.file::<BinarizedFile>("binarized")? {
            same_len(
                &file,
                &[
                    ("columns", f.columns.len()),
                    ("output_name", f.output_name.len()),
                    ("thresholds", f.thresholds.len()),
                ],
            )?;
            let mut v = Vec::new();
            for (i, ((c, o), t)) in f
                .columns
                .iter()
                .zip(&f.output_name)
                .zip(&f.thresholds)
                .enumerate()
            {
                if let Some(dst) = b.out(o) {
                    let src = b.need_num(&file, &format!("columns[{i}]"), c)?;
                    v.push((src, dst, t.0));
                }
            }
            b.ops.push(Op::Binarize(v));
            b.step(
                "Binarize",
                f.columns
                    .iter()
                    .zip(&f.thresholds)
                    .map(|(c, t)| format!("{c} > {}", t.0))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }

        // Flag.
        if let Some((file, f)) = b.file::<FlaggedFile>("flagged")? {
            same_len(
                &file,
                &[
                    ("columns", f.columns.len()),
                    ("output_names", f.output_names.len()),
                ],
            )?;
            let u = f.unrecorded_value.map_or(unrecorded, |n| n.0);
            for (i, (c, o)) in f.columns.iter().zip(&f.output_names).enumerate() {
                let Some(dst) = b.out(o) else { continue };
                if let Some(&src) = b.num.get(c) {
                    b.ops.push(Op::FlagNum { src, dst, u });
                } else {
                    let src = b.need_cat(&file, &format!("columns[{i}]"), c)?;
                    b.ops.push(Op::FlagCat { src, dst, u });
                }
            }
            b.step("Flag", format!("presence of {}", f.columns.join(", ")));
        }

        // Dummify.
        if let Some((file, f)) = b.file::<DummiesFile>("dummies")? {
            let u = f.unrecorded_value.map_or(unrecorded, |n| n.0);
            let mut shown = Vec::new();
            for (c, d) in &f.details {
                let field = format!("details.{c}");
                let d: DummyDetail = parse(&format!("{file} {field}"), d.to_string().as_bytes())?;
                let cat = b.need_cat(&file, &field, c)?;
                let mut levels = Vec::new();
                let mut all = Vec::new();
                for l in &d.levels {
                    let dst = b.out(&format!("dummy:{c}:{}", py_str(l)));
                    all.extend(dst);
                    levels.push((Level::from_json(l), dst));
                }
                let (by_str, others_levels) = split_levels(levels);
                let na = b.out(&format!("dummy:{c}:N/A"));
                let others = if d.with_others {
                    b.out(&format!("dummy:{c}:__Others__"))
                } else {
                    None
                };
                shown.push(format!(
                    "{c} ({} levels{})",
                    d.levels.len(),
                    if d.with_others { ", others" } else { "" }
                ));
                b.ops.push(Op::Dummy {
                    cat,
                    by_str,
                    others_levels,
                    all,
                    na,
                    others,
                    u,
                });
            }
            b.step("Dummify", shown.join(", "));
        }

        // DatetimeCyclical.
        if let Some((file, f)) = b.file::<CyclicalFile>("datetime_cyclical")? {
            let mut shown = Vec::new();
            for (c, periods) in &f.mapping {
                let field = format!("mapping.{c}");
                let periods: Vec<String> =
                    parse(&format!("{file} {field}"), periods.to_string().as_bytes())?;
                let mut outs = Vec::new();
                for p in &periods {
                    let period =
                        Period::parse(p).ok_or_else(|| Error::UnsupportedPreprocessing {
                            file: file.clone(),
                            what: format!(
                                "datetime cyclical period `{p}` of `{c}` (supported: MINUTE, HOUR, \
                             DAY, WEEK, MONTH, QUARTER, YEAR)"
                            ),
                        })?;
                    let prefix = format!("datetime_cyclical:{c}:{}:", period.lower());
                    let sin = b.out(&format!("{prefix}sin"));
                    let cos = b.out(&format!("{prefix}cos"));
                    outs.push((period, sin, cos));
                }
                let src = b.need_num(&file, &field, c)?;
                shown.push(format!("{c} ({})", periods.join(", ")));
                b.ops.push(Op::Cyclical { src, outs });
            }
            b.step("DatetimeCyclical", shown.join(", "));
        }

        // Rescale, Derive, DeriveRescale.
        let rescalers = b.file::<RescalersFile>("rescalers")?;
        let derivatives = b.file::<DerivativesFile>("derivatives")?;
        let mut rescale_map: Vec<(String, f64, f64)> = Vec::new();
        if let Some((file, f)) = &rescalers {
            same_len(
                file,
                &[
                    ("columns", f.columns.len()),
                    ("shifts", f.shifts.len()),
                    ("inv_scales", f.inv_scales.len()),
                ],
            )?;
            for ((c, s), i) in f.columns.iter().zip(&f.shifts).zip(&f.inv_scales) {
                match rescale_map.iter_mut().find(|(n, _, _)| n == c) {
                    Some(e) => {
                        e.1 = s.0;
                        e.2 = i.0;
                    }
                    None => rescale_map.push((c.clone(), s.0, i.0)),
                }
            }
            let v = rescale_map
                .iter()
                .filter_map(|(c, s, i)| b.num.get(c).map(|&k| (k, *s, *i)))
                .collect();
            b.ops.push(Op::Rescale(v));
            b.step(
                "Rescale",
                rescale_map
                    .iter()
                    .map(|(c, s, i)| format!("{c}: (x - {s}) * {i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        if let Some((file, f)) = &derivatives {
            for (i, c) in f.columns.iter().enumerate() {
                let [log, sqrt, square] = derivative_names(c);
                let (log, sqrt, square) = (b.out(&log), b.out(&sqrt), b.out(&square));
                if log.is_none() && sqrt.is_none() && square.is_none() {
                    continue;
                }
                let src = b.need_num(file, &format!("columns[{i}]"), c)?;
                b.ops.push(Op::Derive {
                    src,
                    log,
                    sqrt,
                    square,
                });
            }
            b.step(
                "Derive",
                format!("log, sqrt and square of {}", f.columns.join(", ")),
            );
            if rescalers.is_some() {
                let names: HashSet<String> =
                    f.columns.iter().flat_map(|c| derivative_names(c)).collect();
                let v: Vec<(usize, f64, f64)> = rescale_map
                    .iter()
                    .filter(|(c, _, _)| names.contains(c))
                    .filter_map(|(c, s, i)| b.num.get(c).map(|&k| (k, *s, *i)))
                    .collect();
                let shown = rescale_map
                    .iter()
                    .filter(|(c, _, _)| names.contains(c))
                    .map(|(c, _, _)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                b.ops.push(Op::Rescale(v));
                b.step("DeriveRescale", format!("rescale derivatives: {shown}"));
            }
        }

        // WordCount and TfIdf.
        for (stem, kind) in [("word_counts", "WordCount"), ("tfidf", "TfIdf")] {
            let Some((file, f)) = b.file::<TextFile>(stem)? else {
                continue;
            };
            let tfidf = stem == "tfidf";
            let mut lens = vec![
                ("column", f.column.len()),
                ("vocabulary", f.vocabulary.len()),
                ("stop_words", f.stop_words.len()),
                ("min_n_grams", f.min_n_grams.len()),
                ("max_n_grams", f.max_n_grams.len()),
            ];
            if tfidf {
                lens.push(("idf", f.idf.len()));
                lens.push(("output_names", f.output_names.len()));
            }
            same_len(&file, &lens)?;
            let u = f.unrecorded_value.map_or(unrecorded, |n| n.0);
            let norm = if tfidf {
                match f.norm.first().map(String::as_str) {
                    Some("L1") => Norm::L1,
                    Some("L2") => Norm::L2,
                    Some(_) => Norm::None,
                    None => return Err(Error::invalid(&file, "norm", "is empty")),
                }
            } else {
                Norm::None
            };
            for (i, c) in f.column.iter().enumerate() {
                let tokenizer =
                    Tokenizer::new(&f.stop_words[i], f.min_n_grams[i], f.max_n_grams[i]);
                if tfidf {
                    same_len(
                        &file,
                        &[
                            (&format!("vocabulary[{i}]"), f.vocabulary[i].len()),
                            (&format!("idf[{i}]"), f.idf[i].len()),
                            (&format!("output_names[{i}]"), f.output_names[i].len()),
                        ],
                    )?;
                    let mut vocab = HashMap::new();
                    let mut kept = Vec::new();
                    for ((t, idf), o) in f.vocabulary[i]
                        .iter()
                        .zip(&f.idf[i])
                        .zip(&f.output_names[i])
                    {
                        let dst = b.out(o);
                        kept.extend(dst);
                        vocab.insert(t.clone(), (idf.0, dst));
                    }
                    if kept.is_empty() {
                        continue;
                    }
                    let cat = b.need_cat(&file, &format!("column[{i}]"), c)?;
                    b.ops.push(Op::Tfidf {
                        cat,
                        tokenizer,
                        vocab,
                        kept,
                        norm,
                        u,
                    });
                } else {
                    let mut vocab = HashMap::new();
                    for t in &f.vocabulary[i] {
                        if let Some(dst) = b.out(&format!("countvec:{c}:{t}")) {
                            vocab.insert(t.clone(), dst);
                        }
                    }
                    if vocab.is_empty() {
                        continue;
                    }
                    let cat = b.need_cat(&file, &format!("column[{i}]"), c)?;
                    b.ops.push(Op::WordCount {
                        cat,
                        tokenizer,
                        vocab,
                        u,
                    });
                }
            }
            let detail = f
                .column
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "{c} ({} terms, {}-{}-grams)",
                        f.vocabulary[i].len(),
                        f.min_n_grams[i],
                        f.max_n_grams[i]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            b.step(kind, detail);
        }

        // VectorsUnfold.
        if let Some((file, f)) = b.file::<UnfoldFile>("vectors-unfold")? {
            let mut shown = Vec::new();
            for (c, n) in &f.vector_lengths {
                let field = format!("vector_lengths.{c}");
                let n = n
                    .as_u64()
                    .ok_or_else(|| Error::invalid(&file, &field, "is not a length"))?;
                let mut outs = Vec::new();
                for i in 0..n as usize {
                    if let Some(dst) = b.out(&format!("unfold:{c}:{i}")) {
                        outs.push((i, dst));
                    }
                }
                shown.push(format!("{c}[{n}]"));
                if outs.is_empty() {
                    continue;
                }
                let cat = b.need_cat(&file, &field, c)?;
                b.ops.push(Op::Unfold {
                    cat,
                    outs,
                    column: c.clone(),
                });
            }
            b.step("VectorsUnfold", shown.join(", "));
        }

        // RawCategoricalEncode.
        if let Some((file, f)) = b.file::<serde_json::Map<String, Value>>("category_levels")? {
            let mut shown = Vec::new();
            for (c, levels) in &f {
                let levels = levels.as_array().ok_or_else(|| {
                    Error::invalid(&file, c.as_str(), "is not a list of category levels")
                })?;
                shown.push(format!("{c} ({} levels)", levels.len()));
                let Some(dst) = b.out(c) else { continue };
                let cat = b.need_cat(&file, c, c)?;
                let (by_str, others) = split_levels(
                    levels
                        .iter()
                        .enumerate()
                        .map(|(k, l)| (Level::from_json(l), k as f64)),
                );
                b.ops.push(Op::RawCategorical {
                    cat,
                    dst,
                    by_str,
                    others,
                });
            }
            b.step("RawCategoricalEncode", shown.join(", "));
        }

        // CategoricalEncode (impact coding).
        if let Some((file, f)) = b.file::<ImpactFile>("impact_coded")? {
            same_len(
                &file,
                &[
                    ("columns", f.columns.len()),
                    ("levels", f.levels.len()),
                    ("encodings", f.encodings.len()),
                    ("defaults", f.defaults.len()),
                    ("outputNames", f.output_names.len()),
                ],
            )?;
            for (i, c) in f.columns.iter().enumerate() {
                let outs: Vec<Option<usize>> = f.output_names[i].iter().map(|o| b.out(o)).collect();
                if outs.iter().all(Option::is_none) {
                    continue;
                }
                same_len(
                    &file,
                    &[
                        (&format!("levels[{i}]"), f.levels[i].len()),
                        (&format!("encodings[{i}]"), f.encodings[i].len()),
                    ],
                )?;
                let width = outs.len();
                for (k, e) in f.encodings[i].iter().enumerate() {
                    if e.len() != width {
                        return Err(Error::invalid(
                            &file,
                            format!("encodings[{i}][{k}]"),
                            format!("has {} values for {width} outputs", e.len()),
                        ));
                    }
                }
                if f.defaults[i].len() != width {
                    return Err(Error::invalid(
                        &file,
                        format!("defaults[{i}]"),
                        format!("has {} values for {width} outputs", f.defaults[i].len()),
                    ));
                }
                let cat = b.need_cat(&file, &format!("columns[{i}]"), c)?;
                let (by_str, others) = split_levels(
                    f.levels[i]
                        .iter()
                        .enumerate()
                        .map(|(k, l)| (Level::from_json(l), k)),
                );
                b.ops.push(Op::Impact {
                    cat,
                    by_str,
                    others,
                    encodings: f.encodings[i].iter().map(|e| nums(e)).collect(),
                    defaults: nums(&f.defaults[i]),
                    outs,
                });
            }
            b.step(
                "CategoricalEncode",
                format!("impact coding of {}", f.columns.join(", ")),
            );
        }

        // Interactions.
        if let Some((file, f)) = b.file::<NumNumFile>("num_num")? {
            same_len(
                &file,
                &[
                    ("column_1", f.column_1.len()),
                    ("column_2", f.column_2.len()),
                    ("rescale", f.rescale.len()),
                    ("shift", f.shift.len()),
                    ("inv_scale", f.inv_scale.len()),
                ],
            )?;
            let mut shown = Vec::new();
            for i in 0..f.column_1.len() {
                let (c1, c2) = (&f.column_1[i], &f.column_2[i]);
                shown.push(format!("{c1}×{c2}"));
                let Some(dst) = b.out(&format!("interaction:{c1}:{c2}")) else {
                    continue;
                };
                let a = b.need_num(&file, &format!("column_1[{i}]"), c1)?;
                let bb = b.need_num(&file, &format!("column_2[{i}]"), c2)?;
                b.ops.push(Op::NumNum {
                    a,
                    b: bb,
                    dst,
                    rescale: f.rescale[i].then_some((f.shift[i].0, f.inv_scale[i].0)),
                });
            }
            b.step("NumNumInteraction", shown.join(", "));
        }
        if let Some((file, f)) = b.file::<NumCatFile>("num_cat")? {
            same_len(
                &file,
                &[
                    ("num", f.num.len()),
                    ("cat", f.cat.len()),
                    ("values", f.values.len()),
                ],
            )?;
            let u = f.unrecorded_value.map_or(unrecorded, |n| n.0);
            let mut shown = Vec::new();
            for i in 0..f.num.len() {
                let (n, c) = (&f.num[i], &f.cat[i]);
                shown.push(format!("{n}×{c}"));
                let mut values = Vec::new();
                for v in &f.values[i] {
                    if let Some(dst) = b.out(&format!("interaction:{n}:{c}:{}", py_str(v))) {
                        values.push((Level::from_json(v), dst));
                    }
                }
                if values.is_empty() {
                    continue;
                }
                let num = b.need_num(&file, &format!("num[{i}]"), n)?;
                let cat = b.need_cat(&file, &format!("cat[{i}]"), c)?;
                b.ops.push(Op::NumCat {
                    num,
                    cat,
                    values,
                    u,
                });
            }
            b.step("NumCatInteraction", shown.join(", "));
        }
        if let Some((file, f)) = b.file::<CatCatFile>("cat_cat")? {
            same_len(
                &file,
                &[
                    ("column_1", f.column_1.len()),
                    ("column_2", f.column_2.len()),
                    ("values", f.values.len()),
                ],
            )?;
            let u = f.unrecorded_value.map_or(unrecorded, |n| n.0);
            let mut shown = Vec::new();
            for i in 0..f.column_1.len() {
                let (c1, c2) = (&f.column_1[i], &f.column_2[i]);
                shown.push(format!("{c1}×{c2}"));
                let c1s = b.need_cat(&file, &format!("column_1[{i}]"), c1)?;
                let c2s = b.need_cat(&file, &format!("column_2[{i}]"), c2)?;
                let mut pairs = Vec::new();
                for (v1, v2) in &f.values[i] {
                    let name = format!("interaction:{c1}:{c2}:{}:{}", py_str(v1), py_str(v2));
                    if let Some(dst) = b.out(&name) {
                        pairs.push((Level::from_json(v1), Level::from_json(v2), dst));
                    }
                }
                if !pairs.is_empty() {
                    b.ops.push(Op::CatCat {
                        c1: c1s,
                        c2: c2s,
                        pairs,
                        u,
                    });
                }
            }
            b.step("CatCatInteraction", shown.join(", "));
        }

        // Every feature must be produced by something.
        let listed_in = match selection {
            SelectionSpec::All => "dss_pipeline_meta.json `columns`".to_owned(),
            _ => "feature_selection.json `selection_params.input_names`".to_owned(),
        };
        for f in &feature_columns {
            if !b.produced[b.num[f]] {
                return Err(Error::UnproducedFeature {
                    feature: f.clone(),
                    listed_in: format!("{} {listed_in}", files.origin()),
                });
            }
        }

        // Drop rows.
        let mut drop_rows = Vec::new();
        if let Some((file, f)) = b.file::<DerivativesFile>("drop_rows")? {
            for (i, c) in f.columns.iter().enumerate() {
                let slot = match (b.cat.get(c), b.num.get(c)) {
                    (Some(&k), _) => SlotRef::Cat(k),
                    (None, Some(&k)) => SlotRef::Num(k),
                    _ => {
                        return Err(Error::invalid(
                            &file,
                            format!("columns[{i}]"),
                            format!("column `{c}` is not an input column of the model"),
                        ));
                    }
                };
                drop_rows.push((c.clone(), slot));
            }
        }

        let feature_index =
            |names: &[String]| -> Vec<usize> { names.iter().map(|n| b.num[n]).collect() };
        let sel_file = files.shown("feature_selection.json");
        let (selection, n_features) = match selection {
            SelectionSpec::All => (
                Selection::Gather(feature_index(&feature_columns)),
                feature_columns.len(),
            ),
            SelectionSpec::Pca {
                input_names,
                rot,
                means,
                explained_variance,
                sparse,
            } => {
                let (matrix, k) =
                    matrix(&sel_file, "selection_params.rot", rot, input_names.len())?;
                let stds: Vec<f64> = explained_variance
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .map(|v| v.powf(0.5))
                    .collect();
                if !stds.is_empty() && stds.len() != k {
                    return Err(Error::invalid(
                        &sel_file,
                        "selection_params.explained_variance",
                        format!("has {} values for {k} components", stds.len()),
                    ));
                }
                let means = means.clone().unwrap_or_default();
                check_means(&sel_file, &means, input_names.len())?;
                (
                    Selection::Project {
                        inputs: feature_index(input_names),
                        matrix,
                        k,
                        dense: !sparse,
                        means: if *sparse { Vec::new() } else { means },
                        stds: if *sparse { Vec::new() } else { stds },
                    },
                    k,
                )
            }
            SelectionSpec::Ica {
                input_names,
                mixing,
                means,
            } => {
                let (matrix, k) = matrix(
                    &sel_file,
                    "selection_params.mixing",
                    mixing,
                    input_names.len(),
                )?;
                let means = means.clone().unwrap_or_default();
                check_means(&sel_file, &means, input_names.len())?;
                (
                    Selection::Project {
                        inputs: feature_index(input_names),
                        matrix,
                        k,
                        dense: true,
                        means,
                        stds: Vec::new(),
                    },
                    k,
                )
            }
        };
        let mut steps = b.steps;
        match &selection {
            Selection::Gather(_) => {}
            Selection::Project { k, dense, .. } => steps.push(StepSummary {
                kind: "Selection",
                detail: format!(
                    "projection of {} features onto {k} components ({})",
                    feature_columns.len(),
                    if *dense { "dense" } else { "sparse" }
                ),
            }),
        }
        Ok(Pipeline {
            inputs,
            readers,
            n_num: b.num.len(),
            n_cat: b.cat.len(),
            drop_rows,
            ops: b.ops,
            selection,
            n_features,
            steps,
        })
    }

    pub(crate) fn drop_row_columns(&self) -> Vec<String> {
        self.drop_rows.iter().map(|(n, _)| n.clone()).collect()
    }

    pub(crate) fn n_num(&self) -> usize {
        self.n_num
    }

    pub(crate) fn n_cat(&self) -> usize {
        self.n_cat
    }

    /// Reads the row's INPUT columns into the buffers (§3). `get(position, name)` is the cell.
    pub(crate) fn prepare<'a>(
        &self,
        get: &mut dyn FnMut(usize, &str) -> Cell<'a>,
        num: &mut [f64],
        cat: &mut [Val<'a>],
    ) -> Result<()> {
        num.fill(f64::NAN);
        for r in &self.readers {
            let name = &self.inputs[r.position].name;
            let cell = get(r.position, name);
            if let Some(k) = r.cat {
                cat[k] = to_value(cell, r.categorical);
            }
            if let Some(k) = r.num {
                num[k] = to_numeric(cell, name)?;
            }
        }
        Ok(())
    }

    /// The first drop-rows column that is missing in the raw input, if any.
    pub(crate) fn dropped_by(&self, num: &[f64], cat: &[Val<'_>]) -> Option<&str> {
        self.drop_rows.iter().find_map(|(name, slot)| {
            let missing = match *slot {
                SlotRef::Cat(k) => cat[k].is_null(),
                SlotRef::Num(k) => num[k].is_nan(),
            };
            missing.then_some(name.as_str())
        })
    }

    /// Runs the steps and writes the final features into `out` (`n_features` long).
    pub(crate) fn transform<'a>(
        &'a self,
        num: &mut [f64],
        cat: &mut [Val<'a>],
        out: &mut [f64],
    ) -> Result<()> {
        for op in &self.ops {
            run_op(op, num, cat)?;
        }
        match &self.selection {
            Selection::Gather(idx) => {
                for (o, &i) in out.iter_mut().zip(idx) {
                    *o = num[i];
                }
            }
            Selection::Project {
                inputs,
                matrix,
                k,
                dense,
                means,
                stds,
            } => {
                out[..*k].fill(0.0);
                for (i, &slot) in inputs.iter().enumerate() {
                    let mut v = num[slot];
                    if *dense {
                        if v.is_nan() {
                            v = 0.0;
                        }
                        if let Some(m) = means.get(i) {
                            v -= m;
                        }
                    }
                    let row = &matrix[i * k..(i + 1) * k];
                    for (o, r) in out[..*k].iter_mut().zip(row) {
                        *o += v * r;
                    }
                }
                for (o, s) in out.iter_mut().zip(stds) {
                    *o /= s;
                }
            }
        }
        Ok(())
    }
}

fn check_means(file: &str, means: &[f64], n: usize) -> Result<()> {
    if !means.is_empty() && means.len() != n {
        return Err(Error::invalid(
            file,
            "selection_params.means",
            format!("has {} values for {n} input features", means.len()),
        ));
    }
    Ok(())
}

fn matrix(file: &str, field: &str, rows: &[Vec<f64>], n: usize) -> Result<(Vec<f64>, usize)> {
    if rows.len() != n {
        return Err(Error::invalid(
            file,
            field,
            format!("has {} rows for {n} input features", rows.len()),
        ));
    }
    let k = rows.first().map_or(0, Vec::len);
    let mut m = Vec::with_capacity(n * k);
    for (i, r) in rows.iter().enumerate() {
        if r.len() != k {
            return Err(Error::invalid(
                file,
                format!("{field}[{i}]"),
                format!("has {} columns, row 0 has {k}", r.len()),
            ));
        }
        m.extend_from_slice(r);
    }
    Ok((m, k))
}

fn na_or<'v>(v: &'v Val<'_>) -> Val<'v> {
    match v {
        Val::Null => Val::Str("N/A".into()),
        Val::Str(s) => Val::Str(std::borrow::Cow::Borrowed(s.as_ref())),
        Val::Num(x) => Val::Num(*x),
        Val::Bool(b) => Val::Bool(*b),
        Val::Json(j) => Val::Json(j),
    }
}

fn run_op<'a>(op: &'a Op, num: &mut [f64], cat: &mut [Val<'a>]) -> Result<()> {
    match op {
        Op::Normalize {
            cat: c,
            num: n,
            fmt,
            column,
        } => {
            num[*n] = match &cat[*c] {
                Val::Null => f64::NAN,
                Val::Str(s) => match dates::parse_us_since_1900(s, *fmt) {
                    Some(us) => dates::total_seconds(us),
                    None => {
                        return Err(Error::InvalidInput {
                            row: None,
                            column: column.clone(),
                            value: format!("{s:?}"),
                            reason: format!(
                                "a date of this column has the format {}",
                                fmt.pattern()
                            ),
                        });
                    }
                },
                other => {
                    return Err(Error::InvalidInput {
                        row: None,
                        column: column.clone(),
                        value: format!("{other:?}"),
                        reason: format!("a date must be a string of the format {}", fmt.pattern()),
                    });
                }
            };
        }
        Op::ImputeCat { cat: c, value } => {
            if cat[*c].is_null() {
                // Borrowed from the model: no allocation per imputed row.
                cat[*c] = value.to_val();
            }
        }
        Op::ImputeNum { num: n, value } => {
            if num[*n].is_nan() {
                num[*n] = *value;
            }
        }
        Op::Binarize(v) => {
            for &(src, dst, t) in v {
                num[dst] = if num[src] > t { 1.0 } else { 0.0 };
            }
        }
        Op::FlagNum { src, dst, u } => {
            num[*dst] = if num[*src].is_nan() { *u } else { 1.0 };
        }
        Op::FlagCat { src, dst, u } => {
            num[*dst] = if cat[*src].is_null() { *u } else { 1.0 };
        }
        Op::Dummy {
            cat: c,
            by_str,
            others_levels,
            all,
            na,
            others,
            u,
        } => {
            for &k in all {
                num[k] = *u;
            }
            let v = &cat[*c];
            let null = v.is_null();
            let mut matched = false;
            if let Some(s) = v.as_str() {
                if let Some(dst) = by_str.get(s) {
                    matched = true;
                    if let Some(k) = dst {
                        num[*k] = 1.0;
                    }
                }
            } else {
                for (l, dst) in others_levels {
                    if v.eq_level(l) {
                        matched = true;
                        if let Some(k) = dst {
                            num[*k] = 1.0;
                        }
                    }
                }
            }
            if let Some(k) = na {
                num[*k] = if null { 1.0 } else { *u };
            }
            if let Some(k) = others {
                num[*k] = if !null && !matched { 1.0 } else { *u };
            }
        }
        Op::Cyclical { src, outs } => {
            let x = num[*src];
            for &(p, sin, cos) in outs {
                let a = dates::cyclical_angle(x, p).unwrap_or(f64::NAN);
                if let Some(k) = sin {
                    num[k] = a.sin();
                }
                if let Some(k) = cos {
                    num[k] = a.cos();
                }
            }
        }
        Op::Rescale(v) => {
            for &(k, shift, inv) in v {
                num[k] = (num[k] - shift) * inv;
            }
        }
        Op::Derive {
            src,
            log,
            sqrt,
            square,
        } => {
            let x = num[*src];
            if let Some(k) = log {
                num[*k] = if x > 0.0 {
                    (x + 0.00000001).ln()
                } else {
                    0.0 * x
                };
            }
            if let Some(k) = sqrt {
                num[*k] = if x > 0.0 { x.sqrt() } else { 0.0 * x };
            }
            if let Some(k) = square {
                num[*k] = x * x;
            }
        }
        Op::WordCount {
            cat: c,
            tokenizer,
            vocab,
            u,
        } => {
            // The reference sets to `u` only the tokens that occur somewhere in the batch, and
            // leaves the others NaN (format doc §10.1); every vocabulary column starts at `u`
            // here, which is what it does for a batch where every token occurs.
            for &k in vocab.values() {
                num[k] = *u;
            }
            for (t, n) in tokenizer.counts(&cat[*c].text()) {
                if let Some(&k) = vocab.get(&t) {
                    num[k] = n;
                }
            }
        }
        Op::Tfidf {
            cat: c,
            tokenizer,
            vocab,
            kept,
            norm,
            u,
        } => {
            for &k in kept {
                num[k] = *u;
            }
            let counts = tokenizer.counts(&cat[*c].text());
            let mut total = 0.0;
            for (t, n) in &counts {
                if let Some((idf, _)) = vocab.get(t) {
                    let v = n * idf;
                    match norm {
                        Norm::L1 => total += v.abs(),
                        Norm::L2 => total += v * v,
                        Norm::None => {}
                    }
                }
            }
            if total <= 0.0 {
                total = 1.0;
            }
            if *norm == Norm::L2 {
                total = total.powf(0.5);
            }
            let inv = 1.0 / total;
            for (t, n) in &counts {
                if let Some((idf, Some(k))) = vocab.get(t) {
                    num[*k] = inv * n * idf;
                }
            }
        }
        Op::Unfold {
            cat: c,
            outs,
            column,
        } => {
            let bad = |v: String, reason: &str| Error::InvalidInput {
                row: None,
                column: column.clone(),
                value: v,
                reason: reason.to_owned(),
            };
            let parsed: Value;
            let arr = match &cat[*c] {
                Val::Null => {
                    for &(_, k) in outs {
                        num[k] = f64::NAN;
                    }
                    return Ok(());
                }
                Val::Str(s) => {
                    parsed = serde_json::from_str(s).map_err(|_| {
                        bad(format!("{s:?}"), "a vector must be a JSON array of numbers")
                    })?;
                    &parsed
                }
                Val::Json(v) => *v,
                other => return Err(bad(format!("{other:?}"), "a vector must be a JSON array")),
            };
            let arr = arr
                .as_array()
                .ok_or_else(|| bad(arr.to_string(), "a vector must be a JSON array"))?;
            for &(i, k) in outs {
                let v = arr.get(i).ok_or_else(|| {
                    bad(
                        format!("a vector of {} values", arr.len()),
                        &format!("the model reads element {i}"),
                    )
                })?;
                num[k] = match v {
                    Value::Null => f64::NAN,
                    Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                    other => return Err(bad(other.to_string(), "vector elements must be numbers")),
                };
            }
        }
        Op::RawCategorical {
            cat: c,
            dst,
            by_str,
            others,
        } => {
            let v = &cat[*c];
            num[*dst] = match v {
                Val::Null => by_str.get("_DKU_NA_").copied().unwrap_or(-1.0),
                Val::Str(s) => by_str.get(s.as_ref()).copied().unwrap_or(-1.0),
                other => others
                    .iter()
                    .rev()
                    .find(|(l, _)| other.eq_level(l))
                    .map_or(-1.0, |(_, code)| *code),
            };
        }
        Op::Impact {
            cat: c,
            by_str,
            others,
            encodings,
            defaults,
            outs,
        } => {
            let v = &cat[*c];
            let level = match v.as_str() {
                Some(s) => by_str.get(s).copied(),
                None => others
                    .iter()
                    .rev()
                    .find(|(l, _)| v.eq_level(l))
                    .map(|(_, k)| *k),
            };
            let values = level.map_or(defaults.as_slice(), |k| encodings[k].as_slice());
            for (o, x) in outs.iter().zip(values) {
                if let Some(k) = o {
                    num[*k] = *x;
                }
            }
        }
        Op::NumNum { a, b, dst, rescale } => {
            let mut v = num[*a] * num[*b];
            if let Some((shift, inv)) = rescale {
                v = (v - shift) * inv;
            }
            num[*dst] = v;
        }
        Op::NumCat {
            num: n,
            cat: c,
            values,
            u,
        } => {
            let x = num[*n];
            let v = na_or(&cat[*c]);
            for (l, k) in values {
                num[*k] = if v.eq_level(l) && x != 0.0 { x } else { *u };
            }
        }
        Op::CatCat { c1, c2, pairs, u } => {
            let v1 = na_or(&cat[*c1]);
            let v2 = na_or(&cat[*c2]);
            for (l1, l2, k) in pairs {
                num[*k] = if v1.eq_level(l1) && v2.eq_level(l2) {
                    1.0
                } else {
                    *u
                };
            }
        }
    }
    Ok(())
}
