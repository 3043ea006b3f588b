//! Pool behaviours: dead and hung workers, the queue, concurrency, scaling, drain, overhead.

use crate::{config, fixture, python_function, start};
use apinode_workers::{Error, Pool};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CODE: &str = r#"
import ctypes, os, signal, sys, time

def echo(i):
    return i

def double(i):
    return 2 * i

def slow(seconds, tag=None):
    time.sleep(seconds)
    return tag if tag is not None else seconds

def leave(how):
    if how == "exit":
        sys.exit(3)
    if how == "os_exit":
        os._exit(4)
    if how == "sigsegv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "null_pointer":
        ctypes.string_at(0)
    return "stayed"
"#;

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_worker_that_exits_costs_one_call_and_is_replaced() {
    let code = fixture("code.py", CODE);
    let pool = start(python_function(&code.file, "leave"), config()).await;
    for (how, status) in [
        ("exit", "exited with status 3"),
        ("os_exit", "exited with status 4"),
    ] {
        match pool.run(&json!({"how": how})).await {
            Err(Error::WorkerDied { status: s, .. }) => assert_eq!(s, status),
            other => panic!("{how}: expected a dead worker, got {other:?}"),
        }
        assert_eq!(
            pool.run(&json!({"how": "stay"})).await.unwrap().get(),
            r#""stayed""#
        );
    }
}

#[tokio::test]
async fn a_segfault_costs_one_call_and_is_replaced() {
    let code = fixture("code.py", CODE);
    let pool = start(python_function(&code.file, "leave"), config()).await;
    for how in ["sigsegv", "null_pointer"] {
        match pool.run(&json!({"how": how})).await {
            Err(Error::WorkerDied { status, stderr }) => {
                assert!(status.contains("SIGSEGV"), "{how}: {status}");
                // faulthandler's dump names the user's frame.
                assert!(stderr.contains("Fatal Python error"), "{how}: {stderr}");
                assert!(stderr.contains("code.py"), "{how}: {stderr}");
            }
            other => panic!("{how}: expected a dead worker, got {other:?}"),
        }
        assert_eq!(
            pool.run(&json!({"how": "stay"})).await.unwrap().get(),
            r#""stayed""#
        );
    }
}

#[tokio::test]
async fn a_hung_call_times_out_and_its_worker_is_replaced() {
    let code = fixture("code.py", CODE);
    let mut config = config();
    config.call_timeout = Duration::from_millis(300);
    let pool = start(python_function(&code.file, "slow"), config).await;
    let started = Instant::now();
    match pool.run(&json!({"seconds": 60})).await {
        Err(Error::Timeout { after }) => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        pool.run(&json!({"seconds": 0, "tag": "next"}))
            .await
            .unwrap()
            .get(),
        r#""next""#
    );
    wait_until("one worker is left", || pool.stats().workers == 1).await;
}

#[tokio::test]
async fn a_full_queue_refuses_the_next_call() {
    let code = fixture("code.py", CODE);
    let mut config = config();
    config.max_workers = 1;
    config.queue_capacity = 1;
    let pool = Arc::new(start(python_function(&code.file, "slow"), config).await);
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.run(&json!({"seconds": 1, "tag": "first"})).await }
    });
    wait_until("the first call has the worker", || pool.stats().idle == 0).await;
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.run(&json!({"seconds": 0, "tag": "second"})).await }
    });
    wait_until("the second call waits", || pool.stats().waiting == 1).await;
    let refused = pool.run(&json!({"seconds": 0})).await.unwrap_err();
    assert!(
        matches!(refused, Error::QueueFull { capacity: 1 }),
        "{refused:?}"
    );
    assert!(refused.is_overload());
    assert_eq!(running.await.unwrap().unwrap().get(), r#""first""#);
    assert_eq!(queued.await.unwrap().unwrap().get(), r#""second""#);
}

#[tokio::test]
async fn sixty_four_concurrent_calls_each_get_their_answer() {
    let code = fixture("code.py", CODE);
    let mut config = config();
    config.max_workers = 4;
    config.queue_capacity = 64;
    let pool = Arc::new(start(python_function(&code.file, "double"), config).await);
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { (i, pool.run(&json!({"i": i})).await) })
        })
        .collect();
    for call in calls {
        let (i, answer) = call.await.unwrap();
        assert_eq!(answer.unwrap().get(), (2 * i).to_string());
    }
    let stats = pool.stats();
    assert!(stats.workers >= 1 && stats.workers <= 4, "{stats:?}");
}

#[tokio::test]
async fn the_pool_scales_up_under_load_and_down_when_idle() {
    let code = fixture("code.py", CODE);
    let mut config = config();
    config.min_workers = 1;
    config.max_workers = 3;
    config.idle_timeout = Some(Duration::from_millis(300));
    let pool = Arc::new(start(python_function(&code.file, "slow"), config).await);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(&json!({"seconds": 1})).await })
        })
        .collect();
    wait_until("three workers run", || pool.stats().workers == 3).await;
    for call in calls {
        call.await.unwrap().unwrap();
    }
    wait_until("the pool is back to one worker", || {
        pool.stats().workers == 1
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_call_does_not_lose_its_worker() {
    let code = fixture("code.py", CODE);
    let mut config = config();
    config.max_workers = 1;
    let pool = start(python_function(&code.file, "slow"), config).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        pool.run(&json!({"seconds": 0.5})),
    )
    .await;
    assert!(gave_up.is_err(), "the caller gave up first");
    // The worker finishes the abandoned call, then serves this one.
    let answer = pool
        .run(&json!({"seconds": 0, "tag": "after"}))
        .await
        .unwrap();
    assert_eq!(answer.get(), r#""after""#);
    assert_eq!(pool.stats().workers, 1);
}

#[tokio::test]
async fn shutdown_finishes_accepted_calls_and_refuses_new_ones() {
    let code = fixture("code.py", CODE);
    let mut config = config();
    config.max_workers = 2;
    let pool = Arc::new(start(python_function(&code.file, "slow"), config).await);
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(&json!({"seconds": 0.5, "tag": i})).await })
        })
        .collect();
    wait_until("all three calls are accepted", || pool.stats().calls == 3).await;
    let drain = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown().await }
    });
    wait_until("the drain has begun", || pool.stats().draining).await;
    assert!(matches!(
        pool.run(&json!({"seconds": 0})).await,
        Err(Error::ShuttingDown)
    ));
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap().get(), i.to_string());
    }
    // Idle workers end on EOF at once, well within the 10 s grace period.
    let answered = Instant::now();
    drain.await.unwrap();
    assert!(
        answered.elapsed() < Duration::from_secs(5),
        "{:?}",
        answered.elapsed()
    );
    assert_eq!(pool.stats().workers, 0);
}

#[tokio::test]
async fn shutdown_kills_what_outlives_the_grace_period() {
    let code = fixture("code.py", CODE);
    let mut config = config();
    config.shutdown_grace = Duration::from_millis(300);
    let pool = Arc::new(start(python_function(&code.file, "slow"), config).await);
    let call = tokio::spawn({
        let pool = pool.clone();
        async move { pool.run(&json!({"seconds": 60})).await }
    });
    wait_until("the call has the worker", || pool.stats().idle == 0).await;
    let started = Instant::now();
    pool.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(call.await.unwrap(), Err(Error::ShuttingDown)));
    assert_eq!(pool.stats().workers, 0);
}

/// Prints the round trip of a trivial call through the pool; asserts nothing about time.
#[tokio::test]
async fn round_trip_overhead() {
    let code = fixture("code.py", CODE);
    let pool: Pool = start(python_function(&code.file, "echo"), config()).await;
    for i in 0..200 {
        pool.run(&json!({"i": i})).await.unwrap();
    }
    let mut times = Vec::with_capacity(2000);
    for i in 0..2000 {
        let started = Instant::now();
        pool.run(&json!({"i": i})).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "round trip of a trivial Python call through the pool: mean {mean:?}, p50 {:?}, \
         p99 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1]
    );
}
