//! A loaded model: loading (format doc §1–§2), the heads (§6: threshold, argmax, calibration,
//! clusters), partitions (§7), results and the summary.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::algo::{Algo, AlgoScratch};
use crate::archive::{Files, META};
use crate::dates;
use crate::error::{Error, Result};
use crate::input::{Batch, Cell, Record, Val, py_float_str, py_str};
use crate::json::{Num, nums, parse};
use crate::pipeline::{
    InputColumn, Pipeline, SelectionSpec, StepSummary, read_schema, read_selection,
};

const MODEL_GZ: &str = "dss_pipeline_model.gz";

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `REGRESSION`: a number.
    Regression,
    /// `BINARY_PROBABILISTIC`: one of two classes, by a probability threshold.
    Binary,
    /// `MULTICLASS_PROBABILISTIC`: the most probable class.
    Multiclass,
    /// `CLUSTERING`: a cluster (k-means) or regular/anomaly (isolation forest).
    Clustering,
}

impl Task {
    fn parse(s: &str, file: &str) -> Result<Task> {
        Ok(match s {
            "REGRESSION" => Task::Regression,
            "BINARY_PROBABILISTIC" => Task::Binary,
            "MULTICLASS_PROBABILISTIC" => Task::Multiclass,
            "CLUSTERING" => Task::Clustering,
            other => {
                return Err(Error::UnsupportedTask {
                    file: file.to_owned(),
                    name: other.to_owned(),
                    supported: "REGRESSION, BINARY_PROBABILISTIC, MULTICLASS_PROBABILISTIC, \
                                CLUSTERING",
                });
            }
        })
    }

    /// The format's name of the task.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Regression => "REGRESSION",
            Task::Binary => "BINARY_PROBABILISTIC",
            Task::Multiclass => "MULTICLASS_PROBABILISTIC",
            Task::Clustering => "CLUSTERING",
        }
    }
}

/// Why a row got no prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnoreReason {
    /// The model's drop-rows preprocessing rejects rows where `column` is missing.
    DropRows { column: String },
    /// A partitioned model has no partition for this row's dimension values.
    UnknownPartition { partition: String },
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::DropRows { column } => {
                write!(
                    f,
                    "rows with a missing value in `{column}` are dropped by the model"
                )
            }
            IgnoreReason::UnknownPartition { partition } => {
                write!(f, "the model has no partition `{partition}`")
            }
        }
    }
}

/// The predicted value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictedValue {
    /// A class label (classification).
    Class(Arc<str>),
    /// A number (regression).
    Value(f64),
    /// A cluster label (clustering), after the user's renames.
    Cluster(Arc<str>),
    /// A cluster index, for clustering exports without cluster names.
    ClusterIndex(usize),
}

/// The result of scoring one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// `None` when the row is ignored.
    pub prediction: Option<PredictedValue>,
    /// Class probabilities, in the model's class order (classification rows only).
    pub probabilities: Vec<(Arc<str>, f64)>,
    /// The isolation forest's anomaly score (`decision_function`; negative means anomaly).
    pub anomaly_score: Option<f64>,
    /// Why the row got no prediction.
    pub ignored: Option<IgnoreReason>,
}

#[derive(Debug, Clone, PartialEq)]
enum RowResult {
    Class(u32),
    Value(f64),
    Cluster(u32),
    ClusterIndex(u32),
    Ignored(IgnoreReason),
}

/// The results of a batch, column by column: one entry per row, probabilities `n_rows × K`.
#[derive(Debug, Clone)]
pub struct Predictions {
    task: Task,
    classes: Arc<[Arc<str>]>,
    n_probs: usize,
    rows: Vec<RowResult>,
    probs: Vec<f64>,
    scores: Vec<f64>,
}

impl Predictions {
    fn new(task: Task, classes: Arc<[Arc<str>]>, n_probs: usize, n: usize) -> Self {
        Predictions {
            task,
            classes,
            n_probs,
            rows: Vec::with_capacity(n),
            probs: Vec::with_capacity(n * n_probs),
            scores: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn task(&self) -> Task {
        self.task
    }

    /// The class (or cluster) labels; probabilities follow this order.
    pub fn classes(&self) -> &[Arc<str>] {
        &self.classes
    }

    /// The regression value of row `i` (`None` for other tasks and ignored rows).
    pub fn value(&self, i: usize) -> Option<f64> {
        match self.rows[i] {
            RowResult::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The class or cluster label of row `i` (`None` for regression and ignored rows).
    pub fn label(&self, i: usize) -> Option<&str> {
        match self.rows[i] {
            RowResult::Class(k) | RowResult::Cluster(k) => Some(&self.classes[k as usize]),
            _ => None,
        }
    }

    /// The class probabilities of row `i`, in [`Predictions::classes`] order.
    pub fn probabilities(&self, i: usize) -> Option<&[f64]> {
        if self.n_probs == 0 || matches!(self.rows[i], RowResult::Ignored(_)) {
            return None;
        }
        Some(&self.probs[i * self.n_probs..(i + 1) * self.n_probs])
    }

    /// The anomaly score of row `i` (isolation forests).
    pub fn anomaly_score(&self, i: usize) -> Option<f64> {
        self.scores.get(i).copied().filter(|s| !s.is_nan())
    }

    /// Why row `i` got no prediction.
    pub fn ignored(&self, i: usize) -> Option<&IgnoreReason> {
        match &self.rows[i] {
            RowResult::Ignored(r) => Some(r),
            _ => None,
        }
    }

    /// Row `i` as a [`Prediction`].
    pub fn get(&self, i: usize) -> Prediction {
        let probabilities = self
            .probabilities(i)
            .map(|p| {
                self.classes
                    .iter()
                    .cloned()
                    .zip(p.iter().copied())
                    .collect()
            })
            .unwrap_or_default();
        let prediction = match &self.rows[i] {
            RowResult::Class(k) => Some(PredictedValue::Class(self.classes[*k as usize].clone())),
            RowResult::Value(v) => Some(PredictedValue::Value(*v)),
            RowResult::Cluster(k) => {
                Some(PredictedValue::Cluster(self.classes[*k as usize].clone()))
            }
            RowResult::ClusterIndex(k) => Some(PredictedValue::ClusterIndex(*k as usize)),
            RowResult::Ignored(_) => None,
        };
        Prediction {
            prediction,
            probabilities,
            anomaly_score: self.anomaly_score(i),
            ignored: self.ignored(i).cloned(),
        }
    }
}

#[derive(Debug, Clone)]
enum CalMethod {
    None,
    Sigmoid { a: Vec<f64>, b: Vec<f64> },
    Isotonic { x: Vec<Vec<f64>>, y: Vec<Vec<f64>> },
}

#[derive(Debug, Clone)]
struct Calibration {
    method: CalMethod,
    from_proba: bool,
    n: usize,
}

#[derive(Deserialize)]
struct CalibratorJson {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    from_proba: Option<bool>,
    #[serde(default)]
    a_array: Vec<Num>,
    #[serde(default)]
    b_array: Vec<Num>,
    #[serde(default)]
    x_array: Vec<Vec<Num>>,
    #[serde(default)]
    y_array: Vec<Vec<Num>>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `np.interp(x, xp, fp)`.
fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if x.is_nan() || n == 0 {
        return f64::NAN;
    }
    if n == 1 {
        return fp[0];
    }
    if x > xp[n - 1] {
        return fp[n - 1];
    }
    if x < xp[0] {
        return fp[0];
    }
    if x == xp[n - 1] {
        return fp[n - 1];
    }
    // The last j with xp[j] <= x.
    let j = xp.partition_point(|&v| v <= x).saturating_sub(1).min(n - 2);
    if x == xp[j] {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let mut r = slope * (x - xp[j]) + fp[j];
    if r.is_nan() {
        r = slope * (x - xp[j + 1]) + fp[j + 1];
        if r.is_nan() && fp[j] == fp[j + 1] {
            r = fp[j];
        }
    }
    r
}

/// `np.where(p >= 0, np.where(p <= 1, p, 1), 0)`: NaN becomes 0.
fn clip01(p: f64) -> f64 {
    if p >= 0.0 {
        if p <= 1.0 { p } else { 1.0 }
    } else {
        0.0
    }
}

impl Calibration {
    fn load(params: &Value, file: &str) -> Result<Calibration> {
        let none = Calibration {
            method: CalMethod::None,
            from_proba: true,
            n: 0,
        };
        let Some(c) = params.get("calibrator").filter(|c| !c.is_null()) else {
            return Ok(none);
        };
        let j: CalibratorJson = serde_path_to_error::deserialize(c).map_err(|e| Error::Json {
            file: file.to_owned(),
            field: format!("calibrator.{}", e.path()),
            detail: e.into_inner().to_string(),
        })?;
        let need_from = || {
            j.from_proba
                .ok_or_else(|| Error::invalid(file, "calibrator.from_proba", "is missing"))
        };
        Ok(match j.method.as_deref() {
            Some("SIGMOID") => {
                if j.a_array.len() != j.b_array.len() || j.a_array.is_empty() {
                    return Err(Error::invalid(
                        file,
                        "calibrator.b_array",
                        format!(
                            "has {} values, a_array {}",
                            j.b_array.len(),
                            j.a_array.len()
                        ),
                    ));
                }
                let n = if j.a_array.len() > 2 {
                    j.a_array.len()
                } else {
                    2
                };
                Calibration {
                    method: CalMethod::Sigmoid {
                        a: nums(&j.a_array),
                        b: nums(&j.b_array),
                    },
                    from_proba: need_from()?,
                    n,
                }
            }
            Some("ISOTONIC") => {
                if j.x_array.len() != j.y_array.len() || j.x_array.is_empty() {
                    return Err(Error::invalid(
                        file,
                        "calibrator.y_array",
                        format!(
                            "has {} curves, x_array {}",
                            j.y_array.len(),
                            j.x_array.len()
                        ),
                    ));
                }
                for (i, (x, y)) in j.x_array.iter().zip(&j.y_array).enumerate() {
                    if x.len() != y.len() {
                        return Err(Error::invalid(
                            file,
                            format!("calibrator.y_array[{i}]"),
                            format!("has {} points, x_array[{i}] {}", y.len(), x.len()),
                        ));
                    }
                }
                let n = if j.x_array.len() > 2 {
                    j.y_array.len()
                } else {
                    2
                };
                Calibration {
                    method: CalMethod::Isotonic {
                        x: j.x_array.iter().map(|v| nums(v)).collect(),
                        y: j.y_array.iter().map(|v| nums(v)).collect(),
                    },
                    from_proba: need_from()?,
                    n,
                }
            }
            Some(other) => {
                return Err(Error::UnsupportedPreprocessing {
                    file: file.to_owned(),
                    what: format!("calibration method `{other}` (supported: SIGMOID, ISOTONIC)"),
                });
            }
            None => none,
        })
    }

    fn apply(&self, raw: &[f64], out: &mut [f64]) {
        match &self.method {
            CalMethod::None => out.copy_from_slice(raw),
            CalMethod::Sigmoid { a, b } => {
                if self.n == 2 {
                    out[1] = sigmoid(-(a[0] * raw[1] + b[0]));
                    out[0] = 1.0 - out[1];
                } else {
                    let mut norm = 0.0;
                    for k in 0..self.n {
                        out[k] = sigmoid(-(a[k] * raw[k] + b[k]));
                        norm += out[k];
                    }
                    for o in out.iter_mut() {
                        *o /= norm;
                    }
                }
            }
            CalMethod::Isotonic { x, y } => {
                if self.n == 2 {
                    out[1] = clip01(interp(raw[1], &x[0], &y[0]));
                    out[0] = 1.0 - out[1];
                } else {
                    let mut norm = 0.0;
                    for k in 0..self.n {
                        out[k] = clip01(interp(raw[k], &x[k], &y[k]));
                        norm += out[k];
                    }
                    for o in out.iter_mut() {
                        *o /= norm;
                    }
                }
            }
        }
    }

    fn describe(&self) -> Option<String> {
        let from = if self.from_proba {
            "from probabilities"
        } else {
            "from the decision function"
        };
        match self.method {
            CalMethod::None => None,
            CalMethod::Sigmoid { .. } => Some(format!("sigmoid, {from}")),
            CalMethod::Isotonic { .. } => Some(format!("isotonic, {from}")),
        }
    }
}

#[derive(Debug, Deserialize)]
struct MetaJson {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    algorithm_name: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default)]
    classes: Option<Vec<Value>>,
    #[serde(default)]
    partitions: Option<Vec<String>>,
    #[serde(default)]
    partitioning: Vec<String>,
    #[serde(rename = "partitioningTypes", default)]
    partitioning_types: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct ClusterMeta {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserMetaJson {
    #[serde(default)]
    active_classifier_threshold: Option<Num>,
    #[serde(default)]
    cluster_metas: Option<HashMap<String, ClusterMeta>>,
}

#[derive(Debug, Deserialize)]
struct VersionInfoJson {
    #[serde(rename = "trainedWithDSSConfVersion", default)]
    trained_with_dss_conf_version: Option<Value>,
}

/// One (non-partitioned) model.
#[derive(Debug, Clone)]
struct Single {
    pipeline: Pipeline,
    algo: Algo,
    task: Task,
    classes: Arc<[Arc<str>]>,
    has_class_names: bool,
    threshold: Option<f64>,
    calibration: Calibration,
    n_probs: usize,
    n_raw: usize,
    unrecorded: f64,
}

fn read_meta(files: &Files) -> Result<MetaJson> {
    parse(
        &files.shown(META),
        &files.require(META, "the task and the algorithm")?,
    )
}

impl Single {
    fn load(files: &Files, meta: MetaJson, default_type: Option<&str>) -> Result<Single> {
        let meta_file = files.shown(META);
        let type_name = meta
            .kind
            .as_deref()
            .or(default_type)
            .ok_or_else(|| Error::invalid(&meta_file, "type", "is missing"))?;
        let task = Task::parse(type_name, &meta_file)?;
        let algo_name = meta
            .algorithm_name
            .as_deref()
            .ok_or_else(|| Error::invalid(&meta_file, "algorithm_name", "is missing"))?;

        let gz = files.require(MODEL_GZ, "the algorithm's parameters")?;
        let gz_file = files.shown(MODEL_GZ);
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut text)
            .map_err(|e| Error::Gzip {
                file: gz_file.clone(),
                detail: e.to_string(),
            })?;
        let params: Value = parse(&gz_file, &text)?;
        if !params.is_object() {
            return Err(Error::Json {
                file: gz_file,
                field: String::new(),
                detail: "the algorithm's parameters are not a JSON object".into(),
            });
        }

        let inputs = read_schema(files)?;
        let rmodeling: Value = parse(
            &files.shown("rmodeling_params.json"),
            &files.require("rmodeling_params.json", "the modeling parameters")?,
        )?;
        let xgboost_grid = rmodeling.get("xgboost_grid").is_some_and(|v| !v.is_null());
        let version = match files.read("version_info.json")? {
            None => 0,
            Some(b) => {
                let vf = files.shown("version_info.json");
                let v: VersionInfoJson = parse(&vf, &b)?;
                match v.trained_with_dss_conf_version {
                    None | Some(Value::Null) => 0,
                    Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                    Some(Value::String(s)) => s.trim().parse().map_err(|_| {
                        Error::invalid(&vf, "trainedWithDSSConfVersion", "is not an integer")
                    })?,
                    Some(_) => {
                        return Err(Error::invalid(
                            &vf,
                            "trainedWithDSSConfVersion",
                            "is not an integer",
                        ));
                    }
                }
            }
        };
        let unrecorded = if xgboost_grid && version >= 13400 {
            f64::NAN
        } else {
            0.0
        };

        let selection = read_selection(files)?;
        let columns = match (&meta.columns, &selection) {
            (Some(c), _) => c.clone(),
            (None, SelectionSpec::All) => {
                return Err(Error::invalid(&meta_file, "columns", "is missing"));
            }
            (None, _) => Vec::new(),
        };
        let pipeline = Pipeline::load(files, inputs, &columns, &selection, unrecorded)?;
        let algo = Algo::load(algo_name, type_name, &params, &gz_file)?;

        // The algorithm must read as many features as the pipeline writes.
        if let Some(n) = algo.n_features()
            && n != pipeline.n_features
        {
            return Err(Error::invalid(
                &gz_file,
                "",
                format!(
                    "{} reads {n} features but the preprocessing produces {}",
                    algo.name(),
                    pipeline.n_features
                ),
            ));
        }
        if algo.max_tree_feature() > pipeline.n_features {
            return Err(Error::invalid(
                &gz_file,
                "trees",
                format!(
                    "a tree reads feature {} but the preprocessing produces {}",
                    algo.max_tree_feature() - 1,
                    pipeline.n_features
                ),
            ));
        }

        let fits = match (task, &algo) {
            (Task::Regression, a) => matches!(
                a,
                Algo::Linear { .. }
                    | Algo::DecisionTree(_)
                    | Algo::ForestRegressor(_)
                    | Algo::GbtRegressor { .. }
                    | Algo::Mlp { .. }
            ),
            (Task::Binary | Task::Multiclass, a) => matches!(
                a,
                Algo::Logistic { .. }
                    | Algo::DecisionTree(_)
                    | Algo::ForestClassifier(_)
                    | Algo::GbtClassifier { .. }
                    | Algo::Mlp { .. }
            ),
            (Task::Clustering, a) => {
                matches!(a, Algo::KMeans { .. } | Algo::IsolationForest { .. })
            }
        };
        if !fits {
            return Err(Error::UnsupportedAlgorithm {
                file: meta_file,
                name: format!("{algo_name} for a {type_name} model"),
                supported: "regression, classification and clustering algorithms of their own \
                            task only",
            });
        }

        let user_meta: Option<UserMetaJson> = match files.read("user_meta.json")? {
            None => None,
            Some(b) => Some(parse(&files.shown("user_meta.json"), &b)?),
        };
        let threshold = match task {
            Task::Binary => {
                let Some(um) = &user_meta else {
                    return Err(Error::MissingThreshold {
                        origin: format!("{} ({})", files.origin(), files.shown("")),
                    });
                };
                Some(um.active_classifier_threshold.map_or(0.5, |n| n.0))
            }
            _ => None,
        };

        let renames: HashMap<String, String> = user_meta
            .as_ref()
            .and_then(|u| u.cluster_metas.as_ref())
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.name.clone())).collect())
            .unwrap_or_default();
        let raw_classes: Option<Vec<String>> = meta
            .classes
            .as_ref()
            .map(|c| c.iter().map(py_str).collect());
        let has_class_names = raw_classes.is_some();
        let classes: Vec<Arc<str>> = raw_classes
            .unwrap_or_default()
            .into_iter()
            .map(|c| Arc::from(renames.get(&c).cloned().unwrap_or(c).as_str()))
            .collect();

        let calibration = Calibration::load(&params, &gz_file)?;
        if !calibration.from_proba && !algo.has_decision() {
            return Err(Error::UnsupportedPreprocessing {
                file: gz_file,
                what: format!(
                    "calibration from the decision function of {} (it has none; \
                     dataiku-scoring fails on it too)",
                    algo.name()
                ),
            });
        }
        let n_raw = if matches!(task, Task::Binary | Task::Multiclass) {
            algo.n_outputs()
        } else {
            0
        };
        if !matches!(calibration.method, CalMethod::None)
            && calibration.n > 2
            && calibration.n != n_raw
        {
            return Err(Error::invalid(
                &gz_file,
                "calibrator",
                format!(
                    "calibrates {} classes but {} outputs {n_raw}",
                    calibration.n,
                    algo.name()
                ),
            ));
        }
        let n_probs = match (&calibration.method, task) {
            (_, Task::Regression | Task::Clustering) => 0,
            (CalMethod::None, _) => n_raw,
            _ => calibration.n,
        };
        match task {
            Task::Binary | Task::Multiclass => {
                let want = if task == Task::Binary { 2 } else { n_probs };
                if classes.len() != n_probs || n_probs != want {
                    return Err(Error::invalid(
                        &meta_file,
                        "classes",
                        format!(
                            "has {} classes but the {} model outputs {n_probs} probabilities",
                            classes.len(),
                            task.as_str()
                        ),
                    ));
                }
            }
            Task::Clustering => {
                if let Algo::KMeans { centers, .. } = &algo
                    && has_class_names
                    && classes.len() < centers.len()
                {
                    return Err(Error::invalid(
                        &meta_file,
                        "classes",
                        format!(
                            "names {} clusters, the model has {}",
                            classes.len(),
                            centers.len()
                        ),
                    ));
                }
                if let Algo::IsolationForest { .. } = &algo
                    && has_class_names
                    && classes.len() < 2
                {
                    return Err(Error::invalid(
                        &meta_file,
                        "classes",
                        "an isolation forest needs two names (regular, anomalies)",
                    ));
                }
            }
            Task::Regression => {}
        }
        Ok(Single {
            pipeline,
            algo,
            task,
            classes: classes.into(),
            has_class_names,
            threshold,
            calibration,
            n_probs,
            n_raw,
            unrecorded,
        })
    }

    fn scratch<'a>(&self) -> Scratch<'a> {
        Scratch {
            num: vec![f64::NAN; self.pipeline.n_num()],
            cat: vec![Val::Null; self.pipeline.n_cat()],
            feats: vec![0.0; self.pipeline.n_features],
            raw: vec![0.0; self.n_raw.max(self.n_probs)],
            algo: AlgoScratch::default(),
        }
    }

    /// Scores one row: pushes its result into `out`.
    fn score<'a>(
        &'a self,
        get: &mut dyn FnMut(usize, &str) -> Cell<'a>,
        s: &mut Scratch<'a>,
        out: &mut Predictions,
    ) -> Result<()> {
        self.pipeline.prepare(get, &mut s.num, &mut s.cat)?;
        if let Some(col) = self.pipeline.dropped_by(&s.num, &s.cat) {
            out.rows.push(RowResult::Ignored(IgnoreReason::DropRows {
                column: col.to_owned(),
            }));
            out.probs.extend(std::iter::repeat_n(f64::NAN, out.n_probs));
            if matches!(self.algo, Algo::IsolationForest { .. }) {
                out.scores.push(f64::NAN);
            }
            return Ok(());
        }
        self.pipeline
            .transform(&mut s.num, &mut s.cat, &mut s.feats)?;
        let x = &s.feats;
        match self.task {
            Task::Regression => {
                let v = self.algo.predict(x, &mut s.algo);
                out.rows.push(RowResult::Value(v));
            }
            Task::Binary | Task::Multiclass => {
                let raw = &mut s.raw[..self.n_raw];
                if self.calibration.from_proba {
                    self.algo.proba(x, raw, &mut s.algo);
                } else {
                    self.algo.decision(x, raw, &mut s.algo);
                }
                let start = out.probs.len();
                out.probs.resize(start + self.n_probs, 0.0);
                let p = &mut out.probs[start..];
                self.calibration.apply(raw, p);
                let k = if self.task == Task::Binary {
                    usize::from(p[1] > self.threshold.unwrap_or(0.5))
                } else {
                    argmax(p)
                };
                out.rows.push(RowResult::Class(k as u32));
            }
            Task::Clustering => {
                let (k, score) = self.algo.cluster(x, &mut s.algo);
                out.rows.push(if self.has_class_names {
                    RowResult::Cluster(k as u32)
                } else {
                    RowResult::ClusterIndex(k as u32)
                });
                if let Some(sc) = score {
                    out.scores.push(sc);
                }
            }
        }
        Ok(())
    }
}

/// `np.argmax`: the first maximum, or the first NaN.
fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v.is_nan() {
            return i;
        }
        if v > p[best] {
            best = i;
        }
    }
    best
}

struct Scratch<'a> {
    num: Vec<f64>,
    cat: Vec<Val<'a>>,
    feats: Vec<f64>,
    raw: Vec<f64>,
    algo: AlgoScratch,
}

/// The type of a partition dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DimType {
    Discrete,
    Hour,
    Day,
    Month,
    Year,
}

#[derive(Debug, Clone)]
struct Dim {
    name: String,
    kind: DimType,
    position: usize,
    known: HashSet<String>,
}

#[derive(Debug, Clone)]
struct Partitioned {
    dims: Vec<Dim>,
    parts: HashMap<String, Single>,
    names: Vec<String>,
    first: String,
}

/// The partition folder name: ASCII letters and digits kept, any other character written as
/// `_` and the last byte of its UTF-8 encoding in lower-case hex, unpadded (format doc §1).
pub(crate) fn escape_partition(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            let last = *c.encode_utf8(&mut buf).as_bytes().last().unwrap_or(&0);
            out.push_str(&format!("_{last:x}"));
        }
    }
    out
}

/// Formats epoch milliseconds as a time partition value, in UTC (the reference uses the local
/// time zone; see docs/scoring.md).
fn time_dimension(ms: f64, kind: DimType) -> Option<String> {
    if !ms.is_finite() {
        return None;
    }
    let secs = (ms / 1000.0).floor() as i64;
    let days = secs.div_euclid(86400);
    let hour = secs.rem_euclid(86400) / 3600;
    let (y, m, d) = dates::civil_from_days(days);
    Some(match kind {
        DimType::Year => format!("{y:02}"),
        DimType::Month => format!("{y:02}-{m:02}"),
        DimType::Day => format!("{y:02}-{m:02}-{d:02}"),
        DimType::Hour => format!("{y:02}-{m:02}-{d:02}-{hour:02}"),
        DimType::Discrete => return None,
    })
}

fn iso_to_ms(s: &str) -> Option<f64> {
    // `yyyy-MM-ddTHH:mm:ss(.f)?Z`, the only ISO form the reference parses successfully.
    let us = dates::parse_us_since_1900(s, dates::DateFormat::Timestamp).or_else(|| {
        let base = s.strip_suffix('Z')?;
        dates::parse_us_since_1900(&format!("{base}.0Z"), dates::DateFormat::Timestamp)
    })?;
    let since_1970 = us + dates::days_from_civil(1900, 1, 1) * 86_400_000_000;
    Some(since_1970 as f64 / 1000.0)
}

impl Dim {
    /// The dimension value of a cell (format doc §7).
    fn value(&self, cell: Cell<'_>) -> String {
        let cell = cell.flatten();
        if self.kind == DimType::Discrete {
            return match cell {
                Cell::Null => "None".to_owned(),
                Cell::Bool(b) => if b { "True" } else { "False" }.to_owned(),
                Cell::Int(i) => i.to_string(),
                Cell::Float(x) => py_float_str(x),
                Cell::Str(s) => s.to_owned(),
                Cell::Json(v) => v.to_string(),
            };
        }
        match cell {
            Cell::Str(s) => {
                if self.known.contains(s) {
                    return s.to_owned();
                }
                if self.kind == DimType::Year
                    && s.len() == 4
                    && s.bytes().all(|b| b.is_ascii_digit())
                {
                    return s.to_owned();
                }
                let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
                if !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && let Ok(ms) = s.parse::<i64>()
                {
                    return time_dimension(ms as f64, self.kind).unwrap_or_default();
                }
                if let Some(ms) = iso_to_ms(s) {
                    return time_dimension(ms, self.kind).unwrap_or_default();
                }
                s.to_owned()
            }
            Cell::Int(i) => time_dimension(i as f64, self.kind).unwrap_or_default(),
            Cell::Float(x) => time_dimension(x, self.kind).unwrap_or_default(),
            Cell::Null => "None".to_owned(),
            Cell::Bool(b) => if b { "True" } else { "False" }.to_owned(),
            Cell::Json(v) => v.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
enum Inner {
    Single(Box<Single>),
    Partitioned(Box<Partitioned>),
}

/// A loaded Dataiku visual model, ready to score. Cheap to share across threads (`Arc<Model>`);
/// scoring takes `&self`.
#[derive(Debug, Clone)]
pub struct Model {
    origin: String,
    inner: Inner,
}

/// One input column of the model, as [`ModelSummary`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFeature {
    pub name: String,
    /// `INPUT`, `REJECT`, `WEIGHT`, ...: only `INPUT` columns are read.
    pub role: String,
    /// The feature type: `NUMERIC`, `CATEGORY`, `TEXT`, `VECTOR`, ...
    pub feature_type: String,
    /// The storage type of the training schema (`double`, `string`, `date`, ...).
    pub storage_type: String,
}

/// What a model is, for `apinode model inspect`. Not a stable text format.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub origin: String,
    pub task: Task,
    /// The algorithm's name in the format (`LOGISTIC`, `FOREST_CLASSIFIER`, ...).
    pub algorithm: String,
    /// Trees, layers, clusters..., and the library for trees.
    pub algorithm_detail: String,
    /// Whether scoring follows XGBoost's float32 arithmetic.
    pub float32: bool,
    /// The preprocessing steps, in the order they run.
    pub preprocessing: Vec<StepSummary>,
    /// Columns whose missing value drops the row.
    pub drop_rows: Vec<String>,
    /// The input columns (schema order, target excluded).
    pub inputs: Vec<InputFeature>,
    /// The number of features the algorithm reads.
    pub n_features: usize,
    /// Class labels (classification) or cluster labels (clustering).
    pub classes: Vec<String>,
    /// The binary decision threshold.
    pub threshold: Option<f64>,
    pub calibration: Option<String>,
    /// Whether unrecorded sparse cells read as missing (XGBoost trained with DSS ≥ 13.4).
    pub unrecorded_is_missing: bool,
    /// Partition dimensions and partitions, for partitioned models.
    pub partitioning: Vec<String>,
    pub partitions: Vec<String>,
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model: {}", self.origin)?;
        writeln!(f, "task: {}", self.task.as_str())?;
        writeln!(
            f,
            "algorithm: {} ({})",
            self.algorithm, self.algorithm_detail
        )?;
        if !self.partitions.is_empty() {
            writeln!(
                f,
                "partitioned by {}: {}",
                self.partitioning.join(", "),
                self.partitions.join(", ")
            )?;
        }
        if !self.classes.is_empty() {
            writeln!(f, "classes: {}", self.classes.join(", "))?;
        }
        if let Some(t) = self.threshold {
            writeln!(f, "threshold: {t}")?;
        }
        if let Some(c) = &self.calibration {
            writeln!(f, "calibration: {c}")?;
        }
        writeln!(f, "inputs:")?;
        for i in &self.inputs {
            writeln!(
                f,
                "  {} ({}, {}, {})",
                i.name, i.role, i.feature_type, i.storage_type
            )?;
        }
        if !self.drop_rows.is_empty() {
            writeln!(f, "drop rows missing: {}", self.drop_rows.join(", "))?;
        }
        writeln!(f, "preprocessing:")?;
        for s in &self.preprocessing {
            writeln!(f, "  {}: {}", s.kind, s.detail)?;
        }
        write!(f, "features: {}", self.n_features)
    }
}

impl Model {
    /// Loads a model folder, a `model.zip`, or an export (zip or folder) holding `model.zip`.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::from_loaded_files(Files::open(path.as_ref())?)
    }

    /// Loads a model from files already in memory (a bundle's copy of a model folder): paths
    /// relative to the folder, `/`-separated, mapped to their bytes. A folder holding only
    /// `model.zip` (an unpacked export) works too. `origin` names the model in errors.
    pub fn from_files(origin: impl Into<String>, files: HashMap<String, Vec<u8>>) -> Result<Model> {
        Model::from_loaded_files(Files::from_entries(origin.into(), files)?)
    }

    /// Loads a model from the bytes of a `model.zip` or of an export zip holding one (a
    /// bundle's copy of a zipped model). `origin` names the model in errors.
    pub fn from_zip(origin: impl Into<String>, bytes: &[u8]) -> Result<Model> {
        Model::from_loaded_files(Files::from_zip(origin.into(), bytes)?)
    }

    fn from_loaded_files(files: Files) -> Result<Model> {
        let meta = read_meta(&files)?;
        let inner = if let Some(parts) = meta.partitions.clone() {
            Inner::Partitioned(Box::new(load_partitioned(&files, meta, parts)?))
        } else {
            Inner::Single(Box::new(Single::load(&files, meta, None)?))
        };
        Ok(Model {
            origin: files.origin().to_owned(),
            inner,
        })
    }

    fn first(&self) -> &Single {
        match &self.inner {
            Inner::Single(s) => s,
            Inner::Partitioned(p) => &p.parts[&p.first],
        }
    }

    pub fn task(&self) -> Task {
        self.first().task
    }

    /// Class labels (classification) or cluster labels (clustering), in probability order.
    pub fn classes(&self) -> &[Arc<str>] {
        &self.first().classes
    }

    /// The input columns in positional order (the training schema minus the target).
    pub fn input_columns(&self) -> impl Iterator<Item = &str> {
        self.first().pipeline.inputs.iter().map(|c| c.name.as_str())
    }

    /// Whether the algorithm runs XGBoost's float32 arithmetic (compare with ~1e-6 tolerance).
    pub fn is_float32(&self) -> bool {
        self.first().algo.is_f32()
    }

    fn check_len<R: Record + ?Sized>(&self, record: &R) -> Result<()> {
        let inputs = &self.first().pipeline.inputs;
        match record.positional_len() {
            Some(len) if len != inputs.len() => Err(Error::RowLength {
                row: None,
                len,
                columns: inputs
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            _ => Ok(()),
        }
    }

    /// Scores one record.
    pub fn predict<R: Record + ?Sized>(&self, record: &R) -> Result<Prediction> {
        self.check_len(record)?;
        let mut out = self.results(1);
        match &self.inner {
            Inner::Single(s) => {
                let mut scratch = s.scratch();
                s.score(
                    &mut |pos, name| record.cell(name, pos),
                    &mut scratch,
                    &mut out,
                )?;
            }
            Inner::Partitioned(p) => {
                let mut scratches = HashMap::new();
                p.score(
                    &mut |pos, name| record.cell(name, pos),
                    &mut scratches,
                    &mut out,
                )?;
            }
        }
        Ok(out.get(0))
    }

    /// Scores records one after the other, reusing buffers.
    pub fn predict_records<R: Record>(&self, records: &[R]) -> Result<Predictions> {
        let mut out = self.results(records.len());
        match &self.inner {
            Inner::Single(s) => {
                let mut scratch = s.scratch();
                for (i, r) in records.iter().enumerate() {
                    self.check_len(r).map_err(|e| e.at_row(i))?;
                    s.score(&mut |pos, name| r.cell(name, pos), &mut scratch, &mut out)
                        .map_err(|e| e.at_row(i))?;
                }
            }
            Inner::Partitioned(p) => {
                let mut scratches = HashMap::new();
                for (i, r) in records.iter().enumerate() {
                    self.check_len(r).map_err(|e| e.at_row(i))?;
                    p.score(&mut |pos, name| r.cell(name, pos), &mut scratches, &mut out)
                        .map_err(|e| e.at_row(i))?;
                }
            }
        }
        Ok(out)
    }

    /// Scores a columnar batch. Column names are resolved once; each row is processed in
    /// reused buffers.
    pub fn predict_batch(&self, batch: &Batch<'_>) -> Result<Predictions> {
        let mut out = self.results(batch.n_rows);
        let by_position: Vec<Option<usize>> = self
            .first()
            .pipeline
            .inputs
            .iter()
            .map(|c| batch.find(&c.name))
            .collect();
        let cols = &batch.columns;
        let cell = |row: usize, pos: usize| match by_position.get(pos).copied().flatten() {
            Some(k) => cols[k].1.get(row),
            None => Cell::Null,
        };
        match &self.inner {
            Inner::Single(s) => {
                let mut scratch = s.scratch();
                for row in 0..batch.n_rows {
                    s.score(&mut |pos, _| cell(row, pos), &mut scratch, &mut out)
                        .map_err(|e| e.at_row(row))?;
                }
            }
            Inner::Partitioned(p) => {
                let mut scratches = HashMap::new();
                for row in 0..batch.n_rows {
                    p.score(&mut |pos, _| cell(row, pos), &mut scratches, &mut out)
                        .map_err(|e| e.at_row(row))?;
                }
            }
        }
        Ok(out)
    }

    fn results(&self, n: usize) -> Predictions {
        let f = self.first();
        Predictions::new(f.task, f.classes.clone(), f.n_probs, n)
    }

    /// What the model is: task, algorithm, preprocessing, inputs, classes.
    pub fn describe(&self) -> ModelSummary {
        let f = self.first();
        let (partitioning, partitions) = match &self.inner {
            Inner::Single(_) => (Vec::new(), Vec::new()),
            Inner::Partitioned(p) => (
                p.dims.iter().map(|d| d.name.clone()).collect(),
                p.names.clone(),
            ),
        };
        ModelSummary {
            origin: self.origin.clone(),
            task: f.task,
            algorithm: f.algo.name().to_owned(),
            algorithm_detail: f.algo.detail(),
            float32: f.algo.is_f32(),
            preprocessing: f.pipeline.steps.clone(),
            drop_rows: f.pipeline.drop_row_columns(),
            inputs: f
                .pipeline
                .inputs
                .iter()
                .map(|c: &InputColumn| InputFeature {
                    name: c.name.clone(),
                    role: c.role.clone(),
                    feature_type: c.kind.clone(),
                    storage_type: c.storage.clone(),
                })
                .collect(),
            n_features: f.pipeline.n_features,
            classes: f.classes.iter().map(|c| c.to_string()).collect(),
            threshold: f.threshold,
            calibration: f.calibration.describe(),
            unrecorded_is_missing: f.unrecorded.is_nan(),
            partitioning,
            partitions,
        }
    }
}

fn load_partitioned(files: &Files, meta: MetaJson, parts: Vec<String>) -> Result<Partitioned> {
    let meta_file = files.shown(META);
    let top_type = meta.kind.clone();
    if top_type.as_deref() == Some("CLUSTERING") {
        return Err(Error::UnsupportedTask {
            file: meta_file,
            name: "partitioned CLUSTERING".into(),
            supported: "partitioned REGRESSION, BINARY_PROBABILISTIC, MULTICLASS_PROBABILISTIC",
        });
    }
    if parts.is_empty() {
        return Err(Error::invalid(&meta_file, "partitions", "is empty"));
    }
    let types: Vec<DimType> = match &meta.partitioning_types {
        None => vec![DimType::Discrete; meta.partitioning.len()],
        Some(t) => {
            if t.len() != meta.partitioning.len() {
                return Err(Error::invalid(
                    &meta_file,
                    "partitioningTypes",
                    format!(
                        "has {} types for {} dimensions",
                        t.len(),
                        meta.partitioning.len()
                    ),
                ));
            }
            t.iter()
                .map(|s| match s.as_str() {
                    "DISCRETE" => Ok(DimType::Discrete),
                    "HOUR" => Ok(DimType::Hour),
                    "DAY" => Ok(DimType::Day),
                    "MONTH" => Ok(DimType::Month),
                    "YEAR" => Ok(DimType::Year),
                    other => Err(Error::UnsupportedPreprocessing {
                        file: meta_file.clone(),
                        what: format!("partition dimension type `{other}`"),
                    }),
                })
                .collect::<Result<_>>()?
        }
    };
    let mut loaded = HashMap::new();
    for p in &parts {
        let sub = files.sub(&format!("parts/{}", escape_partition(p)));
        let m = read_meta(&sub)?;
        let single = Single::load(&sub, m, top_type.as_deref())?;
        loaded.insert(p.clone(), single);
    }
    let first = parts[0].clone();
    let f = &loaded[&first];
    for p in &parts[1..] {
        let names = |s: &Single| {
            s.pipeline
                .inputs
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        if names(&loaded[p]) != names(f) {
            return Err(Error::invalid(
                &files.shown(&format!("parts/{}/split/split.json", escape_partition(p))),
                "schema.columns",
                format!("partition `{p}` has other input columns than partition `{first}`"),
            ));
        }
        if loaded[p].classes != f.classes || loaded[p].task != f.task {
            return Err(Error::invalid(
                &files.shown(&format!("parts/{}/{META}", escape_partition(p))),
                "classes",
                format!("partition `{p}` has other classes or task than partition `{first}`"),
            ));
        }
    }
    let mut dims = Vec::new();
    for (i, (name, kind)) in meta.partitioning.iter().zip(types).enumerate() {
        let position = f
            .pipeline
            .inputs
            .iter()
            .position(|c| &c.name == name)
            .ok_or_else(|| {
                Error::invalid(
                    &meta_file,
                    format!("partitioning[{i}]"),
                    format!("dimension `{name}` is not an input column of the partitions"),
                )
            })?;
        let known = parts
            .iter()
            .filter_map(|p| p.split('|').nth(i).map(str::to_owned))
            .collect();
        dims.push(Dim {
            name: name.clone(),
            kind,
            position,
            known,
        });
    }
    Ok(Partitioned {
        dims,
        parts: loaded,
        names: parts,
        first,
    })
}

impl Partitioned {
    fn score<'a>(
        &'a self,
        get: &mut dyn FnMut(usize, &str) -> Cell<'a>,
        scratches: &mut HashMap<String, Scratch<'a>>,
        out: &mut Predictions,
    ) -> Result<()> {
        let mut key = String::new();
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            key.push_str(&d.value(get(d.position, &d.name)));
        }
        match self.parts.get(&key) {
            Some(model) => {
                let s = scratches.entry(key).or_insert_with(|| model.scratch());
                model.score(get, s, out)
            }
            None => {
                out.rows
                    .push(RowResult::Ignored(IgnoreReason::UnknownPartition {
                        partition: key,
                    }));
                out.probs.extend(std::iter::repeat_n(f64::NAN, out.n_probs));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_escape() {
        assert_eq!(escape_partition("South-East"), "South_2dEast");
        assert_eq!(escape_partition("a b"), "a_20b");
        assert_eq!(escape_partition("\t"), "_9");
        assert_eq!(escape_partition("é"), "_a9");
    }

    #[test]
    fn numpy_interp_and_argmax() {
        let xp = [0.0, 1.0, 2.0];
        let fp = [0.0, 10.0, 30.0];
        assert_eq!(interp(-1.0, &xp, &fp), 0.0);
        assert_eq!(interp(0.5, &xp, &fp), 5.0);
        assert_eq!(interp(1.5, &xp, &fp), 20.0);
        assert_eq!(interp(3.0, &xp, &fp), 30.0);
        assert_eq!(interp(2.0, &xp, &fp), 30.0);
        assert!(interp(f64::NAN, &xp, &fp).is_nan());
        assert_eq!(clip01(f64::NAN), 0.0);
        assert_eq!(argmax(&[0.2, 0.5, 0.5]), 1);
        assert_eq!(argmax(&[0.2, f64::NAN, 0.9]), 1);
    }

    #[test]
    fn time_dimensions() {
        assert_eq!(time_dimension(0.0, DimType::Hour).unwrap(), "1970-01-01-00");
        assert_eq!(
            time_dimension(1_600_000_000_000.0, DimType::Day).unwrap(),
            "2020-09-13"
        );
        assert_eq!(iso_to_ms("1970-01-02T00:00:00.000Z"), Some(86_400_000.0));
    }
}
