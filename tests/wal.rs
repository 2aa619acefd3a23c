//! The write-ahead log in front of the embedded store (DECISIONS D28): what it holds,
//! applied to an empty store, gives the store the answers were computed on (the same records,
//! queues and ACKs), so that a restart after a crash that lost redb's non-durable commits
//! rebuilds exactly what the senders were told. The crash campaign (`tests/crash.rs`, run with
//! `LABROUTE_TEST_STORE=wal` in `.ci/run`) does it with real SIGKILLs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use labroute::config::Config;
use labroute::ingest::{Handled, Origin, handle_frame};
use labroute::store::Store;
use labroute::store::writer::{StoreHandle, WriterConfig};

fn config() -> Arc<Config> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routes/gcs.toml");
    let text = std::fs::read_to_string(&path).unwrap()
        + "\n[store]\nkind = \"embedded\"\nwrite_ahead_log = true\n";
    Arc::new(Config::from_sources(&[(path, text)]).unwrap_or_else(|e| panic!("{e}")))
}

async fn start(dir: &Path) -> StoreHandle {
    let cfg = config();
    StoreHandle::open(
        Store::open(dir).expect("store"),
        cfg.clone(),
        WriterConfig {
            max_batch: cfg.engine.group_commit_max,
            sealer: None,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn origin() -> Origin {
    Origin {
        listener: "sil".into(),
        peer: "127.0.0.1:1".into(),
        identity: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_applied_to_an_empty_store_gives_the_same_records_queues_and_acks() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = start(a.path()).await;
    let sil = origin();
    let mut frames = Vec::new();
    let mut acks = Vec::new();
    for i in 0..30 {
        let es = if i % 3 == 0 { "ES2" } else { "ES1" };
        let frame = common::result_by_identifier(es, &format!("W-{i}"), "100001", "5.1");
        let (ack, handled) = handle_frame(frame.clone(), &sil, &first).await;
        assert!(matches!(handled, Handled::Accepted { .. }), "{handled:?}");
        frames.push(frame);
        acks.push(ack.expect("an ACK"));
    }
    // A retransmission, in the log too.
    let (_, handled) = handle_frame(frames[4].clone(), &sil, &first).await;
    assert!(matches!(handled, Handled::Duplicate { .. }), "{handled:?}");
    // Everything answered is in the log: a copy of it alone, beside an empty store.
    common::copy_dir(&a.path().join("wal"), &b.path().join("wal"));
    let second = start(b.path()).await;
    let (x, y) = (first.store(), second.store());
    assert_eq!(x.counts().unwrap(), y.counts().unwrap());
    for seq in 1..=31 {
        assert_eq!(
            x.record(seq).unwrap(),
            y.record(seq).unwrap(),
            "record {seq}"
        );
        assert_eq!(x.raw(seq).unwrap(), y.raw(seq).unwrap(), "message {seq}");
    }
    assert!(y.record(1).unwrap().is_some());
    assert_eq!(x.queue_counts().unwrap(), y.queue_counts().unwrap());
    // The rebuilt store answers a retransmission with the original ACK.
    for i in [0, 17, 29] {
        let (ack, handled) = handle_frame(frames[i].clone(), &sil, &second).await;
        assert!(matches!(handled, Handled::Duplicate { .. }), "{handled:?}");
        assert_eq!(ack.as_deref(), Some(acks[i].as_slice()), "message {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_nothing_twice_and_numbers_on() {
    let dir = tempfile::tempdir().unwrap();
    let sil = origin();
    let handle = start(dir.path()).await;
    for i in 0..5 {
        let frame = common::result_by_identifier("ES1", &format!("R-{i}"), "100001", "5.1");
        let (_, handled) = handle_frame(frame, &sil, &handle).await;
        assert!(matches!(handled, Handled::Accepted { .. }), "{handled:?}");
    }
    let closed = handle.closed();
    drop(handle);
    closed.await;
    let handle = start(dir.path()).await;
    assert_eq!(handle.store().counts().unwrap().messages, 5);
    let frame = common::result_by_identifier("ES1", "R-5", "100001", "5.1");
    let (_, handled) = handle_frame(frame, &sil, &handle).await;
    assert!(
        matches!(handled, Handled::Accepted { seq: 6, .. }),
        "{handled:?}"
    );
    // Only the segment started at this start is left (the earlier ones were durable).
    let segments: Vec<_> = std::fs::read_dir(dir.path().join("wal")).unwrap().collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opened_without_the_log_refuses_entries_it_has_not_applied() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let handle = start(a.path()).await;
    let frame = common::result_by_identifier("ES1", "N-1", "100001", "5.1");
    let (_, handled) = handle_frame(frame, &origin(), &handle).await;
    assert!(matches!(handled, Handled::Accepted { .. }), "{handled:?}");
    // As after a crash that lost redb's non-durable commits: the log, beside an empty store.
    common::copy_dir(&a.path().join("wal"), &b.path().join("wal"));
    let mut cfg = (*config()).clone();
    cfg.store = labroute::config::StoreKind::Embedded;
    let err = StoreHandle::open(
        Store::open(b.path()).unwrap(),
        Arc::new(cfg),
        WriterConfig {
            max_batch: 16,
            sealer: None,
        },
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("entries this store has not applied")
            && err.contains("write_ahead_log = true"),
        "{err}"
    );
    // With the log on, it applies them.
    let again = start(b.path()).await;
    assert_eq!(again.store().counts().unwrap().messages, 1);
}
