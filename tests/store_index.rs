//! The indexes written behind the ACK path (DECISIONS D22) under concurrent load: the
//! writer decides from what it has not applied yet (its overlay) as from the tables.
//! Many senders at once put several messages in one batch and keep the writer from idling,
//! so duplicates and orders are often found before their index writes are applied.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use labroute::config::Config;
use labroute::ingest::{Handled, Origin, handle_frame};
use labroute::store::Store;
use labroute::store::writer::{StoreHandle, WriterConfig};

fn origin(listener: &str) -> Arc<Origin> {
    Arc::new(Origin {
        listener: listener.into(),
        peer: "127.0.0.1:1".into(),
        identity: None,
    })
}

async fn start(dir: &std::path::Path) -> StoreHandle {
    let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routes");
    let cfg = Arc::new(Config::load(&routes).expect("routes/ validates"));
    let store = Store::open(dir).expect("store");
    StoreHandle::start(
        store,
        cfg.clone(),
        WriterConfig {
            max_batch: cfg.engine.group_commit_max,
            sealer: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmission_is_a_duplicate_whether_or_not_its_first_copy_is_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let store = start(dir.path()).await;
    let sil = origin("sil");
    let mut tasks = Vec::new();
    for i in 0..60 {
        // Each message twice, both copies in flight at once.
        let frame = common::result_by_identifier("ES1", &format!("DUP-{i}"), "100001", "5.1");
        for _ in 0..2 {
            let (store, sil, frame) = (store.clone(), sil.clone(), frame.clone());
            tasks.push(tokio::spawn(async move {
                (i, handle_frame(frame, &sil, &store).await.1)
            }));
        }
    }
    let mut accepted = vec![0; 60];
    let mut duplicates = vec![0; 60];
    for t in tasks {
        let (i, handled) = t.await.unwrap();
        match handled {
            Handled::Accepted { .. } => accepted[i] += 1,
            Handled::Duplicate { .. } => duplicates[i] += 1,
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(accepted.iter().all(|&n| n == 1), "{accepted:?}");
    assert!(duplicates.iter().all(|&n| n == 1), "{duplicates:?}");
    // After a restart (what was pending applied at open), a third copy is still a duplicate.
    drop(store);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let store = start(dir.path()).await;
    let frame = common::result_by_identifier("ES1", "DUP-7", "100001", "5.1");
    let handled = handle_frame(frame, &sil, &store).await.1;
    assert!(matches!(handled, Handled::Duplicate { .. }), "{handled:?}");
}

/// An order from `es`'s record system (known by its MSH-4) whose order numbers are in a
/// namespace no establishment is configured with: only the order index ties them to `es`.
fn order_in_unknown_namespace(es: &str, i: usize, placer: &str) -> Vec<u8> {
    let fac = if es == "ES1" { "CHNORD" } else { "CHSUD" };
    format!(
        "MSH|^~\\&|DPI|{fac}|SIL|LAB|20250301080000||OML^O21^OML_O21|O-{i}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{i}^^^{fac}-IPP^PI||TEST^PATIENT\rORC|NW|{placer}^UNLISTED\rOBR|1|{placer}^UNLISTED||GLU^Glucose^L\r"
    )
    .into_bytes()
}

/// A result naming nothing but that order number.
fn result_in_unknown_namespace(i: usize, placer: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|R-{i}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||X\rOBR|1|{placer}^UNLISTED|F{placer}^LAB|GLU^Glucose^L|||||||||||||||||||F\rOBX|1|NM|GLU^Glucose^L||4.2|mmol/L|||||F\r"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_finds_its_order_whether_or_not_the_order_is_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let store = start(dir.path()).await;
    let (dpi, sil) = (origin("dpi"), origin("sil"));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let es = if i % 2 == 0 { "ES1" } else { "ES2" };
        let (store, dpi, sil) = (store.clone(), dpi.clone(), sil.clone());
        tasks.push(tokio::spawn(async move {
            let placer = format!("PL-{i}");
            let order = order_in_unknown_namespace(es, i, &placer);
            // The result names only the order: its owner comes from the order index. Polled
            // in this order, the order reaches the writer first and the result right after
            // it, before the order's batch is committed, let alone its index writes applied.
            let result = result_in_unknown_namespace(i, &placer);
            let (ordered, resulted) = tokio::join!(
                handle_frame(order, &dpi, &store),
                handle_frame(result, &sil, &store)
            );
            (es, ordered.1, resulted.1)
        }));
    }
    for t in tasks {
        let (es, ordered, resulted) = t.await.unwrap();
        assert!(matches!(ordered, Handled::Accepted { .. }), "{ordered:?}");
        let want = if es == "ES1" { "ES1" } else { "ES2" };
        match resulted {
            Handled::Accepted {
                establishment: Some(e),
                ..
            } => assert_eq!(e, want),
            other => panic!("result for an {es} order: {other:?}"),
        }
    }
}
