//! The store writer's pattern on two embedded engines, redb (labroute's store) and fjall (an
//! LSM tree), each batch one transaction, made durable (fdatasync) or not.
//!
//!   cargo run --release -- ENGINE DIR [MESSAGES] [BATCH] [PATTERN] [durable|none] [crash]
//!   cargo run --release -- ENGINE DIR reopen
//!
//! PATTERN:
//! - `rand` / `seq`: per message ten inserts of 100 B into ten tables, keys random or
//!   sequential (the first measurement, D21);
//! - `writer`: what `store::writer::ingest` and `delivery` do per message: look up then
//!   insert the deduplication key, two order numbers, a patient identifier and a care link
//!   (random keys); insert the record, its bytes (1 KB), its ACK and an audit entry
//!   (sequential), an outbox entry (sequential per destination) and a results-index entry
//!   (random); a later batch delivers it (outbox entry removed, delivered mark, record
//!   rewritten, audit entry);
//! - `log`: `writer` without the random-key lookups and inserts, and one record per message
//!   holding its metadata, bytes and ACK: the ACK path if the indexes were built behind it;
//! - `index`: the random-key part of `writer` alone (to run in large batches, not durable:
//!   the indexes built behind the ACK path).
//!
//! Prints microseconds per message for each tenth of the run (to see compaction and the
//! tree's growth), then the space on disk. `crash` ends the process without closing the
//! store (as a kill would); `reopen` times opening what is in DIR and reading one key.

use redb::ReadableTable;
use std::time::Instant;

const TABLES: usize = 12;
const VALUE: [u8; 100] = [7; 100];
const RAW: [u8; 1024] = [b'R'; 1024];
const RECORD: [u8; 400] = [b'M'; 400];

/// The writer's tables in `writer` mode.
const DEDUP: usize = 0;
const ORDERS: usize = 1;
const RECORDS: usize = 2;
const RAWS: usize = 3;
const ACKS: usize = 4;
const AUDIT: usize = 5;
const OUTBOX: usize = 6;
const RESULTS: usize = 7;
const PATIENT_IDS: usize = 8;
const CARE_LINKS: usize = 9;
const DELIVERED: usize = 10;
const META: usize = 11;

/// One write transaction, whatever the engine.
trait Tx {
    fn get(&mut self, table: usize, key: &[u8]) -> bool;
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]);
    fn del(&mut self, table: usize, key: &[u8]);
}

trait Engine {
    /// Runs `f` in one write transaction, committed (and made durable when asked).
    fn batch(&mut self, durable: bool, f: &mut dyn FnMut(&mut dyn Tx));
    /// Whether `key` is in `table`, read outside any write (a snapshot).
    fn read(&self, table: usize, key: &[u8]) -> bool;
}

fn names() -> Vec<String> {
    (0..TABLES).map(|i| format!("t{i}")).collect()
}

struct Redb {
    db: redb::Database,
    names: Vec<String>,
}

type Def<'a> = redb::TableDefinition<'a, &'static [u8], &'static [u8]>;

impl Redb {
    fn open(dir: &str) -> Redb {
        let db = redb::Database::builder()
            .set_cache_size(64 << 20)
            .create(format!("{dir}/store.redb"))
            .expect("create the redb file");
        Redb { db, names: names() }
    }
}

struct RedbTx<'t> {
    tables: Vec<redb::Table<'t, &'static [u8], &'static [u8]>>,
}

impl Tx for RedbTx<'_> {
    fn get(&mut self, table: usize, key: &[u8]) -> bool {
        self.tables[table].get(key).expect("get").is_some()
    }
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        self.tables[table].insert(key, value).expect("insert");
    }
    fn del(&mut self, table: usize, key: &[u8]) {
        self.tables[table].remove(key).expect("remove");
    }
}

impl Engine for Redb {
    fn batch(&mut self, durable: bool, f: &mut dyn FnMut(&mut dyn Tx)) {
        let mut txn = self.db.begin_write().expect("begin");
        if !durable {
            txn.set_durability(redb::Durability::None).expect("durability");
        }
        {
            let tables = self
                .names
                .iter()
                .map(|n| txn.open_table(Def::new(n)).expect("open"))
                .collect();
            f(&mut RedbTx { tables });
        }
        txn.commit().expect("commit");
    }
    fn read(&self, table: usize, key: &[u8]) -> bool {
        use redb::ReadableDatabase;
        let r = self.db.begin_read().expect("read");
        match r.open_table(Def::new(&self.names[table])) {
            Ok(t) => t.get(key).expect("get").is_some(),
            Err(_) => false,
        }
    }
}

struct Fjall {
    db: fjall::SingleWriterTxDatabase,
    parts: Vec<fjall::SingleWriterTxKeyspace>,
}

impl Fjall {
    fn open(dir: &str) -> Fjall {
        let db = fjall::SingleWriterTxDatabase::builder(format!("{dir}/fjall"))
            .manual_journal_persist(true)
            .cache_size(64 << 20)
            .open()
            .expect("open");
        let parts = names()
            .iter()
            .map(|n| {
                db.keyspace(n, fjall::KeyspaceCreateOptions::default)
                    .expect("keyspace")
            })
            .collect();
        Fjall { db, parts }
    }
}

struct FjallTx<'a, 'db> {
    tx: &'a mut fjall::SingleWriterWriteTx<'db>,
    parts: &'a [fjall::SingleWriterTxKeyspace],
}

impl Tx for FjallTx<'_, '_> {
    fn get(&mut self, table: usize, key: &[u8]) -> bool {
        use fjall::Readable;
        self.tx.get(&self.parts[table], key).expect("get").is_some()
    }
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        self.tx.insert(&self.parts[table], key, value);
    }
    fn del(&mut self, table: usize, key: &[u8]) {
        self.tx.remove(&self.parts[table], key);
    }
}

impl Engine for Fjall {
    fn batch(&mut self, durable: bool, f: &mut dyn FnMut(&mut dyn Tx)) {
        let mut tx = self.db.write_tx();
        f(&mut FjallTx {
            tx: &mut tx,
            parts: &self.parts,
        });
        tx.commit().expect("commit");
        if durable {
            self.db
                .persist(fjall::PersistMode::SyncData)
                .expect("fdatasync");
        }
    }
    fn read(&self, table: usize, key: &[u8]) -> bool {
        self.parts[table].get(key).expect("get").is_some()
    }
}

struct Keys(u64);

impl Keys {
    /// xorshift64: the same sequence for every engine.
    fn random(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A key of `len` bytes (as the writer's are: a prefix and a value), random or from `n`.
fn key(prefix: &[u8], n: u64, len: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(len.max(prefix.len() + 8));
    k.extend_from_slice(prefix);
    while k.len() + 8 < len {
        k.extend_from_slice(b"\x1f");
    }
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// How many messages the delivery of a batch lags its ingest (in messages).
const DELIVERY_LAG: u64 = 256;

fn writer_message(tx: &mut dyn Tx, keys: &mut Keys, seq: u64) {
    index_message(tx, keys);
    let s = seq.to_be_bytes();
    tx.put(RECORDS, &s, &RECORD);
    tx.put(RAWS, &s, &RAW);
    tx.put(ACKS, &s, &VALUE);
    tx.put(AUDIT, &(2 * seq).to_be_bytes(), &VALUE);
    tx.put(OUTBOX, &key(b"es1-dpi", seq, 16), &VALUE[..60]);
    tx.put(META, b"message", &s);
}

/// The random-key part of `writer`: deduplication, orders, patient identifiers and care
/// links looked up and inserted if absent; the results index.
fn index_message(tx: &mut dyn Tx, keys: &mut Keys) {
    for (table, prefix, len) in [
        (DEDUP, &b"mllp\x1fLAB\x1fSIL"[..], 40),
        (ORDERS, b"P\x1f", 24),
        (ORDERS, b"F\x1f", 24),
        (PATIENT_IDS, b"INS\x1f", 40),
        (CARE_LINKS, b"ES1\x1f", 48),
    ] {
        let k = key(prefix, keys.random(), len);
        if !tx.get(table, &k) {
            tx.put(table, &k, &VALUE[..40]);
        }
    }
    tx.put(RESULTS, &key(b"ES1\x1fpk", keys.random(), 32), &VALUE[..8]);
}

/// The ACK path with the random-key indexes taken off it: one record per message (its
/// metadata, bytes and ACK together), its audit entry and its outbox entry.
fn log_message(tx: &mut dyn Tx, seq: u64) {
    let s = seq.to_be_bytes();
    let mut record = Vec::with_capacity(RECORD.len() + RAW.len() + VALUE.len());
    record.extend_from_slice(&RECORD);
    record.extend_from_slice(&RAW);
    record.extend_from_slice(&VALUE);
    tx.put(RECORDS, &s, &record);
    tx.put(AUDIT, &(2 * seq).to_be_bytes(), &VALUE);
    tx.put(OUTBOX, &key(b"es1-dpi", seq, 16), &VALUE[..60]);
    tx.put(META, b"message", &s);
}

fn deliver_message(tx: &mut dyn Tx, seq: u64) {
    let s = seq.to_be_bytes();
    tx.del(OUTBOX, &key(b"es1-dpi", seq, 16));
    tx.put(DELIVERED, &key(b"es1-dpi", seq, 16), &s);
    tx.put(RECORDS, &s, &RECORD);
    tx.put(AUDIT, &(2 * seq + 1).to_be_bytes(), &VALUE);
}

fn run(engine: &mut dyn Engine, messages: u64, batch: u64, pattern: &str, durable: bool) {
    let mut keys = Keys(0x1234567);
    let mut seq_key = 0u64;
    let mut done = 0u64;
    let tenth = (messages / 10).max(1);
    let mut mark = (Instant::now(), 0u64);
    let mut per_tenth = Vec::new();
    while done < messages {
        let n = batch.min(messages - done);
        engine.batch(durable, &mut |tx| match pattern {
            "index" => {
                for _ in 0..n {
                    index_message(tx, &mut keys);
                }
            }
            "writer" | "log" => {
                for i in 0..n {
                    let seq = done + i + 1;
                    if pattern == "log" {
                        log_message(tx, seq);
                    } else {
                        writer_message(tx, &mut keys, seq);
                    }
                    if seq > DELIVERY_LAG {
                        deliver_message(tx, seq - DELIVERY_LAG);
                    }
                }
            }
            _ => {
                for _ in 0..n {
                    for t in 0..10 {
                        let k = if pattern == "seq" {
                            seq_key += 1;
                            seq_key
                        } else {
                            keys.random()
                        };
                        tx.put(t, &k.to_be_bytes(), &VALUE);
                    }
                }
            }
        });
        done += n;
        if done - mark.1 >= tenth || done == messages {
            let us = mark.0.elapsed().as_secs_f64() * 1e6 / (done - mark.1) as f64;
            per_tenth.push(format!("{us:.0}"));
            mark = (Instant::now(), done);
        }
    }
    println!("  per tenth of the run (us/message): {}", per_tenth.join(" "));
}

fn du(path: &str) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(std::path::Path::new(path))
}

fn open(engine: &str, dir: &str) -> Box<dyn Engine> {
    match engine {
        "redb" => Box::new(Redb::open(dir)),
        "fjall" => Box::new(Fjall::open(dir)),
        other => {
            eprintln!("unknown engine {other}: redb or fjall");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args[0].starts_with('-') {
        eprintln!(
            "usage: ENGINE(redb|fjall) DIR [MESSAGES=20000] [BATCH=16] [rand|seq|writer] [durable|none] [crash]\n       ENGINE DIR reopen"
        );
        std::process::exit(2);
    }
    let (engine, dir) = (args[0].as_str(), args[1].as_str());
    let dir = format!("{dir}/{engine}");
    if args.get(2).map(String::as_str) == Some("reopen") {
        let start = Instant::now();
        let e = open(engine, &dir);
        let found = e.read(RECORDS, &1u64.to_be_bytes());
        println!(
            "{engine}: reopened {} MB in {:.3} s (first record found: {found})",
            du(&dir) >> 20,
            start.elapsed().as_secs_f64()
        );
        return;
    }
    let num = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (messages, batch) = (num(2, 20_000), num(3, 16).max(1));
    let pattern = args.get(4).map_or("rand", String::as_str);
    let durable = args.get(5).is_none_or(|s| s != "none");
    let crash = args.get(6).is_some_and(|s| s == "crash");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create DIR");
    let start = Instant::now();
    let mut e = open(engine, &dir);
    run(e.as_mut(), messages, batch, pattern, durable);
    let us = start.elapsed().as_secs_f64() * 1e6 / messages as f64;
    println!(
        "{engine}: {messages} messages, batches of {batch}, {pattern}, {}: {us:.1} us per message, {} MB on disk",
        if durable { "durable" } else { "not durable" },
        du(&dir) >> 20,
    );
    if crash {
        // As a kill would: nothing closed, nothing flushed beyond the last commit.
        std::process::exit(0);
    }
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}
