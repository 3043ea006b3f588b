//! Python functions: arguments, return values, user output, user errors, load errors.

use crate::{config, fixture, python_function, start};
use apinode_workers::{Error, LogTags, Pool, WorkerKind, WorkerSpec};
use serde_json::{Value, json};

const HANDLER: &str = r#"
import os, sys

print("module output goes to the log")

def handler(a, b=2, **rest):
    print("user print goes to the log, not the protocol")
    sys.stdout.write("and so does sys.stdout\n")
    os.write(1, b"and a raw write to fd 1\n")
    return {"sum": a + b, "rest": rest, "folders": folders, "nan": float("nan"), "text": "é\n"}

def nothing():
    return None

def not_json():
    return object()

class Custom(Exception):
    def __init__(self, message, http_status_code):
        super().__init__(message)
        self.http_status_code = http_status_code

def fail(kind):
    if kind == "value":
        raise ValueError("bad input: %s" % kind)
    raise Custom("teapot", 418)
"#;

fn value(raw: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(raw.get()).expect("the answer is JSON")
}

#[tokio::test]
async fn keyword_arguments_in_json_out_and_folders_as_a_global() {
    let code = fixture("handler.py", HANDLER);
    let mut spec = python_function(&code.file, "handler");
    spec.folders = vec!["/srv/folder-a".into(), "/srv/folder-b".into()];
    let pool = start(spec, config()).await;
    let answer = value(
        &pool
            .run(&json!({"a": 1, "b": 3, "extra": "x"}))
            .await
            .unwrap(),
    );
    assert_eq!(
        answer,
        json!({"sum": 4, "rest": {"extra": "x"}, "folders": ["/srv/folder-a", "/srv/folder-b"],
               "nan": null, "text": "é\n"})
    );
    // Defaults apply; the same worker serves call after call.
    let answer = value(&pool.run(&json!({"a": 10})).await.unwrap());
    assert_eq!(answer["sum"], 12);
}

#[tokio::test]
async fn none_is_null_and_a_non_json_value_is_a_user_error() {
    let code = fixture("handler.py", HANDLER);
    let pool = start(python_function(&code.file, "nothing"), config()).await;
    assert_eq!(pool.run(&json!({})).await.unwrap().get(), "null");

    let pool = start(python_function(&code.file, "not_json"), config()).await;
    match pool.run(&json!({})).await {
        Err(Error::UserCode {
            exception, message, ..
        }) => {
            assert_eq!(exception, "TypeError");
            assert!(message.contains("not JSON-serializable"), "{message}");
        }
        other => panic!("expected a user error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_user_exception_carries_type_message_and_traceback() {
    let code = fixture("handler.py", HANDLER);
    let pool = start(python_function(&code.file, "fail"), config()).await;
    match pool.run(&json!({"kind": "value"})).await {
        Err(Error::UserCode {
            exception,
            message,
            traceback,
            http_status,
        }) => {
            assert_eq!(exception, "ValueError");
            assert_eq!(message, "bad input: value");
            assert!(traceback.contains("handler.py"), "{traceback}");
            assert!(traceback.contains("raise ValueError"), "{traceback}");
            assert!(
                !traceback.contains("worker.py"),
                "worker frames are trimmed: {traceback}"
            );
            assert_eq!(http_status, None);
        }
        other => panic!("expected a user error, got {other:?}"),
    }
    // Dataiku's DkuCustomApiException(message, http_status_code=...) shape.
    match pool.run(&json!({"kind": "custom"})).await {
        Err(Error::UserCode {
            exception,
            http_status,
            ..
        }) => {
            assert_eq!((exception.as_str(), http_status), ("Custom", Some(418)));
        }
        other => panic!("expected a user error, got {other:?}"),
    }
    // Wrong arguments are the user's TypeError; the worker lives on.
    match pool.run(&json!({"nope": 1})).await {
        Err(Error::UserCode { exception, .. }) => assert_eq!(exception, "TypeError"),
        other => panic!("expected a user error, got {other:?}"),
    }
    assert_eq!(pool.stats().workers, 1);
}

#[tokio::test]
async fn calls_that_do_not_fit_the_pool_are_refused() {
    let code = fixture("handler.py", HANDLER);
    let pool = start(python_function(&code.file, "nothing"), config()).await;
    assert!(matches!(
        pool.run(&json!([1, 2])).await,
        Err(Error::InvalidCall { .. })
    ));
    let records: [Value; 0] = [];
    assert!(matches!(
        pool.predict(&records).await,
        Err(Error::InvalidCall { .. })
    ));
}

#[tokio::test]
async fn a_syntax_error_fails_the_start_and_names_the_file() {
    let code = fixture("broken.py", "def handler(:\n    return 1\n");
    let error = Pool::start(python_function(&code.file, "handler"), config())
        .await
        .unwrap_err();
    match &error {
        Error::LoadFailed {
            file,
            exception,
            traceback,
            ..
        } => {
            assert_eq!(file, &code.file);
            assert_eq!(exception, "SyntaxError");
            assert!(traceback.contains("broken.py"), "{traceback}");
        }
        other => panic!("expected a load failure, got {other:?}"),
    }
    assert!(error.to_string().contains("broken.py"), "{error}");
}

#[tokio::test]
async fn an_import_error_or_a_missing_function_fails_the_start() {
    let code = fixture("imports.py", "import apinode_no_such_module\n");
    match Pool::start(python_function(&code.file, "handler"), config()).await {
        Err(Error::LoadFailed {
            exception, message, ..
        }) => {
            assert_eq!(exception, "ModuleNotFoundError");
            assert!(message.contains("apinode_no_such_module"), "{message}");
        }
        other => panic!("expected a load failure, got {other:?}"),
    }
    let code = fixture("empty.py", "x = 1\n");
    match Pool::start(python_function(&code.file, "handler"), config()).await {
        Err(Error::LoadFailed { message, .. }) => {
            assert!(message.contains("no function `handler`"), "{message}")
        }
        other => panic!("expected a load failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_interpreter_is_a_spawn_error() {
    let code = fixture("handler.py", HANDLER);
    let mut spec = WorkerSpec::new(
        WorkerKind::PythonFunction {
            function: "nothing".into(),
        },
        &code.file,
    );
    spec.interpreter = "/nonexistent/python3".into();
    match Pool::start(spec, config()).await {
        Err(error @ Error::Spawn { .. }) => {
            assert!(
                error.to_string().contains("/nonexistent/python3"),
                "{error}"
            )
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
}

/// A `Write` into a shared buffer, for capturing log lines.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn user_output_is_logged_with_the_pools_tags() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is single-threaded: the pool's tasks log on this thread.
    let _default = tracing::subscriber::set_default(subscriber);

    let code = fixture("handler.py", HANDLER);
    let mut config = config();
    config.tags = LogTags {
        service: "svc-a".into(),
        endpoint: "ep-b".into(),
        generation: "gen-c".into(),
    };
    let pool = start(python_function(&code.file, "handler"), config).await;
    pool.run(&json!({"a": 1})).await.unwrap();
    pool.shutdown().await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("and a raw write to fd 1"))
        .unwrap_or_else(|| panic!("the worker's output is in the log:\n{log}"));
    for tag in [
        "service=svc-a",
        "endpoint=ep-b",
        "generation=gen-c",
        "apinode_workers::output",
    ] {
        assert!(line.contains(tag), "{tag} in {line}");
    }
    assert!(log.contains("module output goes to the log"), "{log}");
}
