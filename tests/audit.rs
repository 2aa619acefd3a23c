//! The audit journal after real traffic: intact, queryable by establishment and event, and
//! `verify` names the first bad entry after one byte is flipped, one entry deleted, or two
//! entries swapped (on copies of the store, with redb directly).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use labroute::store::Store;
use labroute::store::audit::{AUDIT, AUDIT_HEAD, AuditFilter, HEAD_KEY, query, verify};
use labroute::store::writer::OperatorCommand;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");

fn tamper(src: &Path, dst: &Path, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    std::fs::create_dir_all(dst).expect("dir");
    std::fs::copy(src.join("labroute.redb"), dst.join("labroute.redb")).expect("copy");
    let db = redb::Database::open(dst.join("labroute.redb")).expect("redb opens");
    let txn = db.begin_write().expect("write");
    {
        let mut t = txn.open_table(AUDIT).expect("audit table");
        f(&mut t);
    }
    txn.commit().expect("commit");
}

fn get(t: &redb::Table<u64, &[u8]>, k: u64) -> Vec<u8> {
    t.get(k).expect("get").expect("present").value().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_records_everything_and_verify_finds_any_tampering() {
    let h = Harness::start(|r| r).await;
    let msgs = vec![
        result_by_identifier("ES1", "J1", "100001", "1"),
        result_by_identifier("ES2", "J2", "200002", "2"),
        result_by_identifier("XX", "J3", "9", "3"),
        result_by_identifier("ES1", "J1", "100001", "1"),
        b"MSH|^~\\&|SIL|LAB|DPI||x||QRY^Q01|J4|P|2.5\r".to_vec(),
    ];
    send_all(h.sil(), &msgs).await.expect("acks");
    assert!(h.es1.wait_for(1, Duration::from_secs(20)).await);
    assert!(h.es2.wait_for(1, Duration::from_secs(20)).await);
    let held = h.server.store.store().quarantine().expect("q")[0].0.seq;
    h.server
        .store
        .operator(
            OperatorCommand::Release {
                seq: held,
                establishment: "ES1".into(),
            },
            &local_operator("alice"),
        )
        .await
        .expect("release");
    assert!(h.es1.wait_for(2, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = h.dir.path().to_path_buf();
    let routes = data.join("routes.toml");
    std::fs::write(&routes, &h.routes).expect("routes file");
    h.server.shutdown().await;

    let store = Store::open(&data).expect("store");
    let v = verify(&store, None).expect("verify runs");
    assert_eq!(v.first_bad, None);
    let all = query(&store, &AuditFilter::default()).expect("query");
    assert_eq!(all.len() as u64, v.entries);
    let events: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    for e in ["received", "duplicate", "refused", "delivered", "operator"] {
        assert!(events.contains(&e), "no {e} in {events:?}");
    }
    // One refused message (J4, unsupported type): one journal entry, with its code.
    let refused: Vec<_> = all.iter().filter(|e| e.event == "refused").collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].detail["code"], 200);
    let es2 = query(
        &store,
        &AuditFilter {
            establishments: vec!["ES2".into()],
            ..Default::default()
        },
    )
    .expect("query");
    assert!(!es2.is_empty());
    assert!(
        es2.iter()
            .all(|e| e.establishment.as_deref() == Some("ES2"))
    );
    let op = all
        .iter()
        .find(|e| e.event == "operator")
        .expect("operator entry");
    assert_eq!(op.actor.as_deref(), Some("alice"));
    let n = v.entries;
    assert!(n >= 8, "{n}");
    drop(store);

    let work = tempfile::tempdir().expect("tempdir");
    let check = |dir: &Path| {
        let s = Store::open(dir).expect("copy opens");
        verify(&s, None).expect("verify runs").first_bad
    };
    // One byte flipped inside entry 3.
    let flipped = work.path().join("flip");
    tamper(&data, &flipped, |t| {
        let mut v = get(t, 3);
        let i = v.len() - 5;
        v[i] ^= 0x01;
        t.insert(3, v.as_slice()).expect("insert");
    });
    let bad = check(&flipped).expect("detected");
    assert_eq!(bad.0, 3, "{bad:?}");
    assert!(bad.1.contains("altered"), "{bad:?}");
    // Entry 4 deleted.
    let deleted = work.path().join("delete");
    tamper(&data, &deleted, |t| {
        t.remove(4).expect("remove");
    });
    let bad = check(&deleted).expect("detected");
    assert_eq!(bad.0, 4, "{bad:?}");
    assert!(bad.1.contains("missing"), "{bad:?}");
    // Entries 5 and 6 swapped.
    let swapped = work.path().join("swap");
    tamper(&data, &swapped, |t| {
        let (a, b) = (get(t, 5), get(t, 6));
        t.insert(5, b.as_slice()).expect("insert");
        t.insert(6, a.as_slice()).expect("insert");
    });
    let bad = check(&swapped).expect("detected");
    assert_eq!(bad.0, 5, "{bad:?}");
    assert!(bad.1.contains("reordered"), "{bad:?}");
    // The last entry removed (truncation).
    let truncated = work.path().join("truncate");
    tamper(&data, &truncated, |t| {
        t.remove(n).expect("remove");
    });
    let bad = check(&truncated).expect("detected");
    assert_eq!(bad.0, n, "{bad:?}");
    // The last entry rewritten with a hash that matches its new body: no entry follows to
    // break the chain, so only the head kept in the store catches it.
    let rewritten = work.path().join("rewrite-last");
    tamper(&data, &rewritten, |t| {
        let v = get(t, n);
        let body = String::from_utf8(v[32..].to_vec()).expect("utf8").replacen(
            "\"event\":\"",
            "\"event\":\"x",
            1,
        );
        let hash: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()).into();
        let mut value = hash.to_vec();
        value.extend_from_slice(body.as_bytes());
        t.insert(n, value.as_slice()).expect("insert");
    });
    let bad = check(&rewritten).expect("detected");
    assert_eq!(bad.0, n, "{bad:?}");
    assert!(bad.1.contains("head"), "{bad:?}");
    // A store written before the head moved to META (the whole hash in `audit_head`):
    // verified against that table, intact as it is, caught when its last entry is removed.
    let last_hash = {
        let db = redb::Database::open(data.join("labroute.redb")).expect("redb opens");
        let txn = db.begin_read().expect("read");
        let t = txn.open_table(AUDIT).expect("audit");
        t.get(n).expect("get").expect("present").value()[..32].to_vec()
    };
    let old_layout = |dst: &Path, head: &[u8], remove_last: bool| {
        std::fs::create_dir_all(dst).expect("dir");
        std::fs::copy(data.join("labroute.redb"), dst.join("labroute.redb")).expect("copy");
        let db = redb::Database::open(dst.join("labroute.redb")).expect("redb opens");
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn.open_table(META).expect("meta");
            meta.remove(HEAD_KEY)
                .expect("remove")
                .expect("the head is in META");
            if remove_last {
                meta.insert("audit_seq", n - 1).expect("insert");
                txn.open_table(AUDIT)
                    .expect("audit")
                    .remove(n)
                    .expect("remove");
            }
            txn.open_table(AUDIT_HEAD)
                .expect("audit_head")
                .insert("head", head)
                .expect("insert");
        }
        txn.commit().expect("commit");
    };
    let old = work.path().join("old-layout");
    old_layout(&old, &last_hash, false);
    assert_eq!(check(&old), None);
    let old_cut = work.path().join("old-layout-cut");
    old_layout(&old_cut, &last_hash, true);
    let bad = check(&old_cut).expect("detected");
    assert_eq!(bad.0, n - 1, "{bad:?}");
    assert!(bad.1.contains("head"), "{bad:?}");

    // The CLI says so and fails; on the intact store it passes.
    let cli = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_labroute"))
            .args(["audit", "verify", "--data"])
            .arg(dir)
            .arg("--routes")
            .arg(&routes)
            .output()
            .expect("labroute runs")
    };
    let ok = cli(&data);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));
    let out = cli(&swapped);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entry 5"), "{err}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Rewrites the whole chain after changing the first entry that contains `from`, as someone
/// holding the file could: every hash and link recomputed, the head too. Returns that entry.
fn rewrite_chain(src: &Path, dst: &Path, from: &str, to: &str) -> u64 {
    use sha2::Digest;
    std::fs::create_dir_all(dst).expect("dir");
    std::fs::copy(src.join("labroute.redb"), dst.join("labroute.redb")).expect("copy");
    let db = redb::Database::open(dst.join("labroute.redb")).expect("redb opens");
    let txn = db.begin_write().expect("write");
    let mut changed = 0;
    {
        let mut t = txn.open_table(AUDIT).expect("audit");
        let n = t.len().expect("len");
        let mut prev = [0u8; 32];
        for k in 1..=n {
            let v = get(&t, k);
            let mut text = String::from_utf8(v[32..].to_vec()).expect("utf8");
            let at = text.find("\"prev\":\"").expect("prev") + 8;
            text.replace_range(at..at + 64, &hex(&prev));
            if changed == 0 && text.contains(from) {
                text = text.replace(from, to);
                changed = k;
            }
            let hash: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
            let mut value = hash.to_vec();
            value.extend_from_slice(text.as_bytes());
            t.insert(k, value.as_slice()).expect("insert");
            prev = hash;
        }
        let mut meta = txn.open_table(META).expect("meta");
        meta.insert(
            labroute::store::audit::HEAD_KEY,
            labroute::store::audit::head_prefix(&prev),
        )
        .expect("insert");
    }
    txn.commit().expect("commit");
    assert!(changed > 0, "{from} found in no entry");
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_seals_catch_a_rewritten_chain() {
    let certs = dev_certs();
    let h = Harness::start(|r| {
        r.replace(
            "idle_timeout_secs = 60",
            "idle_timeout_secs = 60\naudit_seal_every = 3",
        ) + &dev_tls_section()
    })
    .await;
    let msgs: Vec<Vec<u8>> = (0..6)
        .map(|i| result_by_identifier("ES1", &format!("S{i}"), "100001", "1"))
        .collect();
    send_all(h.sil(), &msgs).await.expect("acks");
    assert!(h.es1.wait_for(6, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = h.dir.path().to_path_buf();
    h.server.shutdown().await;

    let cert = labroute::tls::load_certs(&certs.join("server.pem")).expect("cert")[0].clone();
    let store = Store::open(&data).expect("store");
    let v = verify(&store, Some(&cert)).expect("verify");
    assert_eq!(v.first_bad, None);
    assert!(v.seals_verified >= 4, "{v:?}");
    let entries = v.entries;
    drop(store);

    // The whole chain rewritten after changing one entry: links and head are consistent,
    // the seals are not.
    let work = tempfile::tempdir().expect("tempdir");
    let rewritten = work.path().join("rewritten");
    let changed = rewrite_chain(&data, &rewritten, "\"S1\"", "\"S9\"");
    let s = Store::open(&rewritten).expect("copy");
    let bad = verify(&s, Some(&cert))
        .expect("verify")
        .first_bad
        .expect("detected");
    assert!(bad.0 >= changed && bad.0 <= entries, "{bad:?}");
    assert!(bad.1.contains("rewritten"), "{bad:?}");
    // Unchanged content rewritten the same way is still intact (the check is not vacuous).
    let same = work.path().join("same");
    rewrite_chain(&data, &same, "\"S1\"", "\"S1\"");
    let s2 = Store::open(&same).expect("copy");
    assert_eq!(verify(&s2, Some(&cert)).expect("verify").first_bad, None);
}
