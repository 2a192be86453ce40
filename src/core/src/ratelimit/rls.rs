//! Envoy's rate-limit service protocol (RLS v3,
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`): the request
//! Tollgate sends and the answer it reads, hand-encoded protobuf.
//!
//! Only a handful of fields are used, so a protobuf crate would add code to the
//! `.wasm` for nothing (as for `verify_signature`). The decoder reads any
//! byte string without panicking: unknown fields of every wire type are
//! skipped, and truncated or malformed input is an error, never a guess.

use super::{Declared, LimitState};
use std::time::Duration;

/// gRPC service and method of the call.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Answers larger than this are refused unread (a real answer to one
/// descriptor is well under 1 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A `RateLimitRequest` for one descriptor, counting one hit.
pub fn encode_request(domain: &str, entries: &[(&str, &str)]) -> Vec<u8> {
    let mut descriptor = Vec::new();
    for (key, value) in entries {
        let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, value.as_bytes());
        put_bytes(&mut descriptor, 1, &entry);
    }
    let mut out = Vec::with_capacity(domain.len() + descriptor.len() + 8);
    put_bytes(&mut out, 1, domain.as_bytes());
    put_bytes(&mut out, 2, &descriptor);
    // hits_addend = 1 (field 3, varint).
    put_varint(&mut out, 3 << 3);
    put_varint(&mut out, 1);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Code {
        match v {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit`: the limit the service applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentLimit {
    pub name: String,
    pub requests_per_unit: u32,
    /// The unit in seconds; `None` for `UNKNOWN` or an unknown unit.
    pub unit_secs: Option<u64>,
}

/// `RateLimitResponse.DescriptorStatus`, the fields Tollgate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse`, the fields Tollgate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
    /// `response_headers_to_add`, names lower-cased.
    pub response_headers: Vec<(String, String)>,
}

impl Response {
    /// The status that decided the call: the first over-limit one, else the first.
    pub fn deciding_status(&self) -> Option<&DescriptorStatus> {
        self.statuses
            .iter()
            .find(|s| s.code == Code::OverLimit)
            .or(self.statuses.first())
    }

    /// A header the service asked to add, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Response {
    /// What the answer says about the policy, for the `RateLimit` headers and
    /// `Retry-After`: from the deciding status (`current_limit`,
    /// `limit_remaining`, `duration_until_reset`), else from the
    /// `X-RateLimit-Limit`/`-Remaining`/`-Reset` headers the service asked to
    /// add, else from what the operator `declared`. `None` when an allowed
    /// request's remaining quota is unknown (no headers then).
    pub fn limit_state(&self, declared: Option<Declared>) -> Option<LimitState> {
        let over = self.overall_code == Code::OverLimit;
        let status = self.deciding_status();
        let stated = status.and_then(|s| {
            let limit = s.current_limit.as_ref()?;
            Some((limit, s.limit_remaining))
        });
        let number = |name: &str| -> Option<u64> { self.header(name)?.trim().parse().ok() };
        let declared_window = declared.map(|d| d.window_ms.div_ceil(1000).max(1));
        let quota = stated
            .and_then(|(l, _)| Some((u64::from(l.requests_per_unit), l.unit_secs?)))
            .filter(|(limit, _)| *limit > 0)
            .or_else(|| self.header("x-ratelimit-limit").and_then(quota_header))
            .or_else(|| Some((declared?.limit, declared_window?)));
        let remaining = stated
            .map(|(_, remaining)| u64::from(remaining))
            .or_else(|| number("x-ratelimit-remaining"))
            .or(over.then_some(0))?;
        let reset_secs = status
            .and_then(|s| s.duration_until_reset)
            .map(|d| d.as_millis().div_ceil(1000) as u64)
            .or_else(|| number("x-ratelimit-reset"))
            .or(declared_window)
            .unwrap_or(1);
        Some(LimitState {
            quota,
            remaining: if over { 0 } else { remaining },
            reset_secs,
            retry_after_secs: reset_secs,
        })
    }
}

/// `X-RateLimit-Limit` (draft-polli-ratelimit-headers-03): `10, 10;w=60;…`.
fn quota_header(value: &str) -> Option<(u64, u64)> {
    let (limit, rest) = value.split_once(',')?;
    let limit = limit.trim().parse().ok()?;
    let window = rest
        .split(';')
        .find_map(|p| p.trim().strip_prefix("w="))?
        .trim()
        .parse()
        .ok()?;
    Some((limit, window))
}

/// How one call to a rate-limit service ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// Admitted (`OK`, or `UNKNOWN`, which Envoy treats as `OK`).
    Ok,
    OverLimit,
    Failed(CallFailure),
}

/// Why a call gave no verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// The host refused to start the call (no such cluster, …).
    NotSent(String),
    /// No answer within the policy's `timeout`.
    Timeout,
    /// The call ended with this gRPC status (14 `UNAVAILABLE`: unreachable).
    Status(u32),
    /// The answer was not a `RateLimitResponse`.
    BadResponse(DecodeError),
}

impl CallFailure {
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallFailure::Timeout)
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::NotSent(why) => write!(f, "not sent: {why}"),
            CallFailure::Timeout => f.write_str("timeout"),
            CallFailure::Status(code) => write!(f, "grpc status {code}"),
            CallFailure::BadResponse(e) => write!(f, "unreadable answer: {e:?}"),
        }
    }
}

/// Why an answer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    /// A wire type protobuf does not use any more (groups) or never defined.
    BadWireType,
    TooLarge,
}

/// Decodes a `RateLimitResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(DecodeError::TooLarge);
    }
    let mut response = Response {
        overall_code: Code::Unknown,
        statuses: Vec::new(),
        response_headers: Vec::new(),
    };
    let mut r = Reader(bytes);
    while let Some(field) = r.field()? {
        match field {
            (1, Value::Varint(v)) => response.overall_code = Code::from_wire(v),
            (2, Value::Bytes(b)) => response.statuses.push(decode_status(b)?),
            (3, Value::Bytes(b)) => response.response_headers.push(decode_header(b)?),
            _ => {}
        }
    }
    Ok(response)
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut status = DescriptorStatus {
        code: Code::Unknown,
        current_limit: None,
        limit_remaining: 0,
        duration_until_reset: None,
    };
    let mut r = Reader(bytes);
    while let Some(field) = r.field()? {
        match field {
            (1, Value::Varint(v)) => status.code = Code::from_wire(v),
            (2, Value::Bytes(b)) => status.current_limit = Some(decode_limit(b)?),
            (3, Value::Varint(v)) => status.limit_remaining = v as u32,
            (4, Value::Bytes(b)) => status.duration_until_reset = Some(decode_duration(b)?),
            _ => {}
        }
    }
    Ok(status)
}

fn decode_limit(bytes: &[u8]) -> Result<CurrentLimit, DecodeError> {
    let mut limit = CurrentLimit::default();
    let mut r = Reader(bytes);
    while let Some(field) = r.field()? {
        match field {
            (1, Value::Varint(v)) => limit.requests_per_unit = v as u32,
            (2, Value::Varint(v)) => limit.unit_secs = unit_secs(v),
            (3, Value::Bytes(b)) => limit.name = String::from_utf8_lossy(b).into_owned(),
            _ => {}
        }
    }
    Ok(limit)
}

/// `RateLimit.Unit` in seconds (a month is 30 days, a year 365).
fn unit_secs(unit: u64) -> Option<u64> {
    match unit {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3_600),
        4 => Some(86_400),
        5 => Some(30 * 86_400),
        6 => Some(365 * 86_400),
        7 => Some(7 * 86_400),
        _ => None,
    }
}

/// `google.protobuf.Duration`; negative values count as zero.
fn decode_duration(bytes: &[u8]) -> Result<Duration, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    let mut r = Reader(bytes);
    while let Some(field) = r.field()? {
        match field {
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = i64::from(v as i32),
            _ => {}
        }
    }
    Ok(Duration::from_secs(seconds.max(0) as u64)
        + Duration::from_nanos(nanos.clamp(0, 999_999_999) as u64))
}

/// `config.core.v3.HeaderValue`: `value`, or `raw_value` when set.
fn decode_header(bytes: &[u8]) -> Result<(String, String), DecodeError> {
    let (mut key, mut value, mut raw) = (String::new(), String::new(), None);
    let mut r = Reader(bytes);
    while let Some(field) = r.field()? {
        match field {
            (1, Value::Bytes(b)) => key = String::from_utf8_lossy(b).to_ascii_lowercase(),
            (2, Value::Bytes(b)) => value = String::from_utf8_lossy(b).into_owned(),
            (3, Value::Bytes(b)) => raw = Some(String::from_utf8_lossy(b).into_owned()),
            _ => {}
        }
    }
    Ok((key, raw.unwrap_or(value)))
}

/// One field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32- or 64-bit: no field Tollgate reads has one.
    Fixed,
}

/// A cursor over protobuf wire format.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        // More than ten bytes: not a varint.
        Err(DecodeError::Truncated)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field (number, value), `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(DecodeError::BadWireType),
        };
        Ok(Some((tag >> 3, value)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A status: code, requests per unit, unit, remaining, (seconds, nanos) until reset.
    pub(crate) type Status = (u64, u32, u64, u32, (i64, i32));

    /// Builds wire format for tests: a `RateLimitResponse` as the service sends it.
    pub(crate) fn response(code: u64, status: Option<Status>, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, 1 << 3);
        put_varint(&mut out, code);
        if let Some((code, per_unit, unit, remaining, (secs, nanos))) = status {
            let mut limit = Vec::new();
            put_bytes(&mut limit, 3, b"fleet");
            put_varint(&mut limit, 1 << 3);
            put_varint(&mut limit, u64::from(per_unit));
            put_varint(&mut limit, 2 << 3);
            put_varint(&mut limit, unit);
            let mut duration = Vec::new();
            put_varint(&mut duration, 1 << 3);
            put_varint(&mut duration, secs as u64);
            put_varint(&mut duration, 2 << 3);
            put_varint(&mut duration, nanos as i64 as u64);
            let mut s = Vec::new();
            put_varint(&mut s, 1 << 3);
            put_varint(&mut s, code);
            put_bytes(&mut s, 2, &limit);
            put_varint(&mut s, 3 << 3);
            put_varint(&mut s, u64::from(remaining));
            put_bytes(&mut s, 4, &duration);
            put_bytes(&mut out, 2, &s);
        }
        for (k, v) in headers {
            let mut h = Vec::new();
            put_bytes(&mut h, 1, k.as_bytes());
            put_bytes(&mut h, 2, v.as_bytes());
            put_bytes(&mut out, 3, &h);
        }
        out
    }

    #[test]
    fn encodes_a_request_byte_for_byte() {
        let bytes = encode_request("tollgate", &[("policy", "p"), ("client_id", "c")]);
        let expected: Vec<u8> = [
            &[0x0a, 8][..],
            b"tollgate",
            &[0x12, 29],
            &[0x0a, 11, 0x0a, 6],
            b"policy",
            &[0x12, 1],
            b"p",
            &[0x0a, 14, 0x0a, 9],
            b"client_id",
            &[0x12, 1],
            b"c",
            &[0x18, 1],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn long_values_get_multi_byte_lengths() {
        let value = "v".repeat(300);
        let bytes = encode_request("d", &[("k", &value)]);
        // entry = 3 (key) + 3 (tag, 2-byte length) + 300 = 306 = 0xb2 0x02;
        // descriptor = 3 + 306 = 309 = 0xb5 0x02.
        assert_eq!(&bytes[3..6], &[0x12, 0xb5, 0x02]);
        assert_eq!(&bytes[6..9], &[0x0a, 0xb2, 0x02]);
    }

    #[test]
    fn decodes_statuses_and_headers() {
        let bytes = response(
            2,
            Some((2, 10, 2, 0, (41, 500_000_000))),
            &[("X-RateLimit-Reset", "42")],
        );
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::OverLimit);
        let s = r.deciding_status().unwrap();
        assert_eq!(s.code, Code::OverLimit);
        assert_eq!(
            s.current_limit,
            Some(CurrentLimit {
                name: "fleet".into(),
                requests_per_unit: 10,
                unit_secs: Some(60)
            })
        );
        assert_eq!(s.limit_remaining, 0);
        assert_eq!(s.duration_until_reset, Some(Duration::from_millis(41_500)));
        assert_eq!(r.header("x-ratelimit-reset"), Some("42"));
    }

    #[test]
    fn skips_unknown_fields_of_every_wire_type() {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, (9 << 3) | 1);
        bytes.extend([0; 8]);
        put_varint(&mut bytes, (10 << 3) | 5);
        bytes.extend([0; 4]);
        put_bytes(&mut bytes, 5, b"raw body");
        put_varint(&mut bytes, 11 << 3);
        put_varint(&mut bytes, u64::MAX);
        bytes.extend(response(1, None, &[]));
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::Ok);
        assert!(r.statuses.is_empty());
        assert_eq!(decode_response(&[]).unwrap().overall_code, Code::Unknown);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_never_a_panic() {
        let bytes = response(
            2,
            Some((2, 10, 4, 3, (86_399, 1))),
            &[("x-ratelimit-limit", "10, 10;w=86400")],
        );
        for cut in 0..bytes.len() {
            // Every prefix either decodes (a field boundary) or is refused.
            let _ = decode_response(&bytes[..cut]);
        }
        assert_eq!(
            decode_response(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
        // Groups (wire types 3, 4) and the undefined 6, 7.
        for wire in [3u8, 4, 6, 7] {
            assert_eq!(
                decode_response(&[(1 << 3) | wire, 0]),
                Err(DecodeError::BadWireType)
            );
        }
        // A length past the end; an endless varint.
        assert_eq!(
            decode_response(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_response(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_response(&vec![0; MAX_RESPONSE_BYTES + 1]),
            Err(DecodeError::TooLarge)
        );
        // Every byte of a real answer changed to each of a few values: reaches
        // the nested messages with wrong lengths and wire types.
        for at in 0..bytes.len() {
            for v in [0x00, 0x01, 0x07, 0x7f, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[at] = v;
                if let Ok(r) = decode_response(&mutated) {
                    let _ = r.limit_state(None);
                }
            }
        }
        // Pseudo-random bytes: whatever comes out, nothing panics.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let len = (x % 64) as usize;
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode_response(&garbage);
        }
    }

    fn state(bytes: &[u8], declared: Option<Declared>) -> Option<LimitState> {
        decode_response(bytes).unwrap().limit_state(declared)
    }

    #[test]
    fn the_limit_state_comes_from_the_status_first() {
        let over = response(2, Some((2, 10, 2, 0, (41, 500_000_000))), &[]);
        assert_eq!(
            state(&over, None),
            Some(LimitState {
                quota: Some((10, 60)),
                remaining: 0,
                reset_secs: 42,
                retry_after_secs: 42
            })
        );
        let ok = response(1, Some((1, 10, 4, 7, (3_600, 0))), &[]);
        assert_eq!(
            state(&ok, None),
            Some(LimitState {
                quota: Some((10, 86_400)),
                remaining: 7,
                reset_secs: 3_600,
                retry_after_secs: 3_600
            })
        );
    }

    #[test]
    fn without_statuses_the_headers_then_the_declared_limit_stand_in() {
        let declared = Some(Declared {
            limit: 100,
            window_ms: 86_400_000,
        });
        let headers = response(
            2,
            None,
            &[
                ("X-RateLimit-Limit", "5, 5;w=60;name=\"x\""),
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", "17"),
            ],
        );
        let s = state(&headers, declared).unwrap();
        assert_eq!((s.quota, s.reset_secs), (Some((5, 60)), 17));
        // Nothing but the verdict (limitador-server without its headers).
        let bare = response(2, None, &[]);
        let s = state(&bare, declared).unwrap();
        assert_eq!(
            (s.quota, s.remaining, s.reset_secs),
            (Some((100, 86_400)), 0, 86_400)
        );
        let s = state(&bare, None).unwrap();
        assert_eq!((s.quota, s.remaining, s.retry_after_secs), (None, 0, 1));
        // Allowed, and nothing known about what remains: no headers.
        assert_eq!(state(&response(1, None, &[]), declared), None);
        // A status without a limit (no limit matched) states nothing either.
        let unmatched = response(1, None, &[]);
        assert_eq!(state(&unmatched, None), None);
    }

    #[test]
    fn negative_and_huge_durations_are_clamped() {
        let bytes = response(2, Some((2, 1, 1, 0, (-5, -3))), &[]);
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.statuses[0].duration_until_reset, Some(Duration::ZERO));
    }
}
