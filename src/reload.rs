//! Reloading the routes on a running instance (SIGHUP, `labroute reload`, `POST /reload`):
//! the new configuration is read and validated whole first (its file, line and field on an
//! error; its routing test cases must pass; what only a restart can change must be
//! unchanged); a refused one leaves the running one as it was. An accepted one is put in
//! force without closing a listener or an inbound connection: the writer takes it from its
//! next batch, and the destination workers are replaced (each finishes the attempt it is on
//! and records its outcome; the new ones resume from the store's outboxes, so nothing
//! queued is lost and each destination keeps its order).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::sinks::mllp::run_destination;
use crate::store::StoreHandle;

/// How long a reload waits for the destination workers' current attempts.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// How often a node stopped at routes it does not have reads its routes directory again
/// (D24): copying the routes in force there lets it go on.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The destination workers of one configuration.
pub struct Deliveries {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The configuration they were started with.
    cfg: Arc<Config>,
}

impl Deliveries {
    /// One worker per destination of `cfg`.
    pub fn start(
        cfg: &Arc<Config>,
        store: &StoreHandle,
        tls: &Option<Arc<crate::tls::TlsState>>,
    ) -> Deliveries {
        let (stop, rx) = watch::channel(false);
        let tasks = cfg
            .destinations
            .iter()
            .map(|d| {
                let (d, cfg, store) = (d.clone(), cfg.clone(), store.clone());
                let tls = tls.clone().filter(|_| d.tls);
                let stop = rx.clone();
                match store.cluster().cloned() {
                    None => tokio::spawn(run_destination(d, cfg, store, tls, stop)),
                    // Several nodes: only the holder of the destination's lease delivers.
                    Some(cluster) => tokio::spawn(async move {
                        let leases = cluster.leases.clone();
                        crate::store::lease::leased(
                            leases,
                            d.name.as_str().to_owned(),
                            || cluster.caught_up(),
                            stop,
                            |worker_stop| {
                                run_destination(
                                    d.clone(),
                                    cfg.clone(),
                                    store.clone(),
                                    tls.clone(),
                                    worker_stop,
                                )
                            },
                        )
                        .await
                    }),
                }
            })
            .collect();
        Deliveries {
            stop,
            tasks,
            cfg: cfg.clone(),
        }
    }

    /// No worker (while a reload replaces them).
    fn idle() -> Deliveries {
        Deliveries {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
            cfg: Arc::new(Config::default()),
        }
    }

    /// Stops every worker once its current attempt is recorded; returns when all have, or
    /// after [`STOP_WAIT`], aborting the ones still in an attempt (its outcome unrecorded,
    /// the message is sent again: delivery is at-least-once).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!(
                    "a destination worker still in an attempt after {STOP_WAIT:?}: stopped"
                );
                t.abort();
            }
        }
    }
}

/// What a running instance can only change by a restart: what is bound and how
/// connections are accepted. Each difference, named.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let listeners = |c: &Config| {
        let mut v: Vec<(String, std::net::SocketAddr, bool)> = c
            .listeners
            .iter()
            .map(|l| (l.name.to_string(), l.bind, l.insecure))
            .collect();
        v.sort();
        v
    };
    if listeners(old) != listeners(new) {
        out.push("[[listener]] (name, bind, insecure)".to_owned());
    }
    let tls = |c: &Config| {
        c.tls
            .as_ref()
            .map(|t| (t.ca.clone(), t.cert.clone(), t.key.clone(), t.min_version))
    };
    if tls(old) != tls(new) {
        out.push("[tls] (files and min_version; renewed certificates at the same paths reload with `labroute reload-tls`)".to_owned());
    }
    let admin = |c: &Config| {
        c.admin
            .as_ref()
            .map(|a| (a.bind, a.without_certificate.clone()))
    };
    if admin(old) != admin(new) {
        out.push("[admin]".to_owned());
    }
    if old.fhir.bind != new.fhir.bind {
        out.push("[fhir] bind".to_owned());
    }
    // The store is opened once (kind, JetStream servers, write-ahead log).
    if old.store != new.store {
        out.push("[store]".to_owned());
    }
    let engine = |c: &Config| {
        let e = &c.engine;
        (
            e.max_frame_bytes,
            e.idle_timeout,
            e.max_connections,
            e.max_connections_per_peer,
            e.frame_timeout,
            e.group_commit_max,
            e.audit_seal_every,
            e.drain,
        )
    };
    if engine(old) != engine(new) {
        out.push("[engine]".to_owned());
    }
    out
}

/// What to reload from.
pub enum Source {
    /// The routes directory the instance was started from.
    Disk,
    /// This configuration (tests, embedding).
    Config(Box<Config>),
}

type Request = (Source, oneshot::Sender<Result<String, String>>);

/// Asks the running instance to reload.
#[derive(Clone)]
pub struct Reloader {
    tx: mpsc::Sender<Request>,
}

impl Reloader {
    /// The outcome: what is now in force, or why nothing changed.
    pub async fn reload(&self, source: Source) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((source, tx))
            .await
            .map_err(|_| "the instance is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "the instance is shutting down".to_owned())?
    }
}

/// Starts the task that owns the destination workers and applies reloads, one at a time,
/// until `shutdown`; then it stops the workers.
pub fn start(
    store: StoreHandle,
    tls: Option<Arc<crate::tls::TlsState>>,
    routes: Option<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) -> (Reloader, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Request>(4);
    let task = tokio::spawn(async move {
        let mut deliveries = Deliveries::start(&store.config(), &store, &tls);
        let mut replaced = store.config_replacements();
        let mut follow = tokio::time::interval(FOLLOW_EVERY);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                r = rx.recv() => {
                    let Some((source, answer)) = r else { break };
                    let outcome = reload(&store, &tls, source, routes.as_ref(), &mut deliveries).await;
                    journal(&store, &outcome, None).await;
                    let _ = answer.send(outcome);
                }
                changed = replaced.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Routes another node put in force (D24): the workers follow them.
                    let now = store.config();
                    if !Arc::ptr_eq(&now, &deliveries.cfg) {
                        deliveries.stop().await;
                        crate::telemetry::register(&now);
                        deliveries = Deliveries::start(&now, &store, &tls);
                        tracing::info!(routes = %now.routing_digest(), "routes put in force by the cluster's log: destination workers restarted");
                    }
                }
                _ = follow.tick(), if store.cluster().is_some() => {
                    // D24: a node stopped at routes it does not have delivers nothing (its
                    // leases go to the other nodes), and its directory may have them now.
                    let Some((at, wanted)) = store.halted() else {
                        if deliveries.tasks.is_empty() {
                            let now = store.config();
                            deliveries = Deliveries::start(&now, &store, &tls);
                        }
                        continue;
                    };
                    if !deliveries.tasks.is_empty() {
                        tracing::warn!(entry = at, "stopped at routes this node does not have: its destinations are left to the other nodes");
                        std::mem::replace(&mut deliveries, Deliveries::idle()).stop().await;
                    }
                    let Some(dir) = routes.as_ref() else { continue };
                    let Ok(new) = Config::load(dir) else { continue };
                    if new.routing_digest() != wanted {
                        continue;
                    }
                    tracing::info!(entry = at, routes = %wanted, "the routes directory now has the routes in force in the cluster: reloading");
                    let outcome = reload(&store, &tls, Source::Config(Box::new(new)), routes.as_ref(), &mut deliveries).await;
                    journal(&store, &outcome, Some(at)).await;
                }
            }
        }
        deliveries.stop().await;
    });
    (Reloader { tx }, task)
}

/// Puts `source` in force: checked, then the workers stopped, the store switched, the
/// workers started again (for the new routes, or the running ones if the store refused).
async fn reload(
    store: &StoreHandle,
    tls: &Option<Arc<crate::tls::TlsState>>,
    source: Source,
    routes: Option<&PathBuf>,
    deliveries: &mut Deliveries,
) -> Result<String, String> {
    let new = match prepare(store, source, routes) {
        Ok(new) => Arc::new(new),
        Err(e) => {
            tracing::error!(error = %e, "routes not reloaded; the running ones stay in force");
            return Err(e);
        }
    };
    let old = std::mem::replace(deliveries, Deliveries::idle());
    old.stop().await;
    let switched = store.reconfigure(new.clone()).await;
    let now = store.config();
    crate::telemetry::register(&now);
    *deliveries = Deliveries::start(&now, store, tls);
    match switched {
        Ok(moved) => {
            tracing::info!(
                establishments = new.establishments.len(),
                destinations = new.destinations.len(),
                "routes reloaded"
            );
            Ok(format!(
                "routes reloaded: {} establishment(s), {} destination(s), {} system(s); {moved}",
                new.establishments.len(),
                new.destinations.len(),
                new.systems.len()
            ))
        }
        Err(e) => {
            let e = format!("routes not reloaded: the store could not switch: {e}");
            tracing::error!(error = %e, "routes not reloaded");
            Err(e)
        }
    }
}

/// Journals a reload's outcome; `following`: the log entry (D24) whose routes it read.
async fn journal(store: &StoreHandle, outcome: &Result<String, String>, following: Option<u64>) {
    let mut detail = match outcome {
        Ok(s) => serde_json::json!({ "reloaded": true, "summary": s }),
        Err(e) => serde_json::json!({ "reloaded": false, "why": e }),
    };
    if let Some(at) = following {
        detail["following_log_entry"] = serde_json::json!(at);
    }
    let event = crate::store::audit::AuditEvent {
        event: "routes_reload".into(),
        message: None,
        establishment: None,
        actor: None,
        detail,
    };
    let halted = store.halted().is_some();
    let store = store.clone();
    let journalled = async move {
        if let Err(e) = store.audit(event).await {
            tracing::error!(error = %e, "cannot journal a routes reload");
        }
    };
    // A node stopped at routes it does not have (D24) applies the entry once it goes on;
    // the answer to the reload does not wait for that.
    if halted {
        tokio::spawn(journalled);
    } else {
        journalled.await;
    }
}

/// Reads and checks the configuration to put in force.
fn prepare(
    store: &StoreHandle,
    source: Source,
    routes: Option<&PathBuf>,
) -> Result<Config, String> {
    let old = store.config();
    let new = match source {
        Source::Config(c) => *c,
        Source::Disk => {
            let dir = routes.ok_or(
                "this instance was not started from a routes directory: nothing to reload from",
            )?;
            Config::load(dir).map_err(|e| format!("routes not reloaded: {e}"))?
        }
    };
    let failures = crate::router::tests_runner::run_all(&new);
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        return Err(format!(
            "routes not reloaded: {} routing test case(s) fail: {}",
            failures.len(),
            list.join("; ")
        ));
    }
    let restart = needs_restart(&old, &new);
    if !restart.is_empty() {
        return Err(format!(
            "routes not reloaded: a restart is needed to change {}",
            restart.join(", ")
        ));
    }
    // A destination removed while messages wait for it would strand them: no worker would
    // deliver them, nothing would dead-letter them.
    let counts = store
        .store()
        .queue_counts()
        .map_err(|e| format!("routes not reloaded: {e}"))?;
    let stranded: Vec<String> = old
        .destinations
        .iter()
        .filter(|d| new.destination(&d.name).is_none())
        .filter_map(|d| {
            let waiting = counts
                .iter()
                .find(|(n, ..)| n == d.name.as_str())
                .map_or(0, |(_, q, _)| *q);
            (waiting > 0).then(|| format!("{} ({waiting} waiting)", d.name))
        })
        .collect();
    if !stranded.is_empty() {
        return Err(format!(
            "routes not reloaded: they remove destinations that messages still wait for: {}; let them deliver (or move the establishment's record in the same reload) first",
            stranded.join(", ")
        ));
    }
    Ok(new)
}
