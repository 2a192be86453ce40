//! The core's host traits, implemented with proxy-wasm host calls, and a
//! panic-free read of the request header map.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::Status;
use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};
use tollgate_core::audit;
use tollgate_core::client_cert::{CertificateNames, ClientCertificate, ClientCertificateSource};
use tollgate_core::host::{
    AuditSink, CalloutError, Callouts, Clock, DecisionRecord, ForeignFunction,
    RateLimitFailureRecord, SharedData,
};
use tollgate_core::remote::Endpoint;

pub struct EnvoySharedData;

impl SharedData for EnvoySharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), Some(cas))) => Some((bytes, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

pub struct EnvoyForeignFunction;

impl ForeignFunction for EnvoyForeignFunction {
    fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        match hostcalls::call_foreign_function(name, Some(args)) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Ok(Vec::new()),
            Err(Status::NotFound) => Err(format!("host has no `{name}` function")),
            Err(status) => Err(format!("`{name}` failed: {status:?}")),
        }
    }
}

/// The connection's client certificate, read from Envoy's `connection.*`
/// properties on first use: a request no check needs it for costs no host
/// call, a bound token's check one (the digest), a rule on names three more.
#[derive(Debug, Default)]
pub struct ConnectionCertificate {
    certificate: OnceCell<ClientCertificate>,
    names: OnceCell<CertificateNames>,
}

/// Whether this VM has said that the host exposes no certificate properties.
static UNKNOWN_REPORTED: AtomicBool = AtomicBool::new(false);

fn connection_property(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_property(vec!["connection", name])
        .ok()
        .flatten()
}

impl ClientCertificateSource for ConnectionCertificate {
    fn client_certificate(&self) -> ClientCertificate {
        *self.certificate.get_or_init(|| {
            let cert = ClientCertificate::from_properties(connection_property);
            if cert == ClientCertificate::Unknown && !UNKNOWN_REPORTED.swap(true, Ordering::Relaxed)
            {
                log::error!(
                    "tollgate: the host does not expose the connection's client certificate \
                     (connection.sha256_peer_certificate_digest, connection.mtls): requests \
                     that need it are refused with 500 client_certificate_unavailable"
                );
            }
            cert
        })
    }

    fn names(&self) -> &CertificateNames {
        self.names
            .get_or_init(|| CertificateNames::from_properties(connection_property))
    }
}

/// The clock, read through whichever context runs the callback.
pub struct EnvoyClock<'a>(pub &'a dyn Context);

impl Clock for EnvoyClock<'_> {
    fn now(&self) -> Duration {
        self.0
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// Callouts go through the context's own `dispatch_http_call`, so that the SDK
/// routes the answer back to that context.
pub struct EnvoyCallouts<'a>(pub &'a dyn Context);

impl Callouts for EnvoyCallouts<'_> {
    fn get(&self, e: &Endpoint, etag: Option<&str>) -> Result<u32, CalloutError> {
        let mut headers = vec![
            (":method", "GET"),
            (":path", e.path.as_str()),
            (":authority", e.authority.as_str()),
            ("accept", "application/json"),
        ];
        if let Some(etag) = etag {
            headers.push(("if-none-match", etag));
        }
        self.0
            .dispatch_http_call(
                &e.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(e.timeout_ms),
            )
            .map_err(|status| match status {
                // Envoy's answer when it has no such cluster (the headers are ours
                // and well-formed).
                Status::BadArgument => CalloutError::UnknownCluster,
                other => CalloutError::Failed(format!("{other:?}")),
            })
    }
}

/// The filter-state property that holds a request's decision event; access
/// logs read it as `%FILTER_STATE(wasm.tollgate.audit:TYPED)%`.
pub const AUDIT_PROPERTY: &str = "tollgate.audit";

/// How the event is written into the property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEncoding {
    /// A `google.protobuf.Struct`, declared as such: access loggers render it as
    /// a JSON object.
    Struct,
    /// JSON text, where the host cannot declare a typed property: `:PLAIN`
    /// renders it as a JSON string.
    Json,
}

/// Declares the audit property as a `google.protobuf.Struct` through Envoy's
/// `declare_property` foreign function (once per VM, at configure).
pub fn declare_audit_property() -> EventEncoding {
    // DeclarePropertyArguments { name = 1, type = 3 (Protobuf), schema = 4,
    // span = 5 (DownstreamRequest) }, in protobuf wire format.
    const SCHEMA: &[u8] = b"type.googleapis.com/google.protobuf.Struct";
    let mut args = Vec::with_capacity(64);
    args.push(0x0a);
    args.push(AUDIT_PROPERTY.len() as u8);
    args.extend_from_slice(AUDIT_PROPERTY.as_bytes());
    args.extend_from_slice(&[0x18, 3, 0x22, SCHEMA.len() as u8]);
    args.extend_from_slice(SCHEMA);
    args.extend_from_slice(&[0x28, 1]);
    match hostcalls::call_foreign_function("declare_property", Some(&args)) {
        Ok(_) => EventEncoding::Struct,
        Err(status) => {
            log::warn!(
                "this host cannot declare typed properties ({status:?}): decision events \
                 go into filter state `wasm.{AUDIT_PROPERTY}` as JSON text (read it with `:PLAIN`)"
            );
            EventEncoding::Json
        }
    }
}

/// Each decision event goes into the request's filter state, where Envoy's
/// access loggers read it (one property, one host call). At debug level for
/// the `wasm` component, a line per decision also goes to Envoy's log; an
/// event that raised an anomaly signal always does, at warning level.
pub struct FilterStateAudit(pub EventEncoding);

impl AuditSink for FilterStateAudit {
    fn decision(&self, r: &DecisionRecord<'_>) {
        let event = match self.0 {
            EventEncoding::Struct => audit::to_struct(r),
            EventEncoding::Json => audit::to_json(r).into_bytes(),
        };
        let _ = hostcalls::set_property(vec![AUDIT_PROPERTY], Some(&event));
        if !r.signals.is_empty() {
            log::warn!("anomaly signal: {}", audit::to_json(r));
        }
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let token = r
            .fingerprint
            .map_or_else(|| "-".to_string(), |d| d.to_string());
        let rule = r.rule.unwrap_or("-");
        let request = r.request_id.unwrap_or("-");
        match r.status {
            Some(status) => log::debug!(
                "deny reason={} status={status} rule={rule} token={token} ip={} request={request}",
                r.reason.as_str(),
                r.client_ip.unwrap_or("-")
            ),
            None => log::debug!(
                "allow reason={} rule={rule} token={token} subject={:?} request={request}",
                r.reason.as_str(),
                r.caller.and_then(|c| c.subject.as_deref())
            ),
        }
    }

    fn rate_limit_failure(&self, r: &RateLimitFailureRecord<'_>) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        log::debug!(
            "rate-limit call failed reason={} policy={} failure=\"{}\" failure_mode={} ip={}",
            tollgate_core::decision::Reason::RateLimitServiceUnavailable.as_str(),
            r.policy,
            r.failure,
            if r.failure_mode_deny { "deny" } else { "allow" },
            r.client_ip.unwrap_or("-")
        );
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// `MapType::HttpRequestHeaders` in the proxy-wasm ABI.
const HTTP_REQUEST_HEADERS: u32 = 0;

/// All request headers, names lower-case as Envoy keeps them.
///
/// The SDK's own getters `unwrap()` UTF-8 decoding of names, which would
/// abort the VM on a hostile header. This reads the same ABI call and decodes
/// names lossily, so no request can make it panic.
pub fn request_headers() -> Vec<(String, Vec<u8>)> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through
    // our `proxy_on_memory_allocate` (the SDK's allocator, backed by Vec<u8>),
    // so ownership passes to us as a Vec of that exact length and capacity.
    let bytes = unsafe {
        if proxy_get_header_map_pairs(HTTP_REQUEST_HEADERS, &mut data, &mut size) != 0
            || data.is_null()
        {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    };
    parse_header_map(&bytes)
}

/// Decodes the proxy-wasm map serialisation: a u32 count, then (name length,
/// value length) u32 pairs, then each name and value NUL-terminated. Truncated
/// input yields the entries read so far.
pub fn parse_header_map(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u32_at = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(raw) as usize)
    };
    let Some(count) = u32_at(0) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count.min(256));
    let Some(mut pos) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return out;
    };
    for i in 0..count {
        let (Some(name_len), Some(value_len)) = (u32_at(4 + i * 8), u32_at(8 + i * 8)) else {
            break;
        };
        let Some(name) = pos
            .checked_add(name_len)
            .and_then(|end| bytes.get(pos..end))
        else {
            break;
        };
        pos += name_len + 1;
        let Some(value) = pos
            .checked_add(value_len)
            .and_then(|end| bytes.get(pos..end))
        else {
            break;
        };
        pos += value_len + 1;
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_header_map;

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend((n.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend(*n);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn decodes_and_survives_hostile_bytes() {
        let bytes = serialize(&[(b":path", b"/x"), (b"x-\xff", b"\xfe\x00v")]);
        let map = parse_header_map(&bytes);
        assert_eq!(map[0], (":path".to_string(), b"/x".to_vec()));
        assert_eq!(map[1].0, "x-\u{fffd}");
        assert_eq!(map[1].1, b"\xfe\x00v".to_vec());
        for cut in 0..bytes.len() {
            let _ = parse_header_map(&bytes[..cut]);
        }
        assert!(parse_header_map(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(parse_header_map(&[]).is_empty());
    }
}
