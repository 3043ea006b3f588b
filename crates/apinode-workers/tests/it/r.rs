//! R functions and predictors.

use crate::{config, fixture, require_r, start};
use apinode_workers::{Error, Pool, WorkerKind, WorkerSpec};
use serde_json::{Value, json};

const CODE: &str = r#"
print("module output goes to the log")

add <- function(a, b = 2, ...) {
  print("user print goes to the log")
  cat("so does cat\n")
  list(sum = a + b, folders = folders, n = length(list(...)))
}

fail <- function() stop("bad input")

leave <- function() quit(save = "no", status = 5)

classify <- function(df) {
  list(prediction = ifelse(df$score > 0.5, "yes", "no"),
       probas = data.frame(no = 1 - df$score, yes = df$score),
       customKeys = lapply(seq_len(nrow(df)), function(i) list(batch = nrow(df))))
}

regress <- function(df) ifelse(df$x < 0, NA, df$x * 2)
"#;

fn spec(kind: WorkerKind, file: &std::path::Path) -> WorkerSpec {
    require_r();
    WorkerSpec::new(kind, file)
}

fn function(name: &str) -> WorkerKind {
    WorkerKind::RFunction {
        function: name.into(),
    }
}

fn predictor(name: &str) -> WorkerKind {
    WorkerKind::RPredictor {
        function: name.into(),
    }
}

#[tokio::test]
async fn an_r_function_gets_named_arguments() {
    let code = fixture("code.R", CODE);
    let mut spec = spec(function("add"), &code.file);
    spec.folders = vec!["/srv/a".into(), "/srv/b".into()];
    let pool = start(spec, config()).await;
    let answer: Value = serde_json::from_str(
        pool.run(&json!({"a": 1, "b": 5, "c": "x"}))
            .await
            .unwrap()
            .get(),
    )
    .unwrap();
    assert_eq!(
        answer,
        json!({"sum": 6, "folders": ["/srv/a", "/srv/b"], "n": 1})
    );
}

#[tokio::test]
async fn an_r_error_is_a_user_error_and_quit_is_a_dead_worker() {
    let code = fixture("code.R", CODE);
    let pool = start(spec(function("fail"), &code.file), config()).await;
    match pool.run(&json!({})).await {
        Err(Error::UserCode { message, .. }) => assert_eq!(message, "bad input"),
        other => panic!("expected a user error, got {other:?}"),
    }
    let pool = start(spec(function("leave"), &code.file), config()).await;
    match pool.run(&json!({})).await {
        Err(Error::WorkerDied { status, .. }) => assert_eq!(status, "exited with status 5"),
        other => panic!("expected a dead worker, got {other:?}"),
    }
    // Replaced: the next call reaches a new worker (which quits again).
    assert!(matches!(
        pool.run(&json!({})).await,
        Err(Error::WorkerDied { .. })
    ));
}

#[tokio::test]
async fn an_r_classifier_returns_labels_probabilities_and_custom_keys() {
    let code = fixture("code.R", CODE);
    let pool = start(spec(predictor("classify"), &code.file), config()).await;
    let records = [json!({"score": 0.9}), json!({"score": 0.2})];
    let predictions = pool.predict(&records).await.unwrap();
    assert_eq!(predictions.classes, ["no", "yes"]);
    let labels: Vec<_> = predictions
        .rows
        .iter()
        .map(|r| r.prediction.clone())
        .collect();
    assert_eq!(labels, [Some(json!("yes")), Some(json!("no"))]);
    let probas: Vec<_> = predictions.probas(1).collect();
    assert_eq!(probas[0].0, "no");
    assert!((probas[0].1.unwrap() - 0.8).abs() < 1e-12);
    assert_eq!(
        predictions.rows[0].custom_keys.as_ref().unwrap()["batch"],
        json!(2)
    );
    // One record: R's length-one vectors must still come back as one row.
    let one = pool.predict(&[json!({"score": 0.7})]).await.unwrap();
    assert_eq!(one.rows[0].prediction, Some(json!("yes")));
    assert_eq!(one.rows[0].probas.len(), 2);
}

#[tokio::test]
async fn an_r_regressor_marks_na_as_not_predicted() {
    let code = fixture("code.R", CODE);
    let pool = start(spec(predictor("regress"), &code.file), config()).await;
    let predictions = pool
        .predict(&[json!({"x": 1.5}), json!({"x": -1})])
        .await
        .unwrap();
    let values: Vec<_> = predictions
        .rows
        .iter()
        .map(|r| r.prediction.clone())
        .collect();
    assert_eq!(values, [Some(json!(3)), None]);
}

#[tokio::test]
async fn an_r_parse_error_fails_the_start() {
    let code = fixture("broken.R", "f <- function(x) {\n  x +* 2\n}\n");
    match Pool::start(spec(function("f"), &code.file), config()).await {
        Err(error @ Error::LoadFailed { .. }) => {
            assert!(error.to_string().contains("broken.R"), "{error}")
        }
        other => panic!("expected a load failure, got {other:?}"),
    }
}
