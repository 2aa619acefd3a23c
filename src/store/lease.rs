//! One active deliverer per destination across the nodes of a JetStream instance (D23).
//!
//! Every node applies every delivery outcome, so every node knows each destination's
//! queue; only the node holding the destination's **lease** sends from it. A lease is a
//! key (the destination's name) in the key-value bucket `<stream>_LEASES`, created only if
//! absent, renewed every [`RENEW`] with the revision the holder last wrote, and gone
//! [`TTL`] after its last renewal (the bucket's age limit) when its holder dies. A holder
//! that cannot renew stops its worker after the attempt in progress; a new holder first
//! applies the log as it stands (what the previous one recorded as delivered is not sent
//! again) and resumes from the head of the queue, so a correction never overtakes its
//! original. Delivery stays at-least-once: an attempt whose outcome the dead node never
//! recorded is made again, with the same MSH-10.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::watch;

use super::StoreError;

/// How long a lease outlives its holder's last renewal.
pub(crate) const TTL: Duration = Duration::from_secs(6);
/// How often a holder renews (three chances per `TTL`).
const RENEW: Duration = Duration::from_secs(2);

/// The instance's leases.
#[derive(Clone)]
pub(crate) struct Leases {
    kv: kv::Store,
    node: String,
}

impl Leases {
    /// Gets (or makes) the bucket of stream `stream`'s leases.
    pub(crate) async fn open(
        js: &jetstream::Context,
        stream: &str,
        replicas: usize,
        node: &str,
    ) -> Result<Leases, StoreError> {
        let kv = super::log::bucket(js, &format!("{stream}_LEASES"), replicas, TTL).await?;
        Ok(Leases {
            kv,
            node: node.to_owned(),
        })
    }

    /// Waits until this node holds `dest`'s lease.
    pub(crate) async fn acquire(&self, dest: &str) -> Lease {
        loop {
            match self.try_acquire(dest).await {
                Ok(Some(revision)) => {
                    metrics::gauge!(crate::telemetry::names::LEASE_HELD, "destination" => dest.to_owned()).set(1.0);
                    return Lease::held(self.clone(), dest, revision);
                }
                Ok(None) => {}
                Err(e) => {
                    metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
                    tracing::warn!(destination = dest, error = %e, "cannot take the destination's lease");
                }
            }
            tokio::time::sleep(RENEW / 2).await;
        }
    }

    /// Takes the lease if nobody holds it, or if this node's name holds it (this node
    /// restarted after a crash: the name is unique among the instance's live nodes). The
    /// revision written; `None`: another node holds it.
    async fn try_acquire(&self, dest: &str) -> Result<Option<u64>, String> {
        match self.kv.create(dest, self.node.clone().into()).await {
            Ok(revision) => return Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.to_string()),
        }
        let Some(entry) = self.kv.entry(dest).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put || entry.value != self.node.as_bytes() {
            return Ok(None);
        }
        match self
            .kv
            .update(dest, self.node.clone().into(), entry.revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            // Renewed or taken meanwhile: not ours after all.
            Err(_) => Ok(None),
        }
    }
}

/// A lease this node holds, renewed in the background until released or lost.
pub(crate) struct Lease {
    leases: Leases,
    key: String,
    revision: Arc<AtomicU64>,
    lost: watch::Receiver<bool>,
    renew: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn held(leases: Leases, key: &str, revision: u64) -> Lease {
        let revision = Arc::new(AtomicU64::new(revision));
        let (lost_tx, lost) = watch::channel(false);
        let renew = tokio::spawn({
            let (leases, key, revision) = (leases.clone(), key.to_owned(), revision.clone());
            async move {
                loop {
                    tokio::time::sleep(RENEW).await;
                    let at = revision.load(Ordering::Acquire);
                    match leases.kv.update(&key, leases.node.clone().into(), at).await {
                        Ok(next) => revision.store(next, Ordering::Release),
                        Err(e) => {
                            metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
                            tracing::warn!(destination = %key, error = %e, "lost the destination's lease: its deliveries stop here");
                            metrics::gauge!(crate::telemetry::names::LEASE_HELD, "destination" => key.clone()).set(0.0);
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                }
            }
        });
        Lease {
            leases,
            key: key.to_owned(),
            revision,
            lost,
            renew,
        }
    }

    /// Resolves when the lease is lost (not renewed in time: another node may take it).
    pub(crate) async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Gives the lease up at once (another node may take it without waiting for `TTL`),
    /// unless another holder has it by now.
    pub(crate) async fn release(self) {
        metrics::gauge!(crate::telemetry::names::LEASE_HELD, "destination" => self.key.clone())
            .set(0.0);
        self.renew.abort();
        let _ = self.renew.await;
        let at = self.revision.load(Ordering::Acquire);
        if !*self.lost.borrow() {
            let _ = self
                .leases
                .kv
                .delete_expect_revision(&self.key, Some(at))
                .await;
        }
    }
}

/// Runs `worker` while this node holds `dest`'s lease: it takes the lease, applies the log
/// up to its end (`caught_up`), runs the worker until `stop` or the lease is lost (the
/// worker is told to stop and finishes its attempt), and begins again.
pub(crate) async fn leased<W, F>(
    leases: Leases,
    dest: String,
    caught_up: impl Fn() -> F,
    mut stop: watch::Receiver<bool>,
    mut worker: impl FnMut(watch::Receiver<bool>) -> W,
) where
    W: std::future::Future<Output = ()>,
    F: std::future::Future<Output = Result<(), StoreError>>,
{
    loop {
        let mut lease = tokio::select! {
            l = leases.acquire(&dest) => l,
            _ = stopped(&mut stop) => return,
        };
        let ready = tokio::select! {
            r = caught_up() => r,
            _ = stopped(&mut stop) => {
                lease.release().await;
                return;
            }
        };
        if let Err(e) = ready {
            tracing::warn!(destination = %dest, error = %e, "cannot apply the log before delivering; the lease is given up");
            lease.release().await;
            tokio::time::sleep(RENEW).await;
            continue;
        }
        tracing::info!(destination = %dest, "this node delivers the destination");
        let (worker_stop, worker_rx) = watch::channel(false);
        let run = worker(worker_rx);
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => {}
            _ = stopped(&mut stop) => {
                let _ = worker_stop.send(true);
                run.await;
            }
            _ = lease.lost() => {
                let _ = worker_stop.send(true);
                run.await;
            }
        }
        lease.release().await;
        if *stop.borrow() {
            return;
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
