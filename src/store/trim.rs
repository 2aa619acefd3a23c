//! Bounding the JetStream log (D25): each node says, every [`REPORT`], how far it applied
//! the log (a key per node in the bucket `<stream>_NODES`); every [`TRIM`], the entries
//! every known node has applied are purged from the stream. A node that stopped saying so
//! holds them back for `[store] forget_node_after_hours`, then no longer does: it comes
//! back from a copy of another node's data directory (a store is the same function of the
//! log on every node), which `Log::check` tells it when it starts on a store the stream has
//! moved past.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::StoreError;
use super::log::Position;

/// How often a node says how far it applied the log.
const REPORT: Duration = Duration::from_secs(5);
/// How often a node purges what every node applied.
const TRIM: Duration = Duration::from_secs(30);

/// The nodes' positions in the log.
#[derive(Clone)]
pub(crate) struct Positions {
    kv: kv::Store,
    node: String,
}

impl Positions {
    /// Gets (or makes) the bucket of stream `stream`'s node positions: a key per node, gone
    /// `forget_after` after its last report (a changed `forget_after` applies to it).
    pub(crate) async fn open(
        js: &jetstream::Context,
        stream: &str,
        replicas: usize,
        node: &str,
        forget_after: Duration,
    ) -> Result<Positions, StoreError> {
        let kv = super::log::bucket(js, &format!("{stream}_NODES"), replicas, forget_after).await?;
        Ok(Positions {
            kv,
            node: node.to_owned(),
        })
    }

    /// Says that this node has applied the log up to `position`.
    pub(crate) async fn report(&self, position: u64) -> Result<(), StoreError> {
        self.kv
            .put(&self.node, position.to_string().into())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Log(format!("cannot report this node's position: {e}")))
    }

    /// The lowest position a known node reported; `None` when none did.
    pub(crate) async fn lowest(&self) -> Result<Option<u64>, StoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError::Log(format!("cannot read the nodes' positions: {e}"))
        };
        let mut keys = self.kv.keys().await.map_err(|e| fail(&e))?;
        let mut lowest: Option<u64> = None;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| fail(&e))?;
            let Some(value) = self.kv.get(&key).await.map_err(|e| fail(&e))? else {
                continue;
            };
            // A value this version cannot read holds everything back rather than nothing.
            let at = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            lowest = Some(lowest.map_or(at, |l| l.min(at)));
        }
        Ok(lowest)
    }
}

/// Until `stop`: reports this node's position every [`REPORT`] and, every [`TRIM`],
/// purges the log's entries that every known node has applied.
pub(crate) async fn run(
    positions: Positions,
    stream: jetstream::stream::Stream,
    position: watch::Receiver<Position>,
    mut stop: watch::Receiver<bool>,
) {
    let mut report = tokio::time::interval(REPORT);
    let mut trim = tokio::time::interval(TRIM);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first trim after a full period: every node has reported by then.
    trim.reset();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = report.tick() => {
                let at = position.borrow().committed;
                if let Err(e) = positions.report(at).await {
                    tracing::warn!(error = %e, "cannot report how far this node applied the log");
                }
            }
            _ = trim.tick() => {
                if let Err(e) = trim_once(&positions, &stream).await {
                    tracing::warn!(error = %e, "cannot trim the log");
                }
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Purges the entries every known node has applied. How many went.
pub(crate) async fn trim_once(
    positions: &Positions,
    stream: &jetstream::stream::Stream,
) -> Result<u64, StoreError> {
    let Some(lowest) = positions.lowest().await? else {
        return Ok(0);
    };
    if lowest == 0 {
        return Ok(0);
    }
    let purged = stream
        .purge()
        .sequence(lowest + 1)
        .await
        .map_err(|e| StoreError::Log(format!("cannot purge the log up to entry {lowest}: {e}")))?
        .purged;
    if purged > 0 {
        tracing::info!(
            purged,
            up_to = lowest,
            "log entries every node applied were purged"
        );
        metrics::counter!(crate::telemetry::names::LOG_PURGED).increment(purged);
    }
    Ok(purged)
}
