//! The algorithms of `dss_pipeline_model.gz` (format doc §5.2), evaluated on one feature row.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::json::{Num, nums};
use crate::mathf::{pairwise_sum_f32, sigmoid32, softmax32};
use crate::tree::{Tree, Variant};

pub(crate) const SUPPORTED: &str = "LINEAR, LOGISTIC, DECISION_TREE, FOREST_REGRESSOR, \
    FOREST_CLASSIFIER, GRADIENT_BOOSTING_REGRESSOR, GRADIENT_BOOSTING_CLASSIFIER, \
    MULTI_LAYER_PERCEPTRON, KMEANS, MINIBATCH_KMEANS, ISOLATION_FOREST";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Multinomial,
    OneVersusAll,
    ModifiedHuber,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Relu,
    Tanh,
    Logistic,
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GbrMode {
    Default,
    Gamma,
    Logistic,
}

#[derive(Debug, Clone)]
pub(crate) enum Algo {
    Linear {
        coef: Vec<f64>,
        intercept: f64,
    },
    Logistic {
        policy: Policy,
        /// `K × F`, row-major.
        coef: Vec<f64>,
        intercept: Vec<f64>,
    },
    DecisionTree(Tree),
    ForestRegressor(Vec<Tree>),
    ForestClassifier(Vec<Tree>),
    GbtClassifier {
        /// `stages × C` trees (C = 1 for binary).
        trees: Vec<Vec<Tree>>,
        shrinkage: f64,
        baseline: Vec<f64>,
        f32: bool,
    },
    GbtRegressor {
        trees: Vec<Tree>,
        shrinkage: f64,
        baseline: f64,
        mode: GbrMode,
        f32: bool,
    },
    Mlp {
        activation: Activation,
        /// Per layer: `out × in` row-major weights, and biases.
        layers: Vec<(Vec<f64>, Vec<f64>)>,
    },
    KMeans {
        centers: Vec<Vec<f64>>,
        sq_norms: Vec<f64>,
    },
    IsolationForest {
        trees: Vec<Tree>,
        features: Vec<Vec<usize>>,
        normalizer: f64,
        offset: f64,
    },
}

/// Scratch buffers of the algorithms, reused across rows.
#[derive(Debug, Default)]
pub(crate) struct AlgoScratch {
    cast: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    sub: Vec<f64>,
    f32s: Vec<f32>,
}

#[derive(Deserialize)]
struct LinearJson {
    coefficients: Vec<Num>,
    intercept: Num,
}

#[derive(Deserialize)]
struct LogisticJson {
    policy: String,
    coefficients: Vec<Vec<Num>>,
    intercept: Vec<Num>,
}

#[derive(Deserialize)]
struct MlpJson {
    activation: String,
    weights: Vec<Vec<Vec<Num>>>,
    biases: Vec<Vec<Num>>,
}

#[derive(Deserialize)]
struct KMeansJson {
    cluster_centers: Vec<Vec<Num>>,
}

#[derive(Deserialize)]
struct IsoJson {
    trees: Vec<Value>,
    estimators_features: Vec<Vec<usize>>,
    max_samples: Num,
    offset: Num,
}

#[derive(Deserialize)]
struct GbcJson {
    trees: Vec<Vec<Value>>,
    shrinkage: Num,
    baseline: Vec<Num>,
}

#[derive(Deserialize)]
struct GbrJson {
    trees: Vec<Value>,
    shrinkage: Num,
    baseline: Num,
    #[serde(default)]
    gamma_regression: bool,
    #[serde(default)]
    logistic_regression: bool,
}

#[derive(Deserialize)]
struct ForestJson {
    trees: Vec<Value>,
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value, file: &str) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| Error::Json {
        file: file.to_owned(),
        field: e.path().to_string(),
        detail: e.into_inner().to_string(),
    })
}

fn forest(trees: &[Value], file: &str, field: &str) -> Result<Vec<Tree>> {
    if trees.is_empty() {
        return Err(Error::invalid(file, field, "has no tree"));
    }
    trees
        .iter()
        .enumerate()
        .map(|(i, t)| Tree::from_json(t, file, &format!("{field}[{i}]")))
        .collect()
}

/// `c(n)`: the average path length of an unsuccessful BST search (scikit-learn).
fn average_path_length(n: f64) -> f64 {
    const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
    if n <= 1.0 {
        0.0
    } else if n == 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Algo {
    /// Builds the algorithm `name` from the model parameters `v` (`file` names them in errors).
    /// `task` is the meta `type` (it tells MLP regressors from classifiers).
    pub(crate) fn load(name: &str, task: &str, v: &Value, file: &str) -> Result<Algo> {
        Ok(match name {
            "LINEAR" => {
                let j: LinearJson = typed(v, file)?;
                Algo::Linear {
                    coef: nums(&j.coefficients),
                    intercept: j.intercept.0,
                }
            }
            "LOGISTIC" => {
                let j: LogisticJson = typed(v, file)?;
                let policy = match j.policy.as_str() {
                    "MULTINOMIAL" => Policy::Multinomial,
                    "ONE_VERSUS_ALL" => Policy::OneVersusAll,
                    "MODIFIED_HUBER" => Policy::ModifiedHuber,
                    other => {
                        return Err(Error::UnsupportedAlgorithm {
                            file: file.to_owned(),
                            name: format!("LOGISTIC with policy {other}"),
                            supported: "policies MULTINOMIAL, ONE_VERSUS_ALL, MODIFIED_HUBER",
                        });
                    }
                };
                if j.intercept.len() != j.coefficients.len() {
                    return Err(Error::invalid(
                        file,
                        "intercept",
                        format!(
                            "has {} values for {} coefficient rows",
                            j.intercept.len(),
                            j.coefficients.len()
                        ),
                    ));
                }
                let f = j.coefficients.first().map_or(0, Vec::len);
                let mut coef = Vec::new();
                for (k, r) in j.coefficients.iter().enumerate() {
                    if r.len() != f {
                        return Err(Error::invalid(
                            file,
                            format!("coefficients[{k}]"),
                            format!("has {} values, row 0 has {f}", r.len()),
                        ));
                    }
                    coef.extend(r.iter().map(|x| x.0));
                }
                Algo::Logistic {
                    policy,
                    coef,
                    intercept: nums(&j.intercept),
                }
            }
            "DECISION_TREE" => Algo::DecisionTree(Tree::from_json(v, file, "")?),
            "FOREST_REGRESSOR" | "FOREST_CLASSIFIER" => {
                let j: ForestJson = typed(v, file)?;
                let trees = forest(&j.trees, file, "trees")?;
                if name == "FOREST_REGRESSOR" {
                    Algo::ForestRegressor(trees)
                } else {
                    Algo::ForestClassifier(trees)
                }
            }
            "GRADIENT_BOOSTING_CLASSIFIER" => {
                let j: GbcJson = typed(v, file)?;
                let mut trees = Vec::new();
                for (s, stage) in j.trees.iter().enumerate() {
                    trees.push(forest(stage, file, &format!("trees[{s}]"))?);
                }
                let Some(first) = trees.first() else {
                    return Err(Error::invalid(file, "trees", "has no stage"));
                };
                let c = first.len();
                if let Some((s, _)) = trees.iter().enumerate().find(|(_, t)| t.len() != c) {
                    return Err(Error::invalid(
                        file,
                        format!("trees[{s}]"),
                        format!("stage has a different number of trees than stage 0 ({c})"),
                    ));
                }
                if j.baseline.len() < c {
                    return Err(Error::invalid(
                        file,
                        "baseline",
                        format!("has {} values for {c} trees per stage", j.baseline.len()),
                    ));
                }
                let f32 = first[0].variant == Variant::XgBoost;
                let r = |x: f64| if f32 { f64::from(x as f32) } else { x };
                Algo::GbtClassifier {
                    trees,
                    shrinkage: r(j.shrinkage.0),
                    baseline: j.baseline.iter().map(|b| r(b.0)).collect(),
                    f32,
                }
            }
            "GRADIENT_BOOSTING_REGRESSOR" => {
                let j: GbrJson = typed(v, file)?;
                let trees = forest(&j.trees, file, "trees")?;
                let f32 = trees[0].variant == Variant::XgBoost;
                let r = |x: f64| if f32 { f64::from(x as f32) } else { x };
                Algo::GbtRegressor {
                    trees,
                    shrinkage: r(j.shrinkage.0),
                    baseline: r(j.baseline.0),
                    mode: if j.gamma_regression {
                        GbrMode::Gamma
                    } else if j.logistic_regression {
                        GbrMode::Logistic
                    } else {
                        GbrMode::Default
                    },
                    f32,
                }
            }
            "MULTI_LAYER_PERCEPTRON" | "MLP_REGRESSOR" | "MLP_CLASSIFIER" => {
                let _ = task;
                let j: MlpJson = typed(v, file)?;
                let activation = match j.activation.as_str() {
                    "RELU" => Activation::Relu,
                    "TANH" => Activation::Tanh,
                    "LOGISTIC" => Activation::Logistic,
                    "IDENTITY" => Activation::Identity,
                    other => {
                        return Err(Error::UnsupportedAlgorithm {
                            file: file.to_owned(),
                            name: format!("MULTI_LAYER_PERCEPTRON with activation {other}"),
                            supported: "activations RELU, TANH, LOGISTIC, IDENTITY",
                        });
                    }
                };
                if j.weights.len() != j.biases.len() || j.weights.is_empty() {
                    return Err(Error::invalid(
                        file,
                        "weights",
                        format!(
                            "has {} layers, biases has {} (at least one needed)",
                            j.weights.len(),
                            j.biases.len()
                        ),
                    ));
                }
                let mut layers = Vec::new();
                let mut width_in: Option<usize> = None;
                for (l, (w, b)) in j.weights.iter().zip(&j.biases).enumerate() {
                    if w.len() != b.len() {
                        return Err(Error::invalid(
                            file,
                            format!("weights[{l}]"),
                            format!("has {} rows for {} biases", w.len(), b.len()),
                        ));
                    }
                    let inw = w.first().map_or(0, Vec::len);
                    if let Some(prev) = width_in
                        && prev != inw
                    {
                        return Err(Error::invalid(
                            file,
                            format!("weights[{l}]"),
                            format!("reads {inw} inputs, the previous layer writes {prev}"),
                        ));
                    }
                    let mut flat = Vec::new();
                    for (o, r) in w.iter().enumerate() {
                        if r.len() != inw {
                            return Err(Error::invalid(
                                file,
                                format!("weights[{l}][{o}]"),
                                format!("has {} values, row 0 has {inw}", r.len()),
                            ));
                        }
                        flat.extend(r.iter().map(|x| x.0));
                    }
                    width_in = Some(b.len());
                    layers.push((flat, nums(b)));
                }
                Algo::Mlp { activation, layers }
            }
            "KMEANS" | "MINIBATCH_KMEANS" => {
                let j: KMeansJson = typed(v, file)?;
                if j.cluster_centers.is_empty() {
                    return Err(Error::invalid(file, "cluster_centers", "is empty"));
                }
                let centers: Vec<Vec<f64>> = j.cluster_centers.iter().map(|c| nums(c)).collect();
                let sq_norms = centers
                    .iter()
                    .map(|c| c.iter().map(|x| x * x).sum())
                    .collect();
                Algo::KMeans { centers, sq_norms }
            }
            "ISOLATION_FOREST" => {
                let j: IsoJson = typed(v, file)?;
                let trees = forest(&j.trees, file, "trees")?;
                if j.estimators_features.len() != trees.len() {
                    return Err(Error::invalid(
                        file,
                        "estimators_features",
                        format!(
                            "has {} entries for {} trees",
                            j.estimators_features.len(),
                            trees.len()
                        ),
                    ));
                }
                for (i, t) in trees.iter().enumerate() {
                    if t.n_features() > j.estimators_features[i].len() {
                        return Err(Error::invalid(
                            file,
                            format!("trees[{i}]"),
                            "reads a feature beyond its estimators_features",
                        ));
                    }
                }
                Algo::IsolationForest {
                    trees,
                    features: j.estimators_features,
                    normalizer: average_path_length(j.max_samples.0),
                    offset: j.offset.0,
                }
            }
            other => {
                return Err(Error::UnsupportedAlgorithm {
                    file: file.to_owned(),
                    name: other.to_owned(),
                    supported: SUPPORTED,
                });
            }
        })
    }

    /// The number of features the algorithm reads (checked against the pipeline's output).
    pub(crate) fn n_features(&self) -> Option<usize> {
        match self {
            Algo::Linear { coef, .. } => Some(coef.len()),
            Algo::Logistic {
                coef, intercept, ..
            } => Some(if intercept.is_empty() {
                0
            } else {
                coef.len() / intercept.len()
            }),
            Algo::Mlp { layers, .. } => Some(layers[0].0.len() / layers[0].1.len().max(1)),
            Algo::KMeans { centers, .. } => Some(centers[0].len()),
            _ => None,
        }
    }

    /// The largest feature index + 1 that trees read (checked against the pipeline's output).
    pub(crate) fn max_tree_feature(&self) -> usize {
        let m = |ts: &[Tree]| ts.iter().map(Tree::n_features).max().unwrap_or(0);
        match self {
            Algo::DecisionTree(t) => t.n_features(),
            Algo::ForestClassifier(ts) | Algo::ForestRegressor(ts) => m(ts),
            Algo::GbtClassifier { trees, .. } => trees.iter().map(|s| m(s)).max().unwrap_or(0),
            Algo::GbtRegressor { trees, .. } => m(trees),
            Algo::IsolationForest { features, .. } => features
                .iter()
                .flat_map(|f| f.iter().map(|i| i + 1))
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Algo::Linear { .. } => "LINEAR",
            Algo::Logistic { .. } => "LOGISTIC",
            Algo::DecisionTree(_) => "DECISION_TREE",
            Algo::ForestRegressor(_) => "FOREST_REGRESSOR",
            Algo::ForestClassifier(_) => "FOREST_CLASSIFIER",
            Algo::GbtClassifier { .. } => "GRADIENT_BOOSTING_CLASSIFIER",
            Algo::GbtRegressor { .. } => "GRADIENT_BOOSTING_REGRESSOR",
            Algo::Mlp { .. } => "MULTI_LAYER_PERCEPTRON",
            Algo::KMeans { .. } => "KMEANS",
            Algo::IsolationForest { .. } => "ISOLATION_FOREST",
        }
    }

    /// Which library trained the trees, for tree-based algorithms.
    pub(crate) fn tree_variant(&self) -> Option<Variant> {
        match self {
            Algo::DecisionTree(t) => Some(t.variant),
            Algo::ForestClassifier(ts)
            | Algo::ForestRegressor(ts)
            | Algo::GbtRegressor { trees: ts, .. }
            | Algo::IsolationForest { trees: ts, .. } => ts.first().map(|t| t.variant),
            Algo::GbtClassifier { trees, .. } => {
                trees.first().and_then(|s| s.first()).map(|t| t.variant)
            }
            _ => None,
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            Algo::Linear { coef, .. } => format!("{} coefficients", coef.len()),
            Algo::Logistic {
                policy, intercept, ..
            } => format!("{policy:?}, {} classes", intercept.len()),
            Algo::DecisionTree(t) => format!("{} tree", t.variant.name()),
            Algo::ForestClassifier(ts) | Algo::ForestRegressor(ts) => {
                format!("{} {} trees", ts.len(), ts[0].variant.name())
            }
            Algo::GbtClassifier { trees, .. } => format!(
                "{} stages of {} {} trees",
                trees.len(),
                trees[0].len(),
                trees[0][0].variant.name()
            ),
            Algo::GbtRegressor { trees, mode, .. } => {
                format!(
                    "{} {} trees, {mode:?} mode",
                    trees.len(),
                    trees[0].variant.name()
                )
            }
            Algo::Mlp { activation, layers } => {
                format!("{} layers, {activation:?}", layers.len())
            }
            Algo::KMeans { centers, .. } => format!("{} clusters", centers.len()),
            Algo::IsolationForest { trees, .. } => format!("{} trees", trees.len()),
        }
    }

    /// The float32 path (XGBoost boosters).
    pub(crate) fn is_f32(&self) -> bool {
        matches!(
            self,
            Algo::GbtClassifier { f32: true, .. } | Algo::GbtRegressor { f32: true, .. }
        ) || self.tree_variant() == Some(Variant::XgBoost)
    }

    /// Whether `decision` is available (calibration from the decision function).
    pub(crate) fn has_decision(&self) -> bool {
        matches!(
            self,
            Algo::Logistic { .. } | Algo::GbtClassifier { .. } | Algo::Mlp { .. }
        )
    }

    /// The number of probability columns a classifier outputs.
    pub(crate) fn n_outputs(&self) -> usize {
        match self {
            Algo::Logistic { intercept, .. } => intercept.len(),
            Algo::DecisionTree(t) => t.width,
            Algo::ForestClassifier(ts) => ts[0].width,
            Algo::GbtClassifier { trees, .. } => {
                if trees[0].len() == 1 {
                    2
                } else {
                    trees[0].len()
                }
            }
            Algo::Mlp { layers, .. } => layers.last().map_or(0, |l| l.1.len()).max(2),
            _ => 1,
        }
    }

    /// A regression prediction.
    pub(crate) fn predict(&self, x: &[f64], s: &mut AlgoScratch) -> f64 {
        match self {
            Algo::Linear { coef, intercept } => {
                intercept + x.iter().zip(coef).map(|(a, b)| a * b).sum::<f64>()
            }
            Algo::DecisionTree(t) => {
                t.variant.cast(x, &mut s.cast);
                t.value(t.leaf(&s.cast, false).0)[0]
            }
            Algo::ForestRegressor(ts) => {
                ts[0].variant.cast(x, &mut s.cast);
                let sum: f64 = ts
                    .iter()
                    .map(|t| t.value(t.leaf(&s.cast, false).0)[0])
                    .sum();
                sum / ts.len() as f64
            }
            Algo::GbtRegressor {
                trees,
                shrinkage,
                baseline,
                mode,
                f32,
            } => {
                trees[0].variant.cast(x, &mut s.cast);
                let cast = &s.cast;
                let leaf = |t: &Tree| t.value(t.leaf(cast, false).0)[0];
                match (mode, f32) {
                    (GbrMode::Default, false) => {
                        baseline + shrinkage * trees.iter().map(leaf).sum::<f64>()
                    }
                    (GbrMode::Default, true) => {
                        let mut p = 0.0f32;
                        for t in trees {
                            p += leaf(t) as f32;
                        }
                        f64::from(*baseline as f32 + *shrinkage as f32 * p)
                    }
                    (_, false) => {
                        let sum: f64 = trees.iter().map(leaf).sum();
                        if *mode == GbrMode::Gamma {
                            (sum * shrinkage).exp() * baseline
                        } else {
                            sigmoid32(sum * shrinkage)
                        }
                    }
                    (_, true) => {
                        s.f32s.clear();
                        s.f32s.extend(trees.iter().map(|t| leaf(t) as f32));
                        let v = pairwise_sum_f32(&s.f32s) * *shrinkage as f32;
                        if *mode == GbrMode::Gamma {
                            f64::from(expf_np(v) * *baseline as f32)
                        } else {
                            sigmoid32(f64::from(v))
                        }
                    }
                }
            }
            Algo::Mlp { .. } => {
                self.forward(x, s);
                s.a[0]
            }
            _ => f64::NAN,
        }
    }

    fn forward(&self, x: &[f64], s: &mut AlgoScratch) {
        let Algo::Mlp { activation, layers } = self else {
            return;
        };
        s.a.clear();
        s.a.extend_from_slice(x);
        let last = layers.len() - 1;
        for (l, (w, b)) in layers.iter().enumerate() {
            let inw = s.a.len();
            s.b.clear();
            for (o, bias) in b.iter().enumerate() {
                let row = &w[o * inw..(o + 1) * inw];
                let mut v = row.iter().zip(&s.a).map(|(p, q)| p * q).sum::<f64>() + bias;
                if l != last {
                    v = match activation {
                        Activation::Relu => {
                            if v.is_nan() {
                                v
                            } else {
                                v.max(0.0)
                            }
                        }
                        Activation::Tanh => v.tanh(),
                        Activation::Logistic => sigmoid(v),
                        Activation::Identity => v,
                    };
                }
                s.b.push(v);
            }
            std::mem::swap(&mut s.a, &mut s.b);
        }
    }

    /// The decision function of a classifier (calibration "from decision function").
    pub(crate) fn decision(&self, x: &[f64], out: &mut [f64], s: &mut AlgoScratch) {
        match self {
            Algo::Logistic {
                coef, intercept, ..
            } => {
                let f = x.len();
                for (k, o) in out.iter_mut().enumerate() {
                    let row = &coef[k * f..(k + 1) * f];
                    *o = row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + intercept[k];
                }
            }
            Algo::GbtClassifier { .. } => self.gbt_decision(x, out, s),
            Algo::Mlp { .. } => {
                self.forward(x, s);
                if s.a.len() == 1 {
                    // The reference reads column 1 of a one-column output and fails; the
                    // binary logit goes in column 1 here, as for boosting.
                    out[0] = 0.0;
                    out[1] = s.a[0];
                } else {
                    out.copy_from_slice(&s.a[..out.len()]);
                }
            }
            _ => out.fill(f64::NAN),
        }
    }

    fn gbt_decision(&self, x: &[f64], out: &mut [f64], s: &mut AlgoScratch) {
        let Algo::GbtClassifier {
            trees,
            shrinkage,
            baseline,
            f32,
        } = self
        else {
            return;
        };
        trees[0][0].variant.cast(x, &mut s.cast);
        let cast = &s.cast;
        let leaf = |t: &Tree| t.value(t.leaf(cast, false).0)[0];
        let c = trees[0].len();
        if c == 1 {
            out[0] = 0.0;
            out[1] = if *f32 {
                let mut p = 0.0f32;
                for st in trees {
                    p += leaf(&st[0]) as f32;
                }
                f64::from(baseline[0] as f32 + *shrinkage as f32 * p)
            } else {
                baseline[0] + shrinkage * trees.iter().map(|st| leaf(&st[0])).sum::<f64>()
            };
        } else if *f32 {
            s.f32s.clear();
            s.f32s.resize(c, 0.0);
            for st in trees {
                for (i, t) in st.iter().enumerate() {
                    s.f32s[i] += leaf(t) as f32;
                }
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = f64::from(baseline[i] as f32 + *shrinkage as f32 * s.f32s[i]);
            }
        } else {
            out.fill(0.0);
            for st in trees {
                for (i, t) in st.iter().enumerate() {
                    out[i] += leaf(t);
                }
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = baseline[i] + shrinkage * *o;
            }
        }
    }

    /// Class probabilities of a classifier (before calibration).
    pub(crate) fn proba(&self, x: &[f64], out: &mut [f64], s: &mut AlgoScratch) {
        match self {
            Algo::Logistic { policy, .. } => {
                self.decision(x, out, s);
                match policy {
                    Policy::Multinomial => softmax(out),
                    Policy::OneVersusAll => {
                        for o in out.iter_mut() {
                            *o = sigmoid(*o);
                        }
                        let sum: f64 = out.iter().sum();
                        for o in out.iter_mut() {
                            *o /= sum;
                        }
                    }
                    Policy::ModifiedHuber => {
                        let k = out.len();
                        for o in out.iter_mut() {
                            *o = 0.5 * (1.0 + o.clamp(-1.0, 1.0));
                        }
                        if k == 2 {
                            out[0] = 1.0 - out[1];
                        }
                        let sum: f64 = out.iter().sum();
                        if sum < 1e-15 {
                            out.fill(1.0 / k as f64);
                        } else {
                            for o in out.iter_mut() {
                                *o /= sum;
                            }
                        }
                    }
                }
            }
            Algo::DecisionTree(t) => {
                // The reference skips the float32 cast here (format doc §10.3).
                out.copy_from_slice(t.value(t.leaf(x, false).0));
            }
            Algo::ForestClassifier(ts) => {
                ts[0].variant.cast(x, &mut s.cast);
                out.fill(0.0);
                for t in ts {
                    for (o, v) in out.iter_mut().zip(t.value(t.leaf(&s.cast, false).0)) {
                        *o += v;
                    }
                }
                for o in out.iter_mut() {
                    *o /= ts.len() as f64;
                }
            }
            Algo::GbtClassifier { f32, .. } => {
                self.gbt_decision(x, out, s);
                if out.len() == 2 {
                    let p = if *f32 {
                        sigmoid32(out[1])
                    } else {
                        sigmoid(out[1])
                    };
                    out[0] = 1.0 - p;
                    out[1] = p;
                } else if *f32 {
                    s.f32s.clear();
                    s.f32s.extend(out.iter().map(|&v| v as f32));
                    softmax32(&s.f32s, out);
                } else {
                    softmax(out);
                }
            }
            Algo::Mlp { .. } => {
                self.forward(x, s);
                if s.a.len() == 1 {
                    out[1] = sigmoid(s.a[0]);
                    out[0] = 1.0 - out[1];
                } else {
                    out.copy_from_slice(&s.a[..out.len()]);
                    softmax(out);
                }
            }
            _ => out.fill(f64::NAN),
        }
    }

    /// A clustering: the cluster index, and the anomaly score for isolation forests.
    pub(crate) fn cluster(&self, x: &[f64], s: &mut AlgoScratch) -> (usize, Option<f64>) {
        match self {
            Algo::KMeans { centers, sq_norms } => {
                let mut best = 0;
                let mut best_d = f64::INFINITY;
                for (j, (c, n)) in centers.iter().zip(sq_norms).enumerate() {
                    let dot: f64 = x.iter().zip(c).map(|(a, b)| a * b).sum();
                    let d = -2.0 * dot + n;
                    if d.is_nan() {
                        // numpy's argmin returns the first NaN.
                        return (j, None);
                    }
                    if d < best_d {
                        best_d = d;
                        best = j;
                    }
                }
                (best, None)
            }
            Algo::IsolationForest {
                trees,
                features,
                normalizer,
                offset,
            } => {
                trees[0].variant.cast(x, &mut s.cast);
                let mut total = 0.0;
                for (t, f) in trees.iter().zip(features) {
                    s.sub.clear();
                    s.sub.extend(
                        f.iter()
                            .map(|&i| s.cast.get(i).copied().unwrap_or(f64::NAN)),
                    );
                    let (leaf, depth) = t.leaf(&s.sub, true);
                    let n = t.n_node_samples(leaf).unwrap_or(0) as f64;
                    total += f64::from(depth) + average_path_length(n);
                }
                let mean = total / trees.len() as f64;
                let raw = 2.0f64.powf(-mean / normalizer);
                let score = -raw - offset;
                (usize::from(score < 0.0), Some(score))
            }
            _ => (0, None),
        }
    }
}

/// `np.exp` of a float32 scalar (the gamma mode of float32 boosters).
fn expf_np(x: f32) -> f32 {
    x.exp()
}

/// Softmax without max-subtraction, as the reference's float64 path.
fn softmax(v: &mut [f64]) {
    for o in v.iter_mut() {
        *o = o.exp();
    }
    let sum: f64 = v.iter().sum();
    for o in v.iter_mut() {
        *o /= sum;
    }
}
