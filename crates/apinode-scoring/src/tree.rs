//! The tree engine (format doc §5.1): heap-numbered trees of the three variants (scikit-learn,
//! LightGBM, XGBoost), flattened into arrays at load time.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::json::Num;

/// Which library trained the tree; fixes the feature cast, the comparison and set routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    Sklearn,
    LightGbm,
    XgBoost,
}

impl Variant {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Sklearn => "scikit-learn",
            Variant::LightGbm => "LightGBM",
            Variant::XgBoost => "XGBoost",
        }
    }

    /// Casts a feature row as the reference's `feature_converter` does.
    pub(crate) fn cast(self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        match self {
            Variant::LightGbm => out.extend_from_slice(x),
            Variant::Sklearn | Variant::XgBoost => {
                out.extend(x.iter().map(|&v| f64::from(v as f32)));
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct TreeJson {
    node_id: Vec<u64>,
    feature: Vec<usize>,
    threshold: Vec<Num>,
    leaf_id: Vec<u64>,
    label: Vec<Option<Label>>,
    #[serde(default)]
    missing: Option<Vec<Option<String>>>,
    #[serde(default)]
    split_kind: Option<Vec<String>>,
    #[serde(default)]
    category_set: Option<Vec<Option<Vec<Num>>>>,
    #[serde(default)]
    n_node_samples: Option<Vec<u64>>,
    #[serde(default)]
    xgboost: Option<bool>,
    #[serde(default)]
    lightgbm: Option<bool>,
    #[serde(default)]
    missing_value: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Label {
    Scalar(Num),
    Vector(Vec<Num>),
}

const LEAF: u32 = 1 << 31;

#[derive(Debug, Clone)]
struct Split {
    feature: u32,
    threshold: f64,
    /// Child references; `LEAF | i` is leaf `i`.
    left: u32,
    right: u32,
    missing_left: Option<bool>,
    /// Index into `sets`, for category-set splits.
    set: Option<u32>,
}

/// One compiled tree.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub(crate) variant: Variant,
    root: u32,
    splits: Vec<Split>,
    sets: Vec<Vec<f64>>,
    /// Leaf values, `width` per leaf (float32-rounded for XGBoost).
    leaves: Vec<f64>,
    pub(crate) width: usize,
    n_node_samples: Vec<u64>,
    missing_value: f64,
    max_feature: usize,
}

impl Tree {
    /// Compiles `value` (one tree dict); `file` and `field` locate it in errors.
    pub(crate) fn from_json(value: &Value, file: &str, field: &str) -> Result<Tree> {
        let t: TreeJson = serde_path_to_error::deserialize(value).map_err(|e| Error::Json {
            file: file.to_owned(),
            field: format!("{field}.{}", e.path())
                .trim_end_matches('.')
                .to_owned(),
            detail: e.into_inner().to_string(),
        })?;
        Tree::build(t, file, field)
    }

    fn build(t: TreeJson, file: &str, field: &str) -> Result<Tree> {
        let bad = |f: &str, r: String| Error::invalid(file, format!("{field}{f}"), r);
        let variant = if t.xgboost.unwrap_or(false) {
            Variant::XgBoost
        } else if t.lightgbm.unwrap_or(false) {
            Variant::LightGbm
        } else {
            Variant::Sklearn
        };
        let n = t.node_id.len();
        for (name, len) in [
            ("feature", t.feature.len()),
            ("threshold", t.threshold.len()),
        ] {
            if len != n {
                return Err(bad(
                    &format!(".{name}"),
                    format!("has {len} entries for {n} node_id"),
                ));
            }
        }
        if t.label.len() != t.leaf_id.len() {
            return Err(bad(
                ".label",
                format!(
                    "has {} entries for {} leaf_id",
                    t.label.len(),
                    t.leaf_id.len()
                ),
            ));
        }
        let opt_len = |v: Option<usize>| v.filter(|&l| l > 0);
        for (name, len) in [
            ("missing", opt_len(t.missing.as_ref().map(Vec::len))),
            ("split_kind", opt_len(t.split_kind.as_ref().map(Vec::len))),
            (
                "category_set",
                opt_len(t.category_set.as_ref().map(Vec::len)),
            ),
        ] {
            if let Some(len) = len
                && len != n
            {
                return Err(bad(
                    &format!(".{name}"),
                    format!("has {len} entries for {n} node_id"),
                ));
            }
        }
        let mut leaf_index: HashMap<u64, u32> = HashMap::new();
        let mut width = None;
        let mut leaves = Vec::new();
        for (i, (&id, label)) in t.leaf_id.iter().zip(&t.label).enumerate() {
            let Some(label) = label else {
                return Err(bad(
                    &format!(".label[{i}]"),
                    "leaf has no label (null)".to_owned(),
                ));
            };
            let vals: Vec<f64> = match label {
                Label::Scalar(x) => vec![x.0],
                Label::Vector(v) => v.iter().map(|x| x.0).collect(),
            };
            let w = *width.get_or_insert(vals.len());
            if w != vals.len() {
                return Err(bad(
                    &format!(".label[{i}]"),
                    format!("has {} values, other leaves {w}", vals.len()),
                ));
            }
            for v in vals {
                leaves.push(if variant == Variant::XgBoost {
                    f64::from(v as f32)
                } else {
                    v
                });
            }
            leaf_index.insert(id, i as u32);
        }
        let mut split_index: HashMap<u64, u32> = HashMap::new();
        for (i, &id) in t.node_id.iter().enumerate() {
            split_index.insert(id, i as u32);
        }
        let child = |id: u64, k: u64| -> Option<u32> {
            let c = id.checked_mul(2)?.checked_add(k)?;
            split_index
                .get(&c)
                .copied()
                .or_else(|| leaf_index.get(&c).map(|l| LEAF | l))
        };
        let mut splits = Vec::with_capacity(n);
        let mut sets = Vec::new();
        let mut max_feature = 0;
        for (i, &id) in t.node_id.iter().enumerate() {
            let (Some(left), Some(right)) = (child(id, 1), child(id, 2)) else {
                return Err(bad(
                    &format!(".node_id[{i}]"),
                    format!(
                        "split node {id} is missing a child (heap ids {}, {})",
                        2 * id + 1,
                        2 * id + 2
                    ),
                ));
            };
            let kind = t
                .split_kind
                .as_ref()
                .filter(|v| !v.is_empty())
                .map_or("threshold", |v| v[i].as_str());
            let missing_left = t
                .missing
                .as_ref()
                .filter(|v| !v.is_empty())
                .map(|v| v[i].as_deref() == Some("l"));
            let mut threshold = t.threshold[i].0;
            let set = match kind {
                "threshold" => {
                    if threshold.is_nan() {
                        return Err(bad(
                            &format!(".threshold[{i}]"),
                            format!("threshold split node {id} has no threshold"),
                        ));
                    }
                    if variant == Variant::XgBoost {
                        threshold = f64::from(threshold as f32);
                    }
                    None
                }
                "category_set" => {
                    let s = t
                        .category_set
                        .as_ref()
                        .and_then(|v| v.get(i))
                        .and_then(|s| s.as_ref())
                        .ok_or_else(|| {
                            bad(
                                &format!(".category_set[{i}]"),
                                format!("category-set split node {id} has no category_set"),
                            )
                        })?;
                    sets.push(s.iter().map(|x| x.0).collect());
                    Some(sets.len() as u32 - 1)
                }
                other => {
                    return Err(Error::UnsupportedPreprocessing {
                        file: file.to_owned(),
                        what: format!(
                            "tree split kind `{other}` at {field}.split_kind[{i}] (supported: \
                             threshold, category_set)"
                        ),
                    });
                }
            };
            max_feature = max_feature.max(t.feature[i] + 1);
            splits.push(Split {
                feature: t.feature[i] as u32,
                threshold,
                left,
                right,
                missing_left,
                set,
            });
        }
        let root = split_index
            .get(&0)
            .copied()
            .or_else(|| leaf_index.get(&0).map(|l| LEAF | l))
            .ok_or_else(|| bad(".node_id", "the tree has no root (heap id 0)".to_owned()))?;
        let n_node_samples = t.n_node_samples.unwrap_or_default();
        Ok(Tree {
            variant,
            root,
            splits,
            sets,
            leaves,
            width: width.unwrap_or(1),
            n_node_samples,
            missing_value: t.missing_value.map_or(f64::NAN, |m| m.0),
            max_feature,
        })
    }

    /// The number of features the tree reads (1 + the highest feature index).
    pub(crate) fn n_features(&self) -> usize {
        self.max_feature
    }

    fn is_missing(&self, x: f64) -> bool {
        if self.missing_value.is_nan() {
            x.is_nan()
        } else {
            x == self.missing_value
        }
    }

    /// Walks from the root to a leaf; returns the leaf index and the depth (edges).
    /// `lte` routing (scikit-learn, LightGBM) unless the tree is XGBoost and `force_lte` is off.
    #[inline]
    pub(crate) fn leaf(&self, x: &[f64], force_lte: bool) -> (usize, u32) {
        let xgb = self.variant == Variant::XgBoost && !force_lte;
        let mut node = self.root;
        let mut depth = 0;
        while node & LEAF == 0 {
            let s = &self.splits[node as usize];
            let v = x[s.feature as usize];
            let go_left = if self.is_missing(v) {
                s.missing_left == Some(true)
            } else if let Some(set) = s.set {
                if force_lte {
                    // The isolation forest's own walk ignores the unseen-category rule.
                    self.sets[set as usize].contains(&v)
                } else if v == -1.0 && s.missing_left.is_some() {
                    s.missing_left == Some(true)
                } else {
                    let member = self.sets[set as usize].contains(&v);
                    if xgb { !member } else { member }
                }
            } else if xgb {
                v < s.threshold
            } else {
                v <= s.threshold
            };
            node = if go_left { s.left } else { s.right };
            depth += 1;
        }
        ((node & !LEAF) as usize, depth)
    }

    /// The leaf's values (`width` of them).
    #[inline]
    pub(crate) fn value(&self, leaf: usize) -> &[f64] {
        &self.leaves[leaf * self.width..(leaf + 1) * self.width]
    }

    pub(crate) fn n_node_samples(&self, leaf: usize) -> Option<u64> {
        self.n_node_samples.get(leaf).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(extra: &str) -> Tree {
        let v: Value = serde_json::from_str(&format!(
            r#"{{"node_id":[0],"feature":[0],"threshold":[1.0],"leaf_id":[1,2],"label":[10,20]{extra}}}"#
        ))
        .unwrap();
        Tree::from_json(&v, "t.json", "tree").unwrap()
    }

    #[test]
    fn routing_rules() {
        let t = tree("");
        assert_eq!(t.value(t.leaf(&[1.0], false).0), &[10.0]);
        assert_eq!(t.value(t.leaf(&[f64::NAN], false).0), &[20.0]);
        let x = tree(r#","xgboost":true,"missing":["l"]"#);
        assert_eq!(x.value(x.leaf(&[1.0], false).0), &[20.0]);
        assert_eq!(x.value(x.leaf(&[f64::NAN], false).0), &[10.0]);
    }

    #[test]
    fn category_set_splits() {
        let set = |flag: &str, missing: &str| {
            let v: Value = serde_json::from_str(&format!(
                r#"{{"node_id":[0],"feature":[0],"threshold":[null],"split_kind":["category_set"],
                    "category_set":[[1, 3]],"leaf_id":[1,2],"label":[10,20]{flag}{missing}}}"#
            ))
            .unwrap();
            Tree::from_json(&v, "t.json", "tree").unwrap()
        };
        let go = |t: &Tree, x: f64| t.value(t.leaf(&[x], false).0)[0];
        // LightGBM / scikit-learn: members left. XGBoost: members right.
        let l = set(r#","lightgbm":true"#, "");
        assert_eq!((go(&l, 3.0), go(&l, 2.0)), (10.0, 20.0));
        let x = set(r#","xgboost":true"#, "");
        assert_eq!((go(&x, 3.0), go(&x, 2.0)), (20.0, 10.0));
        // An unseen code (-1) follows the missing direction when there is one.
        let l = set(r#","lightgbm":true"#, r#","missing":["l"]"#);
        assert_eq!(go(&l, -1.0), 10.0);
        let x = set(r#","xgboost":true"#, r#","missing":["l"]"#);
        assert_eq!(
            (go(&x, -1.0), go(&x, f64::NAN), go(&x, 2.0)),
            (10.0, 10.0, 10.0)
        );
        // The isolation forest's walk has no unseen-code rule.
        assert_eq!(l.value(l.leaf(&[-1.0], true).0)[0], 20.0);
    }

    #[test]
    fn heap_ids_beyond_u64_are_refused() {
        let v: Value = serde_json::from_str(
            r#"{"node_id":[0],"feature":[0],"threshold":[1],"leaf_id":[1,36893488147419103232],"label":[1,2]}"#,
        )
        .unwrap();
        let e = Tree::from_json(&v, "m.gz", "tree").unwrap_err().to_string();
        assert!(e.contains("leaf_id[1]"), "{e}");
        // Deep heap ids (2^60) are exact.
        let deep = 1u64 << 60;
        let v: Value = serde_json::from_str(&format!(
            r#"{{"node_id":[0, 2, 6, {deep}],"feature":[0,0,0,0],"threshold":[0,1,2,3],
                "leaf_id":[1,5,13,14],"label":[1,2,3,4]}}"#
        ))
        .unwrap();
        // Node {deep} is unreachable but still validated: it lacks children.
        let e = Tree::from_json(&v, "m.gz", "tree").unwrap_err().to_string();
        assert!(e.contains(&deep.to_string()), "{e}");
    }

    #[test]
    fn rejects_missing_child_and_null_threshold() {
        let v: Value = serde_json::from_str(
            r#"{"node_id":[0],"feature":[0],"threshold":[1.0],"leaf_id":[1],"label":[10]}"#,
        )
        .unwrap();
        let e = Tree::from_json(&v, "m.gz", "trees[0]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing a child") && e.contains("trees[0]"),
            "{e}"
        );
        let v: Value = serde_json::from_str(
            r#"{"node_id":[0],"feature":[0],"threshold":[null],"leaf_id":[1,2],"label":[1,2]}"#,
        )
        .unwrap();
        let e = Tree::from_json(&v, "m.gz", "tree").unwrap_err().to_string();
        assert!(e.contains("no threshold"), "{e}");
    }
}
