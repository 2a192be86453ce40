//! Context conditions on rules (zero trust): besides who calls, where the
//! request comes from (client address, country), when it arrives (time
//! windows), what sends it (request headers such as the app version) and on
//! which device (a token claim bound to a request header).
//!
//! Conditions on the request alone are checked as soon as the rule is known,
//! before any credential work ([`Conditions::check_request`]): a request from a
//! refused address costs no signature check. Device binding needs the verified
//! token ([`Conditions::check_token`]). Each condition fails closed: an address,
//! country, time or header that cannot be read does not satisfy it.
//!
//! What is trusted: the client address is the one `client_ip` resolves (the
//! peer, or the `X-Forwarded-For` entry of the configured trusted hop); the
//! country is the header the top-level `geoip` section names, which Envoy's
//! geoip filter writes before Tollgate runs. Other headers are what the client
//! sent, unless a hop of yours sets them.

mod countries;
#[cfg(test)]
mod pipeline_tests;
mod time_window;
mod time_zones;
mod version;

pub use countries::is_country_code;
pub use time_window::{TimeWindow, DAY_NAMES};
pub use time_zones::TZDATA_VERSION;
pub use version::Version;

use crate::claims::ClaimPath;
use crate::credentials::RequestView;
use crate::decision::Reason;
use serde_json::{Map, Value};
use std::net::IpAddr;
use tollgate_contract::cidr::Cidr;

/// A rule's context conditions; all of them must hold.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub client_address: Option<AddressLists>,
    pub country: Option<Countries>,
    /// Any one of them open.
    pub time_windows: Vec<TimeWindow>,
    pub headers: Vec<HeaderCondition>,
    pub device_binding: Option<DeviceBinding>,
}

/// Address blocks: the client must be in one `allow` block (when any are
/// listed) and in no `deny` block.
#[derive(Debug, Clone)]
pub struct AddressLists {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

/// Country codes the request may (`Allow`) or may not (`Deny`) come from.
#[derive(Debug, Clone)]
pub struct Countries {
    pub listed: Listed,
    pub codes: Vec<String>,
    /// Whether a request without a country (the database has no entry for
    /// the address, as for private ones) passes.
    pub allow_unknown: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    Allow,
    Deny,
}

/// A request header the rule requires.
#[derive(Debug, Clone)]
pub struct HeaderCondition {
    /// Lower-case header name.
    pub name: String,
    pub check: HeaderCheck,
}

#[derive(Debug, Clone)]
pub enum HeaderCheck {
    Present,
    Equals(String),
    OneOf(Vec<String>),
    /// `*` stands for any run of characters; everything else is literal.
    Pattern(String),
    /// A version at least this one (compared as versions).
    MinVersion(Version),
}

/// A token claim bound to the request: the claim must be present and, with
/// `header`, equal that header's value.
#[derive(Debug, Clone)]
pub struct DeviceBinding {
    pub claim: ClaimPath,
    pub header: Option<String>,
}

impl Conditions {
    /// Stage: the conditions on the request alone, at `now_secs`. The country
    /// is read from `country_header` (the `geoip` section), and only from there.
    pub fn check_request(
        &self,
        req: &RequestView<'_>,
        country_header: Option<&str>,
        now_secs: u64,
    ) -> Result<(), Reason> {
        if let Some(lists) = &self.client_address {
            let ip = req.client_ip.and_then(|ip| ip.parse::<IpAddr>().ok());
            if !ip.is_some_and(|ip| lists.admit(ip)) {
                return Err(Reason::AddressNotAllowed);
            }
        }
        if let Some(countries) = &self.country {
            let country = country_header.and_then(|name| single_header(req, name));
            if !countries.admit(country) {
                return Err(Reason::CountryNotAllowed);
            }
        }
        if !self.time_windows.is_empty() {
            let now = i64::try_from(now_secs).unwrap_or(i64::MAX);
            if !self.time_windows.iter().any(|w| w.contains(now)) {
                return Err(Reason::OutsideTimeWindow);
            }
        }
        for h in &self.headers {
            if !h.check.admits(single_header(req, &h.name)) {
                return Err(match h.check {
                    HeaderCheck::MinVersion(_) => Reason::VersionTooOld,
                    _ => Reason::AttributeMismatch,
                });
            }
        }
        Ok(())
    }

    /// Stage: the conditions binding the verified token to the request.
    pub fn check_token(
        &self,
        req: &RequestView<'_>,
        claims: &Map<String, Value>,
    ) -> Result<(), Reason> {
        let Some(binding) = &self.device_binding else {
            return Ok(());
        };
        let bound = match (binding.claim.lookup(claims), &binding.header) {
            (Some(Value::String(claim)), Some(header)) => {
                !claim.is_empty() && single_header(req, header) == Some(claim.as_str())
            }
            (Some(Value::String(claim)), None) => !claim.is_empty(),
            _ => false,
        };
        if bound {
            Ok(())
        } else {
            Err(Reason::DeviceMismatch)
        }
    }

    /// What a denial for `reason` tells the caller the rule needs: the time
    /// windows, the headers (never what the request held). Nothing for
    /// addresses, countries or devices: the lists are the operator's business.
    pub fn needed(&self, reason: Reason) -> Option<String> {
        let describe = |keep: fn(&HeaderCheck) -> bool| {
            let parts: Vec<String> = self
                .headers
                .iter()
                .filter(|h| keep(&h.check))
                .map(HeaderCondition::describe)
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        };
        match reason {
            Reason::OutsideTimeWindow if !self.time_windows.is_empty() => Some(
                self.time_windows
                    .iter()
                    .map(TimeWindow::describe)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Reason::VersionTooOld => describe(|c| matches!(c, HeaderCheck::MinVersion(_))),
            Reason::AttributeMismatch => describe(|c| !matches!(c, HeaderCheck::MinVersion(_))),
            _ => None,
        }
    }

    /// Whether a condition reads the client address.
    pub fn uses_client_address(&self) -> bool {
        self.client_address.is_some()
    }
}

impl AddressLists {
    fn admit(&self, ip: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
            && !self.deny.iter().any(|c| c.contains(ip))
    }
}

impl Countries {
    fn admit(&self, country: Option<&str>) -> bool {
        let Some(country) = country.map(str::trim).filter(|c| !c.is_empty()) else {
            return self.allow_unknown;
        };
        let listed = self.codes.iter().any(|c| c.eq_ignore_ascii_case(country));
        match self.listed {
            Listed::Allow => listed,
            Listed::Deny => !listed,
        }
    }
}

impl HeaderCheck {
    fn admits(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        match self {
            HeaderCheck::Present => true,
            HeaderCheck::Equals(want) => value == want,
            HeaderCheck::OneOf(allowed) => allowed.iter().any(|a| a == value),
            HeaderCheck::Pattern(pattern) => glob_matches(pattern.as_bytes(), value.as_bytes()),
            HeaderCheck::MinVersion(min) => Version::parse(value).is_some_and(|v| v >= *min),
        }
    }
}

impl HeaderCondition {
    fn describe(&self) -> String {
        let name = &self.name;
        match &self.check {
            HeaderCheck::Present => format!("{name} present"),
            HeaderCheck::Equals(v) => format!("{name}: {v}"),
            HeaderCheck::OneOf(vs) => format!("{name}: one of {}", vs.join(", ")),
            HeaderCheck::Pattern(p) => format!("{name} matching {p}"),
            HeaderCheck::MinVersion(v) => format!("{name}: {v} or later"),
        }
    }
}

/// The value of a header the request carries exactly once, as text. Several
/// copies are ambiguous and count as none.
fn single_header<'a>(req: &RequestView<'a>, name: &str) -> Option<&'a str> {
    let mut values = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice());
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(first).ok().map(str::trim)
}

/// `*` matches any run of bytes (empty included); every other byte itself.
/// Backtracks to the last `*` only: at worst pattern length × value length
/// steps, never exponential.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match (pattern.get(p), text.get(t)) {
            (Some(b'*'), _) => {
                star = Some((p, t));
                p += 1;
            }
            (Some(a), Some(b)) if a == b => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request<'a>(headers: &'a [(String, Vec<u8>)], ip: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path: "/",
            headers,
            client_ip: ip,
            received_us: 0,
            client_cert: None,
        }
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    #[test]
    fn client_address_allow_and_deny_lists() {
        let c = Conditions {
            client_address: Some(AddressLists {
                allow: cidrs(&["10.0.0.0/8", "2001:db8::/32"]),
                deny: cidrs(&["10.6.0.0/16"]),
            }),
            ..Default::default()
        };
        let check = |ip: Option<&str>| c.check_request(&request(&[], ip), None, 0);
        assert_eq!(check(Some("10.1.2.3")), Ok(()));
        assert_eq!(check(Some("2001:db8::1")), Ok(()));
        assert_eq!(check(Some("::ffff:10.1.2.3")), Ok(()), "IPv4-mapped");
        assert_eq!(check(Some("10.6.0.1")), Err(Reason::AddressNotAllowed));
        assert_eq!(check(Some("192.0.2.1")), Err(Reason::AddressNotAllowed));
        assert_eq!(
            check(None),
            Err(Reason::AddressNotAllowed),
            "unknown address"
        );
        assert_eq!(check(Some("junk")), Err(Reason::AddressNotAllowed));
        let deny_only = Conditions {
            client_address: Some(AddressLists {
                allow: Vec::new(),
                deny: cidrs(&["192.0.2.0/24"]),
            }),
            ..Default::default()
        };
        let check = |ip| deny_only.check_request(&request(&[], Some(ip)), None, 0);
        assert_eq!(check("198.51.100.1"), Ok(()));
        assert_eq!(check("192.0.2.9"), Err(Reason::AddressNotAllowed));
    }

    #[test]
    fn countries_only_from_the_configured_header() {
        let c = Conditions {
            country: Some(Countries {
                listed: Listed::Allow,
                codes: vec!["FR".into(), "DE".into()],
                allow_unknown: false,
            }),
            ..Default::default()
        };
        let check = |h: &[(&str, &str)], header: Option<&str>| {
            c.check_request(&request(&headers(h), None), header, 0)
        };
        let geo = Some("x-geo-country");
        assert_eq!(check(&[("x-geo-country", "FR")], geo), Ok(()));
        assert_eq!(
            check(&[("x-geo-country", "US")], geo),
            Err(Reason::CountryNotAllowed)
        );
        assert_eq!(check(&[], geo), Err(Reason::CountryNotAllowed), "unknown");
        assert_eq!(
            check(&[("x-geo-country", "FR"), ("x-geo-country", "US")], geo),
            Err(Reason::CountryNotAllowed),
            "two copies are no country"
        );
        assert_eq!(
            check(&[("x-country", "FR")], geo),
            Err(Reason::CountryNotAllowed),
            "another header is not the country"
        );
        assert_eq!(
            check(&[("x-geo-country", "FR")], None),
            Err(Reason::CountryNotAllowed),
            "no geoip section: no country"
        );
        let deny = Conditions {
            country: Some(Countries {
                listed: Listed::Deny,
                codes: vec!["KP".into()],
                allow_unknown: true,
            }),
            ..Default::default()
        };
        let check = |h: &[(&str, &str)]| deny.check_request(&request(&headers(h), None), geo, 0);
        assert_eq!(check(&[("x-geo-country", "FR")]), Ok(()));
        assert_eq!(check(&[]), Ok(()), "allow_unknown");
        assert_eq!(
            check(&[("x-geo-country", "KP")]),
            Err(Reason::CountryNotAllowed)
        );
    }

    #[test]
    fn header_conditions() {
        let cond = |check| Conditions {
            headers: vec![HeaderCondition {
                name: "x-app".into(),
                check,
            }],
            ..Default::default()
        };
        let ok = |c: &Conditions, value: Option<&str>| {
            let h = value.map(|v| headers(&[("x-app", v)])).unwrap_or_default();
            c.check_request(&request(&h, None), None, 0)
        };
        let min = cond(HeaderCheck::MinVersion(Version::parse("2.4.0").unwrap()));
        assert_eq!(ok(&min, Some("2.10.1")), Ok(()));
        assert_eq!(ok(&min, Some("2.4")), Ok(()));
        assert_eq!(ok(&min, Some("2.3.9")), Err(Reason::VersionTooOld));
        assert_eq!(ok(&min, Some("2.4.0-rc.1")), Err(Reason::VersionTooOld));
        assert_eq!(ok(&min, Some("latest")), Err(Reason::VersionTooOld));
        assert_eq!(ok(&min, None), Err(Reason::VersionTooOld));
        assert_eq!(
            min.needed(Reason::VersionTooOld).as_deref(),
            Some("x-app: 2.4.0 or later")
        );
        let one_of = cond(HeaderCheck::OneOf(vec!["ios".into(), "android".into()]));
        assert_eq!(ok(&one_of, Some("ios")), Ok(()));
        assert_eq!(ok(&one_of, Some("web")), Err(Reason::AttributeMismatch));
        assert_eq!(
            one_of.needed(Reason::AttributeMismatch).as_deref(),
            Some("x-app: one of ios, android")
        );
        let present = cond(HeaderCheck::Present);
        assert_eq!(ok(&present, Some("x")), Ok(()));
        assert_eq!(ok(&present, None), Err(Reason::AttributeMismatch));
        let pattern = cond(HeaderCheck::Pattern("MyApp/* (iOS*)".into()));
        assert_eq!(ok(&pattern, Some("MyApp/2.4 (iOS 17.2)")), Ok(()));
        assert_eq!(
            ok(&pattern, Some("MyApp/2.4 (Android 14)")),
            Err(Reason::AttributeMismatch)
        );
        let equals = cond(HeaderCheck::Equals("yes".into()));
        assert_eq!(ok(&equals, Some("yes")), Ok(()));
        assert_eq!(ok(&equals, Some("Yes")), Err(Reason::AttributeMismatch));
    }

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| glob_matches(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("a*c", "abbbc"));
        assert!(m("a*c", "ac"));
        assert!(!m("a*c", "acb"));
        assert!(m("*.example.com", "api.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(m("a**b*", "axxbyy"));
        assert!(!m("abc", "abcd"));
        assert!(m("a*b*c*d", &format!("a{}bcd", "x".repeat(10_000))));
        assert!(!m("a*a*a*a*b", &"a".repeat(5_000)));
    }

    #[test]
    fn device_binding() {
        let claims = json!({"device_id": "dev-1", "n": 5, "empty": ""});
        let claims = claims.as_object().unwrap();
        let bound = |claim: &str, header: Option<&str>| Conditions {
            device_binding: Some(DeviceBinding {
                claim: ClaimPath::parse(claim).unwrap(),
                header: header.map(str::to_string),
            }),
            ..Default::default()
        };
        let c = bound("device_id", Some("x-device-id"));
        let check =
            |c: &Conditions, h: &[(&str, &str)]| c.check_token(&request(&headers(h), None), claims);
        assert_eq!(check(&c, &[("x-device-id", "dev-1")]), Ok(()));
        assert_eq!(
            check(&c, &[("x-device-id", "dev-2")]),
            Err(Reason::DeviceMismatch)
        );
        assert_eq!(check(&c, &[]), Err(Reason::DeviceMismatch));
        assert_eq!(
            check(
                &bound("missing", Some("x-device-id")),
                &[("x-device-id", "")]
            ),
            Err(Reason::DeviceMismatch)
        );
        assert_eq!(check(&bound("device_id", None), &[]), Ok(()), "presence");
        assert_eq!(
            check(&bound("n", None), &[]),
            Err(Reason::DeviceMismatch),
            "not a string"
        );
        assert_eq!(
            check(&bound("empty", None), &[]),
            Err(Reason::DeviceMismatch)
        );
        assert_eq!(
            Conditions::default().check_token(&request(&[], None), claims),
            Ok(())
        );
    }
}
