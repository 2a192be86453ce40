//! `audit` (what the decision events carry and how often allows are kept) and
//! `anomalies` (the heuristic signals and their optional action).

use super::fields::parse_duration_ms;
use super::rate_limits::{MAX_LIMIT, MAX_WINDOW_MS};
use super::{err, ConfigError};
use crate::anomaly::{Anomalies, FailureSpike, SharedCredential};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default)]
    pub(super) allow_sample_rate: Option<f64>,
}

/// What goes into decision events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Audit {
    /// Share of allowed requests that get an event (denials always do), 0 to 1.
    pub allow_sample_rate: f64,
}

pub(super) fn compile_audit(raw: RawAudit) -> Result<Audit, ConfigError> {
    let rate = raw.allow_sample_rate.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&rate) {
        return Err(err(
            "audit.allow_sample_rate",
            "must be between 0 (no allowed request) and 1 (every one)",
        ));
    }
    Ok(Audit {
        allow_sample_rate: rate,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnomalies {
    #[serde(default)]
    shared_credential: Option<RawSharedCredential>,
    #[serde(default)]
    failure_spike: Option<RawFailureSpike>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSharedCredential {
    max_addresses: u64,
    window: String,
    #[serde(default)]
    suspend: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailureSpike {
    max_failures: u64,
    window: String,
    #[serde(default)]
    suspend: Option<String>,
}

fn window(field: String, raw: &str) -> Result<u64, ConfigError> {
    let ms = parse_duration_ms(raw).map_err(|m| err(&field, m))?;
    if ms == 0 || ms > MAX_WINDOW_MS {
        return Err(err(field, "must be more than 0s and at most 366 days"));
    }
    Ok(ms)
}

fn count(field: String, n: u64) -> Result<u64, ConfigError> {
    if n == 0 || n > MAX_LIMIT {
        return Err(err(field, format!("must be between 1 and {MAX_LIMIT}")));
    }
    Ok(n)
}

fn suspend(field: String, raw: &Option<String>) -> Result<Option<u64>, ConfigError> {
    raw.as_deref().map(|s| window(field, s)).transpose()
}

pub(super) fn compile_anomalies(raw: RawAnomalies) -> Result<Anomalies, ConfigError> {
    let shared_credential = match raw.shared_credential {
        None => None,
        Some(r) => {
            let at = |f: &str| format!("anomalies.shared_credential.{f}");
            Some(SharedCredential {
                max_addresses: count(at("max_addresses"), r.max_addresses)?,
                window_ms: window(at("window"), &r.window)?,
                suspend_ms: suspend(at("suspend"), &r.suspend)?,
            })
        }
    };
    let failure_spike = match raw.failure_spike {
        None => None,
        Some(r) => {
            let at = |f: &str| format!("anomalies.failure_spike.{f}");
            Some(FailureSpike {
                max_failures: count(at("max_failures"), r.max_failures)?,
                window_ms: window(at("window"), &r.window)?,
                suspend_ms: suspend(at("suspend"), &r.suspend)?,
            })
        }
    };
    Ok(Anomalies {
        shared_credential,
        failure_spike,
    })
}
