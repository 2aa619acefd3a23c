//! Prometheus metrics: the names (one place), the process's recorder, and the text served
//! at `/metrics` on the admin endpoint. Label values come from configuration only (listener,
//! destination and establishment names), never from message content.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Metric names. Labels: `listener`, `destination`, `establishment` (configured names, or
/// `none`), `type` (an accepted message type, `model::MessageClass::of`, else `other`), and
/// fixed words (`outcome`, `reason`).
pub mod names {
    /// Messages received, by `listener`, `establishment`, `type` and `outcome`
    /// (`accepted`, `quarantined`, `duplicate`, `rejected`, `store_failed`, `oversized`).
    pub const MESSAGES: &str = "labroute_messages_total";
    /// Messages refused (answered AR/CR and kept for review), by `listener` and `reason`:
    /// `cross_tenant` (the sender may not speak for the owner), `unknown_system`, `role`
    /// (identity), or the message's fault (`unreadable`, `unsupported_type`,
    /// `missing_field`, `invalid_value`).
    pub const REFUSALS: &str = "labroute_refusals_total";
    /// Deliveries the delivery policy refused (the message may not go to that destination
    /// under the routes in force: dead-lettered with the reason), by `destination`.
    pub const POLICY_REFUSALS: &str = "labroute_policy_refusals_total";
    /// Seconds from a whole frame received to its ACK written, by `listener`.
    pub const ACK_LATENCY: &str = "labroute_ack_latency_seconds";
    /// Delivery attempts, by `destination` and `outcome` (`delivered`, `retry`, `dead`,
    /// `withheld`).
    pub const DELIVERY_ATTEMPTS: &str = "labroute_delivery_attempts_total";
    /// Seconds from queued (received, or released from quarantine) to delivered, by
    /// `destination`.
    pub const DELIVERY_LATENCY: &str = "labroute_delivery_latency_seconds";
    /// Messages waiting for a destination, by `destination`.
    pub const QUEUE_DEPTH: &str = "labroute_queue_depth";
    /// Age of the oldest message waiting for a destination (0 when none), by `destination`.
    pub const QUEUE_OLDEST_AGE: &str = "labroute_queue_oldest_age_seconds";
    /// Dead letters held, by `destination`.
    pub const DEAD_LETTERS: &str = "labroute_dead_letters_held";
    /// Messages held in quarantine.
    pub const QUARANTINE: &str = "labroute_quarantine_size";
    /// TLS handshakes refused, by `listener` and `reason` (`no_certificate`,
    /// `unknown_ca`, `expired`, `bad_certificate`, `protocol_version`, `not_tls`,
    /// `timeout`, `other`).
    pub const TLS_HANDSHAKE_FAILURES: &str = "labroute_tls_handshake_failures_total";
    /// Seconds to commit one batch of the store (write and sync).
    pub const STORE_COMMIT: &str = "labroute_store_commit_seconds";
    /// Seconds redb's commit of one batch takes (the pages written and synced), a part of
    /// [`STORE_COMMIT`], which also holds the batch's own work: a slow disk shows here.
    pub const STORE_SYNC: &str = "labroute_store_sync_seconds";
    /// Requests committed together (group commit), per batch.
    pub const STORE_BATCH: &str = "labroute_store_batch_size";
    /// Seconds to apply the pending index writes behind the ACK path (D22), per application.
    pub const STORE_INDEX: &str = "labroute_store_index_seconds";
    /// Messages whose index writes one application applied.
    pub const STORE_INDEX_BATCH: &str = "labroute_store_index_batch_size";
    /// Seconds to append and sync one batch to the write-ahead log (D28).
    pub const WAL_SYNC: &str = "labroute_store_wal_sync_seconds";
    /// Store batches that failed (each request answered with an error).
    pub const STORE_ERRORS: &str = "labroute_store_errors_total";
    /// JetStream store (D23): the last log entry this node's store applied.
    pub const LOG_APPLIED: &str = "labroute_log_applied_position";
    /// JetStream store: entries in the log this node has not read yet (its lag).
    pub const LOG_PENDING: &str = "labroute_log_pending_entries";
    /// JetStream store: 1 while this node's writer is stopped at a log entry putting in force
    /// routes it does not have (D24): reload it with the routes in force in the cluster.
    pub const LOG_HALTED: &str = "labroute_log_halted";
    /// JetStream store: log entries purged because every known node had applied them (D25).
    pub const LOG_PURGED: &str = "labroute_log_purged_entries_total";
    /// JetStream store: 1 while this node holds the `destination`'s lease (delivers it).
    pub const LEASE_HELD: &str = "labroute_destination_lease_held";
    /// Expiry of the instance's TLS certificate (Unix seconds), as last (re)loaded.
    pub const TLS_CERT_EXPIRY: &str = "labroute_tls_certificate_expiry_timestamp_seconds";
    /// Results the DMP gate withheld, by `reason` (`not_enabled`, `destdmp_no`,
    /// `identity_not_qualified`, `opposition`, `dmp_closed`).
    pub const DMP_WITHHELD: &str = "labroute_dmp_withheld_total";
    /// Searches on the results server, by `outcome` (`served`: at least one establishment
    /// answered; `nothing_served`: none did, whatever the reason).
    pub const RESULTS_SEARCHES: &str = "labroute_results_searches_total";
    /// Establishments (or unknown patients) a results search was refused, by `reason`
    /// (`unknown_patient`, `unknown_establishment`, `no_external_access`, `not_in_care`, `patient_opposed`).
    pub const RESULTS_DENIED: &str = "labroute_results_access_denied_total";
    /// Results mailed to nobody by MSSanté, by `reason` (`not_enabled`,
    /// `no_recipient`, `no_authorised_recipient`).
    pub const MSSANTE_WITHHELD: &str = "labroute_mssante_withheld_total";
    /// MSSanté candidate recipients, by `outcome` (`sent`, or a refusal:
    /// `domain_not_whitelisted`, `not_in_directory`, `not_in_care`, `patient_opposed`,
    /// `masked_from_professionals`, …).
    pub const MSSANTE_RECIPIENTS: &str = "labroute_mssante_recipients_total";
    /// Prefix of the process counters (`stats::STATS`), exported as `<prefix><name>_total`.
    pub const STATS_PREFIX: &str = "labroute_";
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle). `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = buckets(PrometheusBuilder::new()).and_then(|b| {
                b.install_recorder()
                    .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
            });
            match handle {
                Ok(h) => {
                    describe();
                    upkeep(h.clone());
                    Some(h)
                }
                Err(()) => {
                    tracing::warn!("/metrics is unavailable");
                    None
                }
            }
        })
        .as_ref()
}

/// How often the histograms' samples are folded into their buckets without a scrape.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps each histogram sample until it is folded into its buckets, which a
/// scrape does; `install_recorder` starts nothing that does it otherwise. Without this, an
/// instance nobody scrapes (or scrapes rarely) grows by every sample it records: measured
/// as the RSS growth of a 10-minute run (BENCHMARKS.md).
fn upkeep(h: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("labroute-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                h.run_upkeep();
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no metrics upkeep thread: histograms grow until /metrics is scraped");
    }
}

/// Latency buckets (seconds): 100 µs to 60 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Delivery latency buckets (seconds): 1 ms to 1 day (a stalled destination).
const DELIVERY_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    21600.0, 86400.0,
];
/// Batch size buckets.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Real histograms (`_bucket`), not the exporter's default summaries.
fn buckets(b: PrometheusBuilder) -> Result<PrometheusBuilder, ()> {
    use metrics_exporter_prometheus::Matcher;
    let set = |b: PrometheusBuilder, name: &str, buckets: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .map_err(|e| tracing::warn!(error = %e, metric = name, "histogram buckets refused"))
    };
    let b = set(b, names::ACK_LATENCY, SECONDS)?;
    let b = set(b, names::STORE_COMMIT, SECONDS)?;
    let b = set(b, names::STORE_SYNC, SECONDS)?;
    let b = set(b, names::STORE_INDEX, SECONDS)?;
    let b = set(b, names::WAL_SYNC, SECONDS)?;
    let b = set(b, names::STORE_INDEX_BATCH, BATCH)?;
    let b = set(b, names::DELIVERY_LATENCY, DELIVERY_SECONDS)?;
    set(b, names::STORE_BATCH, BATCH)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::MESSAGES,
        "Messages received, by listener, establishment, type and outcome"
    );
    describe_counter!(
        names::REFUSALS,
        "Messages refused (AR/CR, kept for review), by listener and reason"
    );
    describe_counter!(
        names::POLICY_REFUSALS,
        "Deliveries the delivery policy refused (dead-lettered with the reason), by destination"
    );
    describe_histogram!(
        names::ACK_LATENCY,
        Unit::Seconds,
        "From a whole frame received to its ACK written, by listener"
    );
    describe_counter!(
        names::DELIVERY_ATTEMPTS,
        "Delivery attempts, by destination and outcome"
    );
    describe_histogram!(
        names::DELIVERY_LATENCY,
        Unit::Seconds,
        "From queued to delivered, by destination"
    );
    describe_gauge!(names::QUEUE_DEPTH, "Messages waiting for a destination");
    describe_gauge!(
        names::QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest message waiting for a destination (0 when none)"
    );
    describe_gauge!(names::DEAD_LETTERS, "Dead letters held, by destination");
    describe_gauge!(names::QUARANTINE, "Messages held in quarantine");
    describe_counter!(
        names::TLS_HANDSHAKE_FAILURES,
        "TLS handshakes refused, by listener and reason"
    );
    describe_histogram!(
        names::STORE_COMMIT,
        Unit::Seconds,
        "Time to commit one batch of the store (write and sync)"
    );
    describe_histogram!(
        names::STORE_SYNC,
        Unit::Seconds,
        "Time redb takes to write and sync one batch's pages, a part of the batch's commit time"
    );
    describe_histogram!(
        names::WAL_SYNC,
        Unit::Seconds,
        "Time to append and sync one batch to the write-ahead log"
    );
    describe_histogram!(
        names::STORE_BATCH,
        "Requests committed together, per batch (group commit)"
    );
    describe_histogram!(
        names::STORE_INDEX,
        Unit::Seconds,
        "Time to apply the results indexes' pending writes behind the ACK path, per application"
    );
    describe_histogram!(
        names::STORE_INDEX_BATCH,
        "Messages whose index writes one application applied"
    );
    describe_counter!(
        names::STORE_ERRORS,
        "Store batches that failed (every request in them answered with an error)"
    );
    metrics::describe_gauge!(
        names::TLS_CERT_EXPIRY,
        metrics::Unit::Seconds,
        "Expiry of the instance's TLS certificate (Unix time), as last loaded"
    );
    metrics::describe_counter!(
        names::DMP_WITHHELD,
        "Results the DMP gate withheld (not sent, journalled), by reason"
    );
    metrics::describe_counter!(
        names::RESULTS_SEARCHES,
        "Searches on the results server, by outcome (served, nothing_served)"
    );
    metrics::describe_counter!(
        names::RESULTS_DENIED,
        "Results searches refused for a patient or establishment (answered as if nothing existed, journalled), by reason"
    );
    metrics::describe_counter!(
        names::MSSANTE_WITHHELD,
        "Results mailed to nobody by MSSanté (journalled), by reason"
    );
    metrics::describe_counter!(
        names::MSSANTE_RECIPIENTS,
        "MSSanté candidate recipients, by outcome (sent, or the refusal's reason; journalled)"
    );
    for (name, help) in crate::stats::DESCRIPTIONS {
        metrics::describe_counter!(format!("{}{name}_total", names::STATS_PREFIX), *help);
    }
}

/// Refusal reasons (`REFUSALS`): of the sender, then of the message.
pub const REFUSAL_REASONS: [&str; 8] = [
    "cross_tenant",
    "unknown_system",
    "role",
    "missing_field",
    "invalid_value",
    "unsupported_type",
    "unreadable",
    "oversized",
];
/// Reasons of refused TLS handshakes (`TLS_HANDSHAKE_FAILURES`).
pub const TLS_REASONS: [&str; 8] = [
    "no_certificate",
    "unknown_ca",
    "expired",
    "bad_certificate",
    "protocol_version",
    "not_tls",
    "timeout",
    "other",
];
/// Outcomes of a delivery attempt (`DELIVERY_ATTEMPTS`).
pub const DELIVERY_OUTCOMES: [&str; 4] = ["delivered", "retry", "dead", "withheld"];

/// Creates, at zero, the counters whose labels the configuration fixes, so that an alert
/// on `increase(…)` sees the first event and a dashboard shows zero rather than nothing.
pub fn register(cfg: &crate::config::Config) {
    let mut listeners: Vec<String> = cfg.listeners.iter().map(|l| l.name.to_string()).collect();
    let mut tls: Vec<String> = cfg
        .listeners
        .iter()
        .filter(|l| !l.insecure)
        .map(|l| l.name.to_string())
        .collect();
    if cfg.fhir.bind.is_some() {
        listeners.push(crate::sources::fhir::LISTENER.into());
        tls.push(crate::sources::fhir::LISTENER.into());
    }
    if cfg.admin.is_some() {
        tls.push(crate::admin::http::LISTENER.into());
    }
    for l in &listeners {
        for r in REFUSAL_REASONS {
            metrics::counter!(names::REFUSALS, "listener" => l.clone(), "reason" => r).increment(0);
        }
    }
    for l in &tls {
        for r in TLS_REASONS {
            metrics::counter!(names::TLS_HANDSHAKE_FAILURES, "listener" => l.clone(), "reason" => r)
                .increment(0);
        }
    }
    for d in &cfg.destinations {
        for o in DELIVERY_OUTCOMES {
            metrics::counter!(names::DELIVERY_ATTEMPTS, "destination" => d.name.to_string(), "outcome" => o)
                .increment(0);
        }
        metrics::counter!(names::POLICY_REFUSALS, "destination" => d.name.to_string()).increment(0);
    }
    metrics::counter!(names::STORE_ERRORS).increment(0);
}

/// Records the instance certificate's expiry.
pub fn set_cert_expiry(unix_seconds: Option<i64>) {
    if let Some(t) = unix_seconds {
        metrics::gauge!(names::TLS_CERT_EXPIRY).set(t as f64);
    }
}

/// Sets the gauges read from the store at scrape time: each destination's oldest waiting
/// message (one key read per destination), its queue depth and dead letters (counts the
/// writer keeps in `META` with every change, `Store::queue_counts`), and the quarantine's
/// size.
pub fn refresh(store: &crate::store::Store, cfg: &crate::config::Config) {
    let now = crate::time::now_ms();
    let counts = match store.queue_counts() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue counts for /metrics");
            Vec::new()
        }
    };
    // The configured destinations, and any a reload removed that the store still counts
    // (its dead letters): no gauge is left at a stale value.
    let mut destinations: Vec<String> = cfg
        .destinations
        .iter()
        .map(|d| d.name.to_string())
        .collect();
    for (n, ..) in &counts {
        if !destinations.contains(n) {
            destinations.push(n.clone());
        }
    }
    for name in &destinations {
        match store.oldest_enqueued(name) {
            Ok(oldest) => {
                let age = oldest.map_or(0, |t| now.saturating_sub(t));
                metrics::gauge!(names::QUEUE_OLDEST_AGE, "destination" => name.clone())
                    .set(age as f64 / 1000.0);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read a queue for /metrics"),
        }
        let (depth, dead) = counts
            .iter()
            .find(|(n, ..)| n == name)
            .map_or((0, 0), |(_, q, x)| (*q, *x));
        metrics::gauge!(names::QUEUE_DEPTH, "destination" => name.clone()).set(depth as f64);
        metrics::gauge!(names::DEAD_LETTERS, "destination" => name.clone()).set(dead as f64);
    }
    match store.counts() {
        Ok(c) => metrics::gauge!(names::QUARANTINE).set(c.quarantine as f64),
        Err(e) => tracing::warn!(error = %e, "cannot read the quarantine for /metrics"),
    }
}

/// The label of a message type: one this engine takes (`MSH-9.1^MSH-9.2`), else `other`
/// (a label never carries what a sender made up).
pub fn type_label(message_type: &str, trigger: &str) -> String {
    match crate::model::MessageClass::of(message_type, trigger) {
        Ok(_) => format!("{message_type}^{trigger}"),
        Err(_) => "other".to_owned(),
    }
}

/// The exposition text, or `None` when no recorder of ours is installed.
pub fn render() -> Option<String> {
    let handle = install()?;
    for (name, value) in crate::stats::STATS.snapshot().pairs() {
        metrics::counter!(format!("{}{name}_total", names::STATS_PREFIX)).absolute(value);
    }
    Some(handle.render())
}
