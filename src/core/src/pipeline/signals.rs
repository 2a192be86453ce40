//! Stage: anomaly signals (see `anomaly`). A suspended credential is refused;
//! an authenticated use is recorded against its credential's addresses, a
//! refusal of a known caller against its failures; a signal is counted, goes
//! into the request's audit event, and, with `suspend` configured, suspends
//! the credential.

use crate::anomaly::{Signal, Store};
use crate::host::Host;
use crate::identity::{Caller, TokenDigest};
use crate::ratelimit::table::Churn;
use crate::worker::Worker;

/// Whether the credential of an authenticated request is suspended.
pub(super) fn suspended(worker: &Worker, credential: Option<TokenDigest>, now_ms: u64) -> bool {
    worker.settings.anomalies.any()
        && credential.is_some_and(|c| worker.watch.is_suspended(&c, now_ms))
}

/// Records an authenticated use. True when it raised a signal that suspends
/// the credential (then this request is refused too).
pub(super) fn on_use(
    worker: &Worker,
    host: Host<'_>,
    credential: Option<TokenDigest>,
    client_ip: Option<&str>,
    now_ms: u64,
    signals: &mut Vec<Signal>,
) -> bool {
    let settings = &worker.settings;
    let (Some(config), Some(credential), Some(ip)) =
        (settings.anomalies.shared_credential, credential, client_ip)
    else {
        return false;
    };
    let mut churn = Churn::default();
    let raised = worker.watch.observe_use(
        &config,
        Store {
            table: &settings.rate_limits.table,
            shared: host.shared,
        },
        &credential,
        ip,
        now_ms,
        &mut churn,
    );
    host.metrics.churn(&churn);
    raised
        && raise(
            worker,
            host,
            Signal::SharedCredential,
            config.suspend_ms,
            credential,
            now_ms,
            signals,
        )
}

/// Records a refusal of a known caller.
pub(super) fn on_refusal(
    worker: &Worker,
    host: Host<'_>,
    caller: Option<&Caller>,
    credential: Option<TokenDigest>,
    now_ms: u64,
    signals: &mut Vec<Signal>,
) {
    let settings = &worker.settings;
    let (Some(config), Some(principal)) = (
        settings.anomalies.failure_spike,
        caller.and_then(Caller::principal),
    ) else {
        return;
    };
    let mut churn = Churn::default();
    let raised = worker.watch.observe_failure(
        &config,
        Store {
            table: &settings.rate_limits.table,
            shared: host.shared,
        },
        principal,
        now_ms,
        &mut churn,
    );
    host.metrics.churn(&churn);
    if raised {
        if let Some(credential) = credential {
            raise(
                worker,
                host,
                Signal::FailureSpike,
                config.suspend_ms,
                credential,
                now_ms,
                signals,
            );
        } else {
            host.metrics.signal(Signal::FailureSpike, false);
            signals.push(Signal::FailureSpike);
        }
    }
}

/// Counts the signal and applies its action. True when the credential is now suspended.
fn raise(
    worker: &Worker,
    host: Host<'_>,
    signal: Signal,
    suspend_ms: Option<u64>,
    credential: TokenDigest,
    now_ms: u64,
    signals: &mut Vec<Signal>,
) -> bool {
    signals.push(signal);
    let suspended = match suspend_ms {
        Some(ms) => {
            worker
                .watch
                .suspend(host.shared, &credential, now_ms.saturating_add(ms), now_ms);
            true
        }
        None => false,
    };
    host.metrics.signal(signal, suspended);
    suspended
}
