//! Names as upstream stacks read them, so that a name Tollgate owns is owned
//! under every spelling an upstream would take for it.
//!
//! CGI, WSGI, PHP, Rack and nginx read a header name case-insensitively and
//! fold `-` and `_` into one character (`x_tollgate_subject` is
//! `HTTP_X_TOLLGATE_SUBJECT`, as is `x-tollgate-subject`); PHP also turns `.`
//! and spaces in parameter and cookie names into `_`. Frameworks percent-decode
//! parameter and cookie names, some of them twice. So names compare here with
//! ASCII case folded and every byte that is not a letter or digit taken as the
//! same separator; parameter and cookie names are percent-decoded first.

use std::borrow::Cow;

/// Letters and digits compare case-insensitively; all other bytes are one separator.
fn fold(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() {
        b.to_ascii_lowercase()
    } else {
        b'_'
    }
}

/// Whether two names are the same to an upstream.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// Whether `name` starts with `prefix`, as an upstream reads both.
pub fn starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| same(head, prefix))
}

/// Whether a raw query-parameter or cookie name is `wanted` to an upstream.
pub fn same_param(raw: &[u8], wanted: &str) -> bool {
    same(&decoded(raw), wanted.as_bytes())
}

/// Decoding rounds: `%252541` is three escapes deep; more is not a name.
const MAX_ROUNDS: usize = 4;

/// A parameter or cookie name after every decoding an upstream might apply:
/// `%XX`, IIS-style `%uXXXX`, `+` as a space, repeated until nothing changes.
/// Malformed escapes stay as they are (a lenient decoder keeps them too).
/// Borrows unless there is something to decode.
pub fn decoded(raw: &[u8]) -> Cow<'_, [u8]> {
    let mut name = Cow::Borrowed(raw);
    for _ in 0..MAX_ROUNDS {
        if !name.iter().any(|b| *b == b'%' || *b == b'+') {
            break;
        }
        let next = decode_once(&name);
        if next == *name {
            break;
        }
        name = Cow::Owned(next);
    }
    name
}

fn decode_once(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let escape = match b {
            b'%' => escape_at(s, i + 1),
            _ => None,
        };
        match (b, escape) {
            (_, Some((decoded, len))) => {
                out.push(decoded);
                i += 1 + len;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The byte an escape after `%` at `at` stands for, and the escape's length.
/// A `%uXXXX` code point beyond ASCII stands as a separator: it is no letter
/// of any name Tollgate owns, and it must not hide one.
fn escape_at(s: &[u8], at: usize) -> Option<(u8, usize)> {
    if let Some(hex) = s.get(at..at + 2) {
        if let Some(b) = hex_value(hex) {
            return Some((b as u8, 2));
        }
    }
    match (s.get(at), s.get(at + 1..at + 5)) {
        (Some(b'u' | b'U'), Some(hex)) => {
            let code = hex_value(hex)?;
            Some((
                u8::try_from(code).ok().filter(u8::is_ascii).unwrap_or(b'_'),
                5,
            ))
        }
        _ => None,
    }
}

fn hex_value(hex: &[u8]) -> Option<u32> {
    hex.iter().try_fold(0u32, |acc, &h| {
        let digit = char::from(h).to_digit(16)?;
        Some(acc * 16 + digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_spellings_fold_case_and_separators() {
        for spelling in [
            "x-tollgate-subject",
            "x_tollgate_subject",
            "X_TOLLGATE-Subject",
            "x.tollgate.subject",
            "X-Tollgate_Subject",
        ] {
            assert!(
                same(spelling.as_bytes(), b"x-tollgate-subject"),
                "{spelling}"
            );
            assert!(
                starts_with(spelling.as_bytes(), b"x-tollgate-"),
                "{spelling}"
            );
        }
        assert!(!same(b"x-tollgate-subjects", b"x-tollgate-subject"));
        assert!(!same(b"x--tollgate-subject", b"x-tollgate-subject"));
        assert!(!starts_with(b"x-tollgat", b"x-tollgate-"));
        assert!(!starts_with(b"x-tollgatex", b"x-tollgate-"));
    }

    #[test]
    fn parameter_names_are_decoded_before_comparing() {
        for raw in [
            "access_token",
            "ACCESS_TOKEN",
            "access%5Ftoken",
            "access%5ftoken",
            "%61ccess_token",
            "access%255Ftoken",
            "access%25255Ftoken",
            "access%u005Ftoken",
            "access+token",
            "access.token",
            "access-token",
        ] {
            assert!(same_param(raw.as_bytes(), "access_token"), "{raw}");
        }
        for raw in [
            "access_tokens",
            "access%5token",
            "accesstoken",
            "access__token",
        ] {
            assert!(!same_param(raw.as_bytes(), "access_token"), "{raw}");
        }
    }

    #[test]
    fn decoding_borrows_plain_names_and_keeps_malformed_escapes() {
        assert!(matches!(decoded(b"plain_name"), Cow::Borrowed(_)));
        assert_eq!(&*decoded(b"a%zzb%"), b"a%zzb%");
        assert_eq!(&*decoded(b"%u00e9%u"), b"_%u");
        assert_eq!(&*decoded(b"%2525252541"), b"%41", "bounded rounds");
    }
}
