//! Durable ingest without the network: `ingest::handle_frame` (parse, tag, commit with
//! fsync, ACK) on a store in a temporary directory, one message at a time (each its own
//! transaction and sync) and 64 at once (grouped into one commit by the writer thread,
//! DECISIONS D2). Per message.
//!
//! `cargo bench --bench store`; BENCHMARKS.md has the latest figures. The temporary
//! directory is on the disk the project is on (`TMPDIR` moves it): a tmpfs would measure
//! memory, not a sync.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use labroute::config::Config;
use labroute::ingest::{Handled, Origin, handle_frame};
use labroute::loadgen::result_message;
use labroute::store::Store;
use labroute::store::writer::{StoreHandle, WriterConfig};

fn origin() -> Origin {
    Origin {
        listener: "sil".into(),
        peer: "127.0.0.1:1".into(),
        identity: None,
    }
}

/// Sends `n` messages, `at_once` at a time, and waits for every ACK; how long it took.
async fn ingest(store: &StoreHandle, next: &mut u64, n: u64, at_once: u64) -> Duration {
    let origin = Arc::new(origin());
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(at_once);
        let mut tasks = Vec::new();
        for _ in 0..k {
            *next += 1;
            let frame = result_message(&format!("B{next}"), "CHNORD-IPP", *next % 1000, 5);
            let (store, origin) = (store.clone(), origin.clone());
            tasks.push(tokio::spawn(async move {
                handle_frame(frame, &origin, &store).await.1
            }));
        }
        for t in tasks {
            let handled = t.await.expect("task");
            assert!(matches!(handled, Handled::Accepted { .. }), "{handled:?}");
        }
        left -= k;
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routes");
    let cfg = Arc::new(Config::load(&routes).expect("routes/ validates"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let handle = rt.block_on(async {
        StoreHandle::start(
            store,
            cfg.clone(),
            WriterConfig {
                max_batch: cfg.engine.group_commit_max,
                sealer: None,
            },
        )
    });
    let mut next = 0u64;
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ingest_one_at_a_time", |b| {
        b.iter_custom(|iters| rt.block_on(ingest(&handle, &mut next, iters, 1)))
    });
    g.bench_function("ingest_64_at_once", |b| {
        b.iter_custom(|iters| rt.block_on(ingest(&handle, &mut next, iters, 64)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
