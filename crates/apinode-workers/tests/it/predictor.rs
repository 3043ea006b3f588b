//! Python predictors written the way Dataiku's documentation writes them.

use crate::{config, fixture, pandas_python, start};
use apinode_workers::{Error, Pool, WorkerKind, WorkerSpec};
use serde_json::{Value, json};

const CLASSIFIER: &str = r#"
import pandas as pd
from dataiku.apinode.predict.predictor import ClassificationPredictor

class MyPredictor(ClassificationPredictor):
    """The class of a custom predictor for classification."""

    def __init__(self, data_folder=None):
        self.data_folder = data_folder

    def predict(self, features_df):
        print("predicting %d rows" % len(features_df))
        score = features_df["score"]
        labels = pd.Series(["yes" if s > 0.5 else "no" for s in score])
        probas = pd.DataFrame({"no": 1 - score, "yes": score})
        custom_keys = [{"batch": len(features_df), "folder": self.data_folder, "city": c}
                       for c in features_df["city"]]
        return labels, probas, custom_keys
"#;

const REGRESSOR: &str = r#"
import numpy as np
from dataiku.apinode.predict.predictor import RegressionPredictor

class Doubler(RegressionPredictor):
    def predict(self, features_df):
        predictions = features_df["x"] * 2.0
        predictions[features_df["x"] < 0] = np.nan
        return predictions, [{"row": i} for i in range(len(features_df))]
"#;

const PLAIN_SERIES: &str = r#"
import pandas as pd
from dataiku.apinode.predict.predictor import RegressionPredictor

class Constant(RegressionPredictor):
    def __init__(self, data_folder=None):
        assert data_folder is None, data_folder

    def predict(self, features_df):
        return pd.Series([42] * len(features_df))

class Helper:
    pass
"#;

const WRONG_LENGTH: &str = r#"
import pandas as pd
from dataiku.apinode.predict.predictor import RegressionPredictor

class Short(RegressionPredictor):
    def predict(self, features_df):
        return pd.Series([1.0])
"#;

async fn predictor_pool(code: &std::path::Path, class: Option<&str>, folder: Option<&str>) -> Pool {
    let mut spec = WorkerSpec::new(
        WorkerKind::PythonPredictor {
            class: class.map(Into::into),
        },
        code,
    );
    spec.interpreter = pandas_python().await;
    spec.data_folder = folder.map(Into::into);
    start(spec, config()).await
}

#[tokio::test]
async fn classification_with_probabilities_and_custom_keys_in_one_batch() {
    let code = fixture("classifier.py", CLASSIFIER);
    let pool = predictor_pool(&code.file, None, Some("/srv/model-folder")).await;
    let records = [
        json!({"score": 0.9, "city": "Paris"}),
        json!({"score": 0.2, "city": "Lyon"}),
        json!({"score": 0.6, "city": "Nice"}),
    ];
    let predictions = pool.predict(&records).await.unwrap();
    assert_eq!(predictions.classes, ["no", "yes"]);
    let labels: Vec<_> = predictions
        .rows
        .iter()
        .map(|r| r.prediction.clone())
        .collect();
    assert_eq!(
        labels,
        [Some(json!("yes")), Some(json!("no")), Some(json!("yes"))]
    );
    let first: Vec<_> = predictions.probas(0).collect();
    assert_eq!(first[0].0, "no");
    assert!((first[0].1.unwrap() - 0.1).abs() < 1e-12);
    assert!((first[1].1.unwrap() - 0.9).abs() < 1e-12);
    let keys = predictions.rows[2].custom_keys.as_ref().unwrap();
    // One DataFrame for the whole batch; the managed folder reached the constructor.
    assert_eq!(keys["batch"], json!(3));
    assert_eq!(keys["folder"], json!("/srv/model-folder"));
    assert_eq!(keys["city"], json!("Nice"));

    // A single record (the `predict` route) is a one-row batch.
    let one = pool
        .predict(&[json!({"score": 0.7, "city": "Metz"})])
        .await
        .unwrap();
    assert_eq!(one.rows.len(), 1);
    assert_eq!(one.rows[0].custom_keys.as_ref().unwrap()["batch"], json!(1));
}

#[tokio::test]
async fn regression_with_not_predicted_rows_and_custom_keys() {
    let code = fixture("regressor.py", REGRESSOR);
    let pool = predictor_pool(&code.file, Some("Doubler"), None).await;
    let records = [json!({"x": 1.5}), json!({"x": -1}), json!({"x": 4})];
    let predictions = pool.predict(&records).await.unwrap();
    assert!(predictions.classes.is_empty());
    let values: Vec<_> = predictions
        .rows
        .iter()
        .map(|r| r.prediction.clone())
        .collect();
    assert_eq!(values, [Some(json!(3.0)), None, Some(json!(8.0))]);
    assert!(predictions.rows.iter().all(|r| r.probas.is_empty()));
    assert_eq!(
        predictions.rows[1].custom_keys.as_ref().unwrap()["row"],
        json!(1)
    );
    let empty: [Value; 0] = [];
    assert!(pool.predict(&empty).await.unwrap().rows.is_empty());
}

#[tokio::test]
async fn a_plain_series_and_no_data_folder() {
    let code = fixture("constant.py", PLAIN_SERIES);
    let pool = predictor_pool(&code.file, None, None).await;
    let predictions = pool
        .predict(&[json!({"a": 1}), json!({"b": "x"})])
        .await
        .unwrap();
    let values: Vec<_> = predictions
        .rows
        .iter()
        .map(|r| r.prediction.clone())
        .collect();
    assert_eq!(values, [Some(json!(42)), Some(json!(42))]);
    assert!(predictions.rows.iter().all(|r| r.custom_keys.is_none()));
    assert!(matches!(
        pool.run(&json!({})).await,
        Err(Error::InvalidCall { .. })
    ));
}

#[tokio::test]
async fn a_wrong_number_of_predictions_is_the_users_error() {
    let code = fixture("short.py", WRONG_LENGTH);
    let pool = predictor_pool(&code.file, None, None).await;
    match pool.predict(&[json!({"a": 1}), json!({"a": 2})]).await {
        Err(Error::UserCode { message, .. }) => {
            assert!(message.contains("1 predictions for 2 rows"), "{message}")
        }
        other => panic!("expected a user error, got {other:?}"),
    }
    assert_eq!(pool.stats().workers, 1);
}
