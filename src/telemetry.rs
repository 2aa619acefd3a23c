//! Prometheus metrics: the names (one place), the process's recorder, and the text served
//! at `/metrics` on the admin endpoint. Label values come from configuration only (listener,
//! destination and establishment names), never from message content.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Metric names.
pub mod names {
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
            let handle = PrometheusBuilder::new().install_recorder();
            match handle {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics is unavailable");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
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

/// Records the instance certificate's expiry.
pub fn set_cert_expiry(unix_seconds: Option<i64>) {
    if let Some(t) = unix_seconds {
        metrics::gauge!(names::TLS_CERT_EXPIRY).set(t as f64);
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
