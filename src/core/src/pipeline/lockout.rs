//! Stage: brute-force lock-out. A locked-out address is answered `429` before
//! any credential is looked at; failed authentications that look like guessing
//! count towards a lock-out.

use crate::config::Settings;
use crate::decision::{render_denial, Denial, Reason};
use crate::host::Host;
use crate::ratelimit::table::Churn;

/// A `429` for a locked-out address, decided before any token is looked at.
pub(super) fn check(
    settings: &Settings,
    host: Host<'_>,
    ip: Option<&str>,
    now_ms: u64,
) -> Option<Denial> {
    let limits = &settings.rate_limits;
    let (bf, ip) = (limits.brute_force.as_ref()?, ip?);
    let left = bf.locked_for(&limits.table, host.shared, ip, now_ms)?;
    Some(render_denial(
        Reason::LockedOut,
        &settings.realm,
        None,
        left.div_ceil(1000),
    ))
}

/// Counts one failed authentication from `ip`.
pub(super) fn record_failure(settings: &Settings, host: Host<'_>, ip: Option<&str>, now_ms: u64) {
    let limits = &settings.rate_limits;
    let (Some(bf), Some(ip)) = (limits.brute_force.as_ref(), ip) else {
        return;
    };
    let mut churn = Churn::default();
    if bf.record_failure(&limits.table, host.shared, ip, now_ms, &mut churn) {
        log::info!(
            "locking out {ip} for {} s after repeated failed authentications",
            bf.lockout_ms / 1000
        );
    }
    host.metrics.churn(&churn);
}
