//! The store writer's pattern on two embedded engines: per message, ten inserts of 100 B
//! into ten tables (the writer inserts into about ten), keys random (deduplication key,
//! order numbers, the results index by patient) or sequential (records, queues, journal);
//! batches of B messages, each batch one transaction, made durable (fdatasync) or not.
//!
//!   cargo run --release -- ENGINE DIR [MESSAGES] [BATCH] [rand|seq] [durable|none]
//!
//! ENGINE: redb (labroute's store) or fjall (an LSM tree). Prints microseconds per message.

use std::time::Instant;

const TABLES: usize = 10;
const VALUE: [u8; 100] = [7; 100];

struct Keys {
    random: bool,
    state: u64,
}

impl Keys {
    fn next(&mut self) -> u64 {
        if self.random {
            // xorshift64: the same sequence for every engine.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
        } else {
            self.state += 1;
        }
        self.state
    }
}

fn redb(dir: &str, messages: u64, batch: u64, keys: &mut Keys, durable: bool) {
    use redb::{Database, Durability, TableDefinition};
    let names: Vec<String> = (0..TABLES).map(|i| format!("t{i}")).collect();
    let defs: Vec<TableDefinition<u64, &[u8]>> =
        names.iter().map(|n| TableDefinition::new(n)).collect();
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .create(format!("{dir}/store.redb"))
        .expect("create the redb file");
    let mut done = 0;
    while done < messages {
        let mut txn = db.begin_write().expect("begin");
        if !durable {
            txn.set_durability(Durability::None).expect("durability");
        }
        {
            let mut tables: Vec<_> = defs
                .iter()
                .map(|d| txn.open_table(*d).expect("open"))
                .collect();
            for _ in 0..batch.min(messages - done) {
                for t in tables.iter_mut() {
                    t.insert(keys.next(), VALUE.as_slice()).expect("insert");
                }
                done += 1;
            }
        }
        txn.commit().expect("commit");
    }
}

fn fjall(dir: &str, messages: u64, batch: u64, keys: &mut Keys, durable: bool) {
    use fjall::{Config, PartitionCreateOptions, PersistMode};
    let ks = Config::new(format!("{dir}/fjall")).open().expect("open");
    let parts: Vec<_> = (0..TABLES)
        .map(|i| {
            ks.open_partition(&format!("t{i}"), PartitionCreateOptions::default())
                .expect("partition")
        })
        .collect();
    let mut done = 0;
    while done < messages {
        let mut b = ks.batch();
        for _ in 0..batch.min(messages - done) {
            for p in &parts {
                b.insert(p, keys.next().to_be_bytes(), VALUE.as_slice());
            }
            done += 1;
        }
        b.commit().expect("commit");
        if durable {
            ks.persist(PersistMode::SyncData).expect("fdatasync");
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args[0].starts_with('-') {
        eprintln!("usage: ENGINE(redb|fjall) DIR [MESSAGES=20000] [BATCH=16] [rand|seq] [durable|none]");
        std::process::exit(2);
    }
    let (engine, dir) = (args[0].as_str(), args[1].as_str());
    let num = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (messages, batch) = (num(2, 20_000), num(3, 16).max(1));
    let random = args.get(4).is_none_or(|s| s != "seq");
    let durable = args.get(5).is_none_or(|s| s != "none");
    let dir = format!("{dir}/{engine}");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create DIR");
    let mut keys = Keys { random, state: 0x1234567 };
    let start = Instant::now();
    match engine {
        "redb" => redb(&dir, messages, batch, &mut keys, durable),
        "fjall" => fjall(&dir, messages, batch, &mut keys, durable),
        other => {
            eprintln!("unknown engine {other}: redb or fjall");
            std::process::exit(2);
        }
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / messages as f64;
    println!(
        "{engine}: {messages} messages, batches of {batch}, {} keys, {}: {us:.1} us per message ({TABLES} inserts)",
        if random { "random" } else { "sequential" },
        if durable { "durable" } else { "not durable" },
    );
    let _ = std::fs::remove_dir_all(&dir);
}
