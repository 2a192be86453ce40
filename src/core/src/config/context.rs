//! `requires.context` (context conditions), `requires.step_up` (RFC 9470) and
//! the top-level `geoip` section, which names the header Envoy's geoip filter
//! writes the country to: the only place a country is ever read from.

use super::fields::{is_header_name, parse_duration_ms};
use super::rules::{claim_path, compile_names, RawNames};
use super::{err, ConfigError};
use crate::context::{
    is_country_code, AddressLists, Conditions, Countries, DeviceBinding, HeaderCheck,
    HeaderCondition, Listed, TimeWindow, Version, DAY_NAMES,
};
use crate::step_up::StepUp;
use serde::Deserialize;
use tollgate_contract::cidr::Cidr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGeoip {
    country_header: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContext {
    #[serde(default)]
    client_address: Option<RawAddressLists>,
    #[serde(default)]
    country: Option<RawCountry>,
    #[serde(default)]
    time_windows: Vec<RawTimeWindow>,
    #[serde(default)]
    headers: Vec<RawHeader>,
    #[serde(default)]
    device_binding: Option<RawDeviceBinding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAddressLists {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCountry {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    #[serde(default)]
    allow_unknown: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeWindow {
    time_zone: String,
    #[serde(default)]
    days: Option<Vec<String>>,
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    #[serde(default)]
    equals: Option<String>,
    #[serde(default)]
    one_of: Option<Vec<String>>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    min_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeviceBinding {
    claim: String,
    #[serde(default)]
    header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStepUp {
    #[serde(default)]
    acr: Option<Vec<String>>,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    amr: Option<RawNames>,
    #[serde(default)]
    acr_claim: Option<String>,
    #[serde(default)]
    amr_claim: Option<String>,
    #[serde(default)]
    auth_time_claim: Option<String>,
}

/// `geoip.country_header`, lower-cased.
pub(super) fn compile_geoip(raw: Option<RawGeoip>) -> Result<Option<String>, ConfigError> {
    let Some(g) = raw else {
        return Ok(None);
    };
    header_name("geoip.country_header", &g.country_header).map(Some)
}

pub(super) fn compile_context(at: &str, raw: RawContext) -> Result<Conditions, ConfigError> {
    let client_address = match raw.client_address {
        None => None,
        Some(lists) => {
            let at = format!("{at}.client_address");
            if lists.allow.is_empty() && lists.deny.is_empty() {
                return Err(err(at, "list address blocks in `allow`, `deny` or both"));
            }
            Some(AddressLists {
                allow: cidrs(&format!("{at}.allow"), &lists.allow)?,
                deny: cidrs(&format!("{at}.deny"), &lists.deny)?,
            })
        }
    };
    let country = raw
        .country
        .map(|c| compile_country(&format!("{at}.country"), c))
        .transpose()?;
    let mut time_windows = Vec::with_capacity(raw.time_windows.len());
    for (i, w) in raw.time_windows.into_iter().enumerate() {
        time_windows.push(compile_window(&format!("{at}.time_windows[{i}]"), w)?);
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (i, h) in raw.headers.into_iter().enumerate() {
        headers.push(compile_header(&format!("{at}.headers[{i}]"), h)?);
    }
    let device_binding = match raw.device_binding {
        None => None,
        Some(d) => Some(DeviceBinding {
            claim: claim_path(&format!("{at}.device_binding.claim"), &d.claim)?,
            header: d
                .header
                .map(|h| header_name(&format!("{at}.device_binding.header"), &h))
                .transpose()?,
        }),
    };
    Ok(Conditions {
        client_address,
        country,
        time_windows,
        headers,
        device_binding,
    })
}

fn cidrs(at: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, c)| c.parse::<Cidr>().map_err(|m| err(format!("{at}[{i}]"), m)))
        .collect()
}

fn compile_country(at: &str, raw: RawCountry) -> Result<Countries, ConfigError> {
    let (listed, codes, field) = match (raw.allow, raw.deny) {
        (Some(codes), None) => (Listed::Allow, codes, "allow"),
        (None, Some(codes)) => (Listed::Deny, codes, "deny"),
        _ => return Err(err(at, "set exactly one of `allow` or `deny`")),
    };
    if codes.is_empty() {
        return Err(err(
            format!("{at}.{field}"),
            "list at least one country code",
        ));
    }
    for (i, code) in codes.iter().enumerate() {
        if !is_country_code(code) {
            let hint = match code.as_str() {
                "UK" => " (the United Kingdom is `GB`)".to_string(),
                c if is_country_code(&c.to_ascii_uppercase()) => {
                    format!(" (write `{}`)", c.to_ascii_uppercase())
                }
                _ => String::new(),
            };
            return Err(err(
                format!("{at}.{field}[{i}]"),
                format!(
                    "`{code}` is not a country code: use ISO 3166-1 alpha-2 codes in upper case, as the geoip database reports them (`FR`, `DE`){hint}"
                ),
            ));
        }
    }
    Ok(Countries {
        listed,
        codes,
        allow_unknown: raw.allow_unknown,
    })
}

fn compile_window(at: &str, raw: RawTimeWindow) -> Result<TimeWindow, ConfigError> {
    let days = match raw.days {
        None => 0x7f,
        Some(names) => {
            let mut days = 0u8;
            for (i, name) in names.iter().enumerate() {
                let day = DAY_NAMES.iter().position(|d| *d == name).ok_or_else(|| {
                    err(
                        format!("{at}.days[{i}]"),
                        format!("`{name}` is not a day: use mon, tue, wed, thu, fri, sat or sun"),
                    )
                })?;
                days |= 1 << day;
            }
            days
        }
    };
    let from = clock_time(&format!("{at}.from"), &raw.from, false)?;
    let to = clock_time(&format!("{at}.to"), &raw.to, true)?;
    TimeWindow::new(&raw.time_zone, days, from, to).map_err(|(part, message)| {
        let field = if part.is_empty() {
            at.to_string()
        } else {
            format!("{at}.{part}")
        };
        err(field, message)
    })
}

/// `HH:MM` (24-hour clock) as minutes after midnight; `24:00` only as an end.
fn clock_time(at: &str, text: &str, end: bool) -> Result<u16, ConfigError> {
    let parsed = match text.as_bytes() {
        [h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) => {
            let (h, m) = (
                u16::from((h1 - b'0') * 10 + (h2 - b'0')),
                u16::from((m1 - b'0') * 10 + (m2 - b'0')),
            );
            (m < 60 && (h < 24 || (end && h == 24 && m == 0))).then_some(h * 60 + m)
        }
        _ => None,
    };
    parsed.ok_or_else(|| {
        err(
            at,
            if end {
                "a time of day as `HH:MM`, from 00:00 to 24:00"
            } else {
                "a time of day as `HH:MM`, from 00:00 to 23:59"
            },
        )
    })
}

fn compile_header(at: &str, raw: RawHeader) -> Result<HeaderCondition, ConfigError> {
    let name = header_name(&format!("{at}.name"), &raw.name)?;
    let check = match (raw.equals, raw.one_of, raw.pattern, raw.min_version) {
        (None, None, None, None) => HeaderCheck::Present,
        (Some(v), None, None, None) => HeaderCheck::Equals(v),
        (None, Some(vs), None, None) => {
            if vs.is_empty() {
                return Err(err(format!("{at}.one_of"), "list at least one value"));
            }
            HeaderCheck::OneOf(vs)
        }
        (None, None, Some(p), None) => {
            if p.is_empty() {
                return Err(err(format!("{at}.pattern"), "must not be empty"));
            }
            HeaderCheck::Pattern(p)
        }
        (None, None, None, Some(v)) => HeaderCheck::MinVersion(Version::parse(&v).ok_or_else(|| {
            err(
                format!("{at}.min_version"),
                format!("`{v}` is not a version: numbers separated by dots, such as `2.4.0` or `10.3`, optionally with a pre-release (`2.4.0-beta.1`)"),
            )
        })?),
        _ => {
            return Err(err(
                at,
                "set at most one of `equals`, `one_of`, `pattern` or `min_version` (none: the header must be present)",
            ))
        }
    };
    Ok(HeaderCondition { name, check })
}

pub(super) fn compile_step_up(at: &str, raw: RawStepUp) -> Result<StepUp, ConfigError> {
    let acr = match raw.acr {
        None => Vec::new(),
        Some(values) if values.is_empty() => {
            return Err(err(format!("{at}.acr"), "list at least one `acr` value"))
        }
        Some(values) => {
            for (i, v) in values.iter().enumerate() {
                // Space-separated inside a quoted-string in the challenge.
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
                {
                    return Err(err(
                        format!("{at}.acr[{i}]"),
                        "an `acr` value is printable ASCII without spaces, quotes or backslashes",
                    ));
                }
            }
            values
        }
    };
    let max_age = match raw.max_age {
        None => None,
        Some(text) => {
            let field = format!("{at}.max_age");
            let ms = parse_duration_ms(&text).map_err(|m| err(&field, m))?;
            if ms == 0 || ms % 1000 != 0 {
                return Err(err(
                    field,
                    "whole seconds, at least `1s` (the challenge's `max_age` is a number of seconds)",
                ));
            }
            Some(ms / 1000)
        }
    };
    let amr = compile_names(&format!("{at}.amr"), raw.amr)?;
    if acr.is_empty() && max_age.is_none() && amr.is_none() {
        return Err(err(at, "set at least one of `acr`, `max_age` or `amr`"));
    }
    let claim = |field: &str, text: Option<String>, default: &str| {
        claim_path(&format!("{at}.{field}"), text.as_deref().unwrap_or(default))
    };
    Ok(StepUp {
        acr,
        max_age,
        amr,
        acr_claim: claim("acr_claim", raw.acr_claim, "acr")?,
        amr_claim: claim("amr_claim", raw.amr_claim, "amr")?,
        auth_time_claim: claim("auth_time_claim", raw.auth_time_claim, "auth_time")?,
    })
}

fn header_name(at: &str, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if is_header_name(&lower) {
        Ok(lower)
    } else {
        Err(err(at, format!("`{name}` is not a header name")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ConfigError, Settings};
    use crate::context::HeaderCheck;
    use serde_json::{json, Value};

    /// A config with one rule whose `requires` is `requires`.
    fn config(requires: Value) -> Value {
        json!({
            "providers": {"idp": {"issuer": "https://idp.example",
                "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"}}}},
            "geoip": {"country_header": "X-Geo-Country"},
            "rules": [{"match": {"prefix": "/"}, "requires": requires}]
        })
    }

    fn parse_value(v: &Value) -> Result<Settings, ConfigError> {
        parse(v.to_string().as_bytes())
    }

    /// The field and message a config is refused with.
    fn refused(v: Value) -> (String, String) {
        let e = parse_value(&v).expect_err("config should be rejected");
        (e.field, e.message)
    }

    #[test]
    fn a_full_context_and_step_up_compile() {
        let s = parse_value(&config(json!({
            "context": {
                "client_address": {"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.6.6.6"]},
                "country": {"allow": ["FR", "DE"]},
                "time_windows": [{"time_zone": "Europe/Paris", "days": ["mon", "fri"],
                                  "from": "08:00", "to": "24:00"}],
                "headers": [{"name": "X-App-Version", "min_version": "2.4"},
                            {"name": "x-platform", "one_of": ["ios", "android"]},
                            {"name": "x-attested"}],
                "device_binding": {"claim": "device.id", "header": "x-device-id"}
            },
            "step_up": {"acr": ["gold"], "max_age": "300s", "amr": {"any_of": ["mfa"]},
                        "auth_time_claim": "\"https://idp.example/auth_time\""}
        })))
        .unwrap();
        assert_eq!(s.country_header.as_deref(), Some("x-geo-country"));
        let r = &s.rules[0].requirement;
        assert_eq!(r.context.headers[0].name, "x-app-version");
        assert!(matches!(r.context.headers[2].check, HeaderCheck::Present));
        assert_eq!(
            r.step_up.as_ref().unwrap().challenge_params(),
            "acr_values=\"gold\", max_age=\"300\""
        );
        assert!(s.uses_client_ip, "an address condition needs the address");
        for claim in ["device", "acr", "amr", "https://idp.example/auth_time"] {
            assert!(
                s.retained_claims.iter().any(|c| c == claim),
                "{claim} retained: {:?}",
                s.retained_claims
            );
        }
    }

    #[test]
    fn bad_conditions_are_named() {
        let cases = [
            (
                json!({"context": {"client_address": {"allow": ["10.0.0.0/8", "10.0.0.0/33"]}}}),
                "rules[0].requires.context.client_address.allow[1]",
                "not an IP address or CIDR range",
            ),
            (
                json!({"context": {"client_address": {}}}),
                "rules[0].requires.context.client_address",
                "`allow`, `deny` or both",
            ),
            (
                json!({"context": {"country": {"allow": ["FR", "UK"]}}}),
                "rules[0].requires.context.country.allow[1]",
                "the United Kingdom is `GB`",
            ),
            (
                json!({"context": {"country": {"deny": ["fr"]}}}),
                "rules[0].requires.context.country.deny[0]",
                "(write `FR`)",
            ),
            (
                json!({"context": {"country": {"deny": ["FRA"]}}}),
                "rules[0].requires.context.country.deny[0]",
                "`FRA` is not a country code",
            ),
            (
                json!({"context": {"country": {"allow": ["FR"], "deny": ["DE"]}}}),
                "rules[0].requires.context.country",
                "exactly one of `allow` or `deny`",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "Europe/Pariss", "from": "08:00", "to": "20:00"}]}}),
                "rules[0].requires.context.time_windows[0].time_zone",
                "unknown time zone `Europe/Pariss`",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "CET+1", "from": "08:00", "to": "20:00"}]}}),
                "rules[0].requires.context.time_windows[0].time_zone",
                "IANA time zone name",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "UTC", "days": ["monday"], "from": "08:00", "to": "20:00"}]}}),
                "rules[0].requires.context.time_windows[0].days[0]",
                "`monday` is not a day",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "UTC", "days": [], "from": "08:00", "to": "20:00"}]}}),
                "rules[0].requires.context.time_windows[0].days",
                "at least one day",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "UTC", "from": "8:00", "to": "20:00"}]}}),
                "rules[0].requires.context.time_windows[0].from",
                "`HH:MM`",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "UTC", "from": "24:00", "to": "20:00"}]}}),
                "rules[0].requires.context.time_windows[0].from",
                "00:00 to 23:59",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "UTC", "from": "08:00", "to": "20:60"}]}}),
                "rules[0].requires.context.time_windows[0].to",
                "`HH:MM`",
            ),
            (
                json!({"context": {"time_windows": [{"time_zone": "UTC", "from": "08:00", "to": "08:00"}]}}),
                "rules[0].requires.context.time_windows[0]",
                "equal",
            ),
            (
                json!({"context": {"headers": [{"name": "x-app-version", "min_version": "2.x"}]}}),
                "rules[0].requires.context.headers[0].min_version",
                "`2.x` is not a version",
            ),
            (
                json!({"context": {"headers": [{"name": "x app", "equals": "1"}]}}),
                "rules[0].requires.context.headers[0].name",
                "not a header name",
            ),
            (
                json!({"context": {"headers": [{"name": "x-a", "equals": "1", "pattern": "*"}]}}),
                "rules[0].requires.context.headers[0]",
                "at most one of",
            ),
            (
                json!({"context": {"headers": [{"name": "x-a", "one_of": []}]}}),
                "rules[0].requires.context.headers[0].one_of",
                "at least one value",
            ),
            (
                json!({"context": {"device_binding": {"claim": "https://x/device"}}}),
                "rules[0].requires.context.device_binding.claim",
                "not a claim path",
            ),
            (
                json!({"context": {"nearby": true}}),
                "rules[0].requires.context.nearby",
                "unknown field",
            ),
        ];
        for (requires, field, message) in cases {
            let (f, m) = refused(config(requires.clone()));
            assert_eq!(f, field, "{requires}: {m}");
            assert!(m.contains(message), "{requires}: {m}");
        }
    }

    #[test]
    fn bad_step_ups_are_named() {
        let cases = [
            (
                json!({"step_up": {}}),
                "rules[0].requires.step_up",
                "at least one of `acr`, `max_age` or `amr`",
            ),
            (
                json!({"step_up": {"acr": ["a b"]}}),
                "rules[0].requires.step_up.acr[0]",
                "without spaces",
            ),
            (
                json!({"step_up": {"acr": []}}),
                "rules[0].requires.step_up.acr",
                "at least one",
            ),
            (
                json!({"step_up": {"max_age": "1.5s"}}),
                "rules[0].requires.step_up.max_age",
                "whole seconds",
            ),
            (
                json!({"step_up": {"max_age": "5m"}}),
                "rules[0].requires.step_up.max_age",
                "",
            ),
            (
                json!({"step_up": {"amr": {"any_of": []}}}),
                "rules[0].requires.step_up.amr.any_of",
                "",
            ),
            (
                json!({"step_up": {"acr": ["x"], "acr_claim": "a..b"}}),
                "rules[0].requires.step_up.acr_claim",
                "not a claim path",
            ),
            (
                json!({"allow_anonymous": true, "step_up": {"acr": ["x"]}}),
                "rules[0].requires.step_up",
                "`allow_anonymous`",
            ),
            (
                json!({"allow_anonymous": true,
                       "context": {"device_binding": {"claim": "device_id"}}}),
                "rules[0].requires.context.device_binding",
                "`allow_anonymous`",
            ),
            (
                json!({"credentials": ["jwt", "api_key"], "step_up": {"acr": ["x"]}}),
                "rules[0].requires.step_up",
                "API keys",
            ),
        ];
        for (requires, field, message) in cases {
            let mut c = config(requires.clone());
            if requires.get("credentials").is_some() {
                c["api_keys"] =
                    json!({"key_set": {"inline_string": json!({"consumers": []}).to_string()}});
            }
            let (f, m) = refused(c);
            assert_eq!(f, field, "{requires}: {m}");
            assert!(m.contains(message), "{requires}: {m}");
        }
    }

    #[test]
    fn countries_need_the_geoip_section() {
        let mut c = config(json!({"context": {"country": {"allow": ["FR"]}}}));
        c.as_object_mut().unwrap().remove("geoip");
        let (field, message) = refused(c);
        assert_eq!(field, "rules[0].requires.context.country");
        assert!(message.contains("`geoip`"), "{message}");
        let mut c = config(json!({}));
        c["geoip"] = json!({"country_header": "x geo"});
        assert_eq!(refused(c).0, "geoip.country_header");
        // Context conditions without a token are fine on anonymous rules.
        parse_value(&config(json!({"allow_anonymous": true,
            "context": {"client_address": {"deny": ["192.0.2.0/24"]}}})))
        .unwrap();
    }
}
