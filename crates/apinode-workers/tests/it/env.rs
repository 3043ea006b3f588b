//! Code environments: virtualenvs from requirements, R package checks.

use crate::{config, fixture, require_python, require_r, start};
use apinode_workers::{Error, PythonEnvs, WorkerKind, WorkerSpec, check_r_packages};
use std::time::Instant;

#[tokio::test]
async fn a_requirements_file_becomes_a_cached_virtualenv() {
    require_python();
    let cache = tempfile::tempdir().unwrap();
    let envs = PythonEnvs::new(cache.path());
    let started = Instant::now();
    let built = envs.ensure("six==1.17.0\n").await.unwrap();
    let build_time = started.elapsed();
    assert!(!built.reused);
    assert!(built.python.starts_with(cache.path()));

    let started = Instant::now();
    let again = envs.ensure("six==1.17.0\n").await.unwrap();
    println!("built in {build_time:?}, reused in {:?}", started.elapsed());
    assert!(again.reused);
    assert_eq!(again.dir, built.dir);

    // The environment's packages are importable by a worker running on it.
    let code = fixture(
        "uses_six.py",
        "import six\n\ndef version():\n    return six.__version__\n",
    );
    let mut spec = WorkerSpec::new(
        WorkerKind::PythonFunction {
            function: "version".into(),
        },
        &code.file,
    );
    spec.interpreter = built.python.clone();
    let pool = start(spec, config()).await;
    assert_eq!(
        pool.run(&serde_json::json!({})).await.unwrap().get(),
        r#""1.17.0""#
    );
}

#[tokio::test]
async fn concurrent_builders_share_one_build() {
    require_python();
    let cache = tempfile::tempdir().unwrap();
    let envs = PythonEnvs::new(cache.path());
    let (a, b) = tokio::join!(envs.ensure("# nothing\n"), envs.ensure("# nothing\n"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.dir, b.dir);
    assert!(
        a.reused != b.reused,
        "one built, the other waited and reused"
    );
    let leftovers: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains("building"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_failing_requirement_reports_pips_error_and_caches_nothing() {
    require_python();
    let cache = tempfile::tempdir().unwrap();
    let envs = PythonEnvs::new(cache.path());
    match envs.ensure("apinode-no-such-package-e3b0c442==1.0\n").await {
        Err(Error::EnvBuild { step, output }) => {
            assert!(step.contains("pip"), "{step}");
            assert!(
                output.contains("No matching distribution found"),
                "{output}"
            );
        }
        other => panic!("expected a build failure, got {other:?}"),
    }
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    assert!(entries.is_empty(), "nothing is cached: {entries:?}");
}

#[tokio::test]
async fn r_packages_are_checked_not_installed() {
    require_r();
    check_r_packages("Rscript", &["jsonlite".into(), "stats".into()])
        .await
        .unwrap();
    match check_r_packages(
        "Rscript",
        &["jsonlite".into(), "apinodeNoSuchPackage".into()],
    )
    .await
    {
        Err(error @ Error::MissingRPackages { .. }) => {
            let text = error.to_string();
            assert!(text.contains("apinodeNoSuchPackage"), "{text}");
            assert!(text.contains("there is no package called"), "{text}");
            assert!(text.contains("no CRAN"), "{text}");
        }
        other => panic!("expected missing packages, got {other:?}"),
    }
}
