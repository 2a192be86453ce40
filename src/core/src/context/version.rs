//! Versions compared as versions, not as text: `2.10.0` is newer than `2.9.3`,
//! `2.4` is `2.4.0`, and a pre-release (`2.4.0-beta.2`) comes before its release,
//! pre-releases ordered as semver orders them. Build metadata (`+417`) is ignored.
//! Apps number themselves with two to four parts, so any count from one to
//! eight is a version (semver's exact three would refuse `2.4` and `10.3.1.2`).

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Release numbers, trailing zeros removed (`2.4.0` and `2.4` are one version).
    numbers: Vec<u64>,
    /// Pre-release identifiers; empty for a release.
    pre: Vec<String>,
    text: String,
}

const MAX_PARTS: usize = 8;

impl Version {
    /// `1.2.3`, `2.4`, `10.3.1.2`, `2.4.0-beta.2`, `2.4.0+417`; an optional
    /// leading `v`. `None` for anything else.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let body = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let body = body.split_once('+').map_or(body, |(v, _build)| v);
        let (release, pre) = match body.split_once('-') {
            Some((r, p)) => (r, Some(p)),
            None => (body, None),
        };
        let mut numbers = Vec::new();
        for part in release.split('.') {
            if part.is_empty() || part.len() > 18 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            numbers.push(part.parse().ok()?);
        }
        if numbers.len() > MAX_PARTS {
            return None;
        }
        while numbers.last() == Some(&0) {
            numbers.pop();
        }
        let pre = match pre {
            None => Vec::new(),
            Some(p) => {
                let ids: Vec<String> = p.split('.').map(str::to_string).collect();
                let valid = |id: &String| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                };
                if ids.len() > MAX_PARTS || !ids.iter().all(valid) {
                    return None;
                }
                ids
            }
        };
        Some(Version {
            numbers,
            pre,
            text: text.to_string(),
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let release = self.numbers.cmp(&other.numbers);
        if release != Ordering::Equal {
            return release;
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                for (a, b) in self.pre.iter().zip(&other.pre) {
                    let order = match (a.parse::<u64>(), b.parse::<u64>()) {
                        (Ok(x), Ok(y)) => x.cmp(&y),
                        (Ok(_), Err(_)) => Ordering::Less,
                        (Err(_), Ok(_)) => Ordering::Greater,
                        (Err(_), Err(_)) => a.cmp(b),
                    };
                    if order != Ordering::Equal {
                        return order;
                    }
                }
                self.pre.len().cmp(&other.pre.len())
            }
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} is a version"))
    }

    #[test]
    fn numeric_not_textual_order() {
        assert!(v("2.10.0") > v("2.9.3"));
        assert!(v("10.0") > v("9.99.99"));
        assert!(v("2.4.1") > v("2.4"));
        assert_eq!(v("2.4").cmp(&v("2.4.0")), Ordering::Equal);
        assert_eq!(v("v2.4.0").cmp(&v("2.4")), Ordering::Equal);
        assert!(v("10.3.1.2") > v("10.3.1"));
        assert_eq!(v("2.4.0+417").cmp(&v("2.4.0+1")), Ordering::Equal);
    }

    #[test]
    fn pre_releases_come_before_their_release() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1-rc.1",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn what_is_not_a_version() {
        for bad in [
            "",
            "abc",
            "2..4",
            "2.4.",
            ".2",
            "2.x",
            "2.4.0-",
            "2.4.0-beta..1",
            "2.4.0-bêta",
            "1.2.3.4.5.6.7.8.9",
            "99999999999999999999",
            "2,4",
            "2.4 beta",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
        assert_eq!(v(" 2.4.0 ").to_string(), "2.4.0");
    }
}
