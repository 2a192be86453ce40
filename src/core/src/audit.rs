//! The decision event: one per decided request, schema version
//! [`SCHEMA_VERSION`] (README, "Audit events"). Written two ways from one list
//! of fields: as a `google.protobuf.Struct` (what the filter leaves in Envoy's
//! filter state, which access loggers render as JSON with `TYPED`) and as a
//! JSON object (Envoy's log, tests).
//!
//! Nothing here is ever a credential: the credential is named by its
//! fingerprint, the path is cut at its query, and every string is bounded.

use crate::host::DecisionRecord;
use crate::identity::TokenDigest;

/// Bumped when a field changes meaning or goes away; new fields do not bump it.
pub const SCHEMA_VERSION: u64 = 1;

/// Longest path kept (bytes, cut at a character boundary).
const MAX_PATH: usize = 512;
/// Longest identity value or request id kept.
const MAX_VALUE: usize = 256;

/// Receives the event's fields in order.
trait Fields {
    fn string(&mut self, name: &str, value: &str);
    fn number(&mut self, name: &str, value: u64);
    fn strings(&mut self, name: &str, values: &[&str]);
}

/// The event's fields, once for every encoding.
fn visit(r: &DecisionRecord<'_>, out: &mut impl Fields) {
    out.number("v", SCHEMA_VERSION);
    let time = Rfc3339::of(r.time_us);
    out.string("time", time.as_str());
    out.string(
        "decision",
        if r.reason.is_allow() { "allow" } else { "deny" },
    );
    out.string("reason", r.reason.as_str());
    if let Some(status) = r.status {
        out.number("status", u64::from(status));
    }
    let mut optional = |name: &str, value: Option<&str>, max: usize| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.string(name, bounded(v, max));
        }
    };
    optional("request_id", r.request_id, MAX_VALUE);
    optional("rule", r.rule, MAX_VALUE);
    optional("method", Some(r.method), MAX_VALUE);
    optional("path", Some(r.path), MAX_PATH);
    optional("client_ip", r.client_ip, MAX_VALUE);
    if let Some(c) = r.caller {
        optional("provider", Some(&c.provider), MAX_VALUE);
        optional("api_key_id", c.api_key_id.as_deref(), MAX_VALUE);
        optional("subject", c.subject.as_deref(), MAX_VALUE);
        optional("client_id", c.client_id.as_deref(), MAX_VALUE);
        optional("consumer", c.consumer.as_deref(), MAX_VALUE);
        optional("tenant", c.tenant.as_deref(), MAX_VALUE);
        optional("jti", c.jti.as_deref(), MAX_VALUE);
    }
    optional("policy", r.policy, MAX_VALUE);
    if let Some(digest) = r.fingerprint {
        let hex = fingerprint(&digest);
        out.string("credential", std::str::from_utf8(&hex).unwrap_or_default());
    }
    if !r.signals.is_empty() {
        let names: Vec<&str> = r.signals.iter().map(|s| s.as_str()).collect();
        out.strings("signals", &names);
    }
    out.number("decision_us", r.latency_us);
}

/// The event as a JSON object.
pub fn to_json(r: &DecisionRecord<'_>) -> String {
    let mut out = Json(String::with_capacity(512));
    out.0.push('{');
    visit(r, &mut out);
    out.0.push('}');
    out.0
}

/// The event as a serialized `google.protobuf.Struct`.
pub fn to_struct(r: &DecisionRecord<'_>) -> Vec<u8> {
    let mut out = Proto(Vec::with_capacity(512));
    visit(r, &mut out);
    out.0
}

fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

struct Json(String);

impl Json {
    fn key(&mut self, name: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.quoted(name);
        self.0.push(':');
    }

    fn quoted(&mut self, s: &str) {
        self.0.push('"');
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    self.0.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }
}

impl Fields for Json {
    fn string(&mut self, name: &str, value: &str) {
        self.key(name);
        self.quoted(value);
    }

    fn number(&mut self, name: &str, value: u64) {
        self.key(name);
        self.0.push_str(&value.to_string());
    }

    fn strings(&mut self, name: &str, values: &[&str]) {
        self.key(name);
        self.0.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.quoted(v);
        }
        self.0.push(']');
    }
}

/// `google.protobuf.Struct` in protobuf wire format: `fields` (1) is a map of
/// entries `{key (1): string, value (2): Value}`; a `Value` here is
/// `number_value` (2, double), `string_value` (3) or `list_value` (6, a
/// `ListValue` of `values` (1)).
struct Proto(Vec<u8>);

const LEN: u8 = 2;
const I64: u8 = 1;

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Bytes of a length-delimited field holding `len` bytes.
fn field_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

impl Proto {
    fn varint(&mut self, mut v: usize) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn tag(&mut self, field: u8, wire: u8) {
        self.0.push((field << 3) | wire);
    }

    fn bytes(&mut self, field: u8, b: &[u8]) {
        self.tag(field, LEN);
        self.varint(b.len());
        self.0.extend_from_slice(b);
    }

    /// A map entry whose `Value` body (`value_len` bytes) the caller writes next.
    fn entry(&mut self, name: &str, value_len: usize) {
        self.tag(1, LEN);
        self.varint(field_len(name.len()) + field_len(value_len));
        self.bytes(1, name.as_bytes());
        self.tag(2, LEN);
        self.varint(value_len);
    }
}

impl Fields for Proto {
    fn string(&mut self, name: &str, value: &str) {
        self.entry(name, field_len(value.len()));
        self.bytes(3, value.as_bytes());
    }

    fn number(&mut self, name: &str, value: u64) {
        self.entry(name, 9);
        self.tag(2, I64);
        self.0.extend_from_slice(&(value as f64).to_le_bytes());
    }

    fn strings(&mut self, name: &str, values: &[&str]) {
        let list: usize = values.iter().map(|v| field_len(field_len(v.len()))).sum();
        self.entry(name, field_len(list));
        self.tag(6, LEN);
        self.varint(list);
        for v in values {
            self.tag(1, LEN);
            self.varint(field_len(v.len()));
            self.bytes(3, v.as_bytes());
        }
    }
}

/// The credential's fingerprint as `TokenDigest`'s `Display` writes it (16 hex
/// digits), without a `String`.
fn fingerprint(digest: &TokenDigest) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; 16];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest.0.iter()) {
        if let [hi, lo] = pair {
            *hi = HEX.get(usize::from(byte >> 4)).copied().unwrap_or(b'0');
            *lo = HEX.get(usize::from(byte & 0xf)).copied().unwrap_or(b'0');
        }
    }
    out
}

/// `2026-11-29T18:27:37.069Z`, on the stack.
struct Rfc3339([u8; 24]);

impl Rfc3339 {
    /// For microseconds since the Unix epoch (years 0 to 9999).
    fn of(time_us: u64) -> Rfc3339 {
        let secs = time_us / 1_000_000;
        let millis = (time_us / 1_000) % 1_000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                if let Some(b) = out.get_mut(i) {
                    *b = b'0' + (v % 10) as u8;
                }
                v /= 10;
            }
        };
        put(0, 4, y.clamp(0, 9_999) as u64);
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, rem / 3_600);
        put(14, 2, rem % 3_600 / 60);
        put(17, 2, rem % 60);
        put(20, 3, millis);
        Rfc3339(out)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// `2026-11-29T18:27:37.069Z` for microseconds since the Unix epoch.
pub fn rfc3339_millis(time_us: u64) -> String {
    Rfc3339::of(time_us).as_str().to_string()
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::Signal;
    use crate::decision::Reason;
    use crate::identity::Caller;
    use serde_json::{json, Value};

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_709_208_000_123_456),
            "2024-02-29T12:00:00.123Z"
        );
        assert_eq!(
            rfc3339_millis(4_102_444_799_999_000),
            "2099-12-31T23:59:59.999Z"
        );
        for d in ["a", "b", "secret-token"] {
            let digest = TokenDigest::of(d);
            assert_eq!(fingerprint(&digest), digest.to_string().as_bytes());
        }
    }

    fn caller() -> Caller {
        Caller {
            provider: "corp".into(),
            subject: Some("alice".into()),
            client_id: Some("mobile-app".into()),
            tenant: Some("acme".into()),
            jti: Some("j-1".into()),
            ..Caller::default()
        }
    }

    fn record<'a>(caller: &'a Caller, signals: &'a [Signal]) -> DecisionRecord<'a> {
        DecisionRecord {
            time_us: 1_800_000_000_000_000,
            latency_us: 42,
            reason: Reason::InsufficientScope,
            status: Some(403),
            rule: Some("write-data"),
            method: "POST",
            path: "/data",
            request_id: Some("7f0c\"x"),
            client_ip: Some("192.0.2.1"),
            caller: Some(caller),
            fingerprint: Some(TokenDigest::of("secret-token")),
            policy: None,
            signals,
        }
    }

    /// Decodes a `google.protobuf.Struct` of the shapes `to_struct` writes.
    fn decode_struct(mut b: &[u8]) -> Value {
        fn varint(b: &mut &[u8]) -> usize {
            let (mut v, mut shift) = (0usize, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= ((byte & 0x7f) as usize) << shift;
                shift += 7;
                if byte < 0x80 {
                    return v;
                }
            }
        }
        fn field<'a>(b: &mut &'a [u8]) -> (u8, &'a [u8]) {
            let tag = b[0];
            *b = &b[1..];
            if tag & 7 == I64 {
                let (v, rest) = b.split_at(8);
                *b = rest;
                return (tag >> 3, v);
            }
            assert_eq!(tag & 7, LEN);
            let n = varint(b);
            let (v, rest) = b.split_at(n);
            *b = rest;
            (tag >> 3, v)
        }
        fn value(mut b: &[u8]) -> Value {
            let (f, v) = field(&mut b);
            assert!(b.is_empty());
            match f {
                2 => json!(f64::from_le_bytes(v.try_into().unwrap()) as u64),
                3 => json!(std::str::from_utf8(v).unwrap()),
                6 => {
                    let mut list = v;
                    let mut out = Vec::new();
                    while !list.is_empty() {
                        let (one, inner) = field(&mut list);
                        assert_eq!(one, 1);
                        out.push(value(inner));
                    }
                    Value::Array(out)
                }
                other => panic!("unexpected Value field {other}"),
            }
        }
        let mut map = serde_json::Map::new();
        while !b.is_empty() {
            let (one, mut entry) = field(&mut b);
            assert_eq!(one, 1);
            let (k, key) = field(&mut entry);
            let (v, val) = field(&mut entry);
            assert_eq!((k, v), (1, 2));
            map.insert(std::str::from_utf8(key).unwrap().into(), value(val));
        }
        Value::Object(map)
    }

    #[test]
    fn both_encodings_carry_the_same_documented_fields() {
        let c = caller();
        let signals = [Signal::FailureSpike];
        let r = record(&c, &signals);
        let json: Value = serde_json::from_str(&to_json(&r)).unwrap();
        assert_eq!(
            json,
            json!({
                "v": 1, "time": "2027-01-15T08:00:00.000Z", "decision": "deny",
                "reason": "insufficient_scope", "status": 403, "request_id": "7f0c\"x",
                "rule": "write-data", "method": "POST", "path": "/data",
                "client_ip": "192.0.2.1", "provider": "corp", "subject": "alice",
                "client_id": "mobile-app", "tenant": "acme", "jti": "j-1",
                "credential": TokenDigest::of("secret-token").to_string(),
                "signals": ["failure_spike"], "decision_us": 42
            })
        );
        assert_eq!(decode_struct(&to_struct(&r)), json);
    }

    #[test]
    fn values_are_bounded_and_escaped() {
        let c = Caller {
            provider: "p".into(),
            subject: Some("é".repeat(300)),
            ..Caller::default()
        };
        let long_path = format!("/{}", "a".repeat(2_000));
        let mut r = record(&c, &[]);
        r.path = &long_path;
        r.request_id = Some("line\nbreak\u{0}");
        let text = to_json(&r);
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["path"].as_str().unwrap().len(), MAX_PATH);
        assert!(json["subject"].as_str().unwrap().len() <= MAX_VALUE);
        assert_eq!(json["request_id"], "line\nbreak\u{0}");
        assert!(!text.contains('\n'));
        assert_eq!(decode_struct(&to_struct(&r)), json);
    }
}
