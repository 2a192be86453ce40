//! Strict `application/x-www-form-urlencoded` requests: reading a body (content type,
//! size and time limits), decoding it or a query string, and encoding a value.
//!
//! Stricter than a general form parser on purpose: RFC 6749 §3.1 and §3.2 forbid
//! repeating a parameter, and bytes that are not valid percent-encoded UTF-8 are
//! rejected rather than repaired, so that what was authenticated is exactly what was
//! sent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest as _, Request};
use axum::http::{header, HeaderMap, StatusCode};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::protocol::errors::OAuthError;

/// OAuth requests are a few hundred bytes; anything near this is not one.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// A client that announces a body and does not send it is cut off after this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Everything but RFC 3986 unreserved characters is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Reads a form body: checks the content type, the size limit and the time limit, and
/// decodes it. Duplicate-parameter errors name the parameter only if it is one of
/// `known` (other names are not echoed back).
pub async fn read(request: Request, known: &[&str]) -> Result<Form, OAuthError> {
    require_form_content_type(request.headers())?;
    let body = read_body(request).await?;
    Form::parse(&body).map_err(|err| match err {
        FormError::Malformed => {
            OAuthError::invalid_request("the request body is not valid form-urlencoded UTF-8")
        }
        FormError::Duplicate(name) if known.contains(&name.as_str()) => {
            OAuthError::invalid_request(format!("parameter {name} is included more than once"))
        }
        FormError::Duplicate(_) => {
            OAuthError::invalid_request("a parameter is included more than once")
        }
    })
}

/// The whole request body, within the size limit (set by the route's
/// `DefaultBodyLimit`, [`MAX_BODY_BYTES`]) and the time limit.
pub async fn read_body(request: Request) -> Result<Bytes, OAuthError> {
    tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, &()))
        .await
        .map_err(|_| OAuthError::request_timeout())?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                OAuthError::payload_too_large(MAX_BODY_BYTES)
            } else {
                OAuthError::invalid_request("the request body could not be read")
            }
        })
}

fn require_form_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if is_form {
        Ok(())
    } else {
        Err(OAuthError::invalid_request(
            "the request body must be application/x-www-form-urlencoded",
        ))
    }
}

/// Percent-encodes a query or form value (space as `%20`).
pub fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

#[derive(Debug, PartialEq, Eq)]
pub enum FormError {
    /// Bad percent-encoding or invalid UTF-8.
    Malformed,
    /// A parameter appears more than once (its decoded name).
    Duplicate(String),
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormError::Malformed => f.write_str("malformed form encoding"),
            FormError::Duplicate(name) => write!(f, "parameter {name} is repeated"),
        }
    }
}

/// Decoded form parameters, each name at most once.
#[derive(Debug, Default)]
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        let mut params = HashMap::new();
        for pair in body
            .split(|&byte| byte == b'&')
            .filter(|pair| !pair.is_empty())
        {
            let (name, value) = match pair.iter().position(|&byte| byte == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            let name = decode_component(name)?;
            let value = decode_component(value)?;
            if params.contains_key(&name) {
                return Err(FormError::Duplicate(name));
            }
            params.insert(name, value);
        }
        Ok(Self(params))
    }

    /// The value of `name`. RFC 6749 §3.1: a parameter sent without a value is treated
    /// as omitted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }
}

/// Decodes one form-urlencoded component: `+` is a space, `%XX` a byte, and the result
/// must be UTF-8. Also used for HTTP Basic client credentials (RFC 6749 §2.3.1).
pub fn decode_component(encoded: &[u8]) -> Result<String, FormError> {
    let mut index = 0;
    while index < encoded.len() {
        if encoded[index] == b'%' {
            let escape = encoded
                .get(index + 1..index + 3)
                .ok_or(FormError::Malformed)?;
            if !escape.iter().all(u8::is_ascii_hexdigit) {
                return Err(FormError::Malformed);
            }
            index += 3;
        } else {
            index += 1;
        }
    }
    let spaced: Vec<u8> = encoded
        .iter()
        .map(|&byte| if byte == b'+' { b' ' } else { byte })
        .collect();
    percent_decode(&spaced)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| FormError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        let form = Form::parse(
            b"grant_type=client_credentials&scope=read%3Adata+write%3Adata&&empty=&flag",
        )
        .expect("parse");
        assert_eq!(form.get("grant_type"), Some("client_credentials"));
        assert_eq!(form.get("scope"), Some("read:data write:data"));
        assert_eq!(form.get("empty"), None);
        assert_eq!(form.get("flag"), None);
        assert_eq!(form.get("missing"), None);
    }

    #[test]
    fn rejects_repeated_parameters_even_when_empty() {
        assert_eq!(
            Form::parse(b"scope=a&scope=b").unwrap_err(),
            FormError::Duplicate("scope".to_owned())
        );
        assert_eq!(
            Form::parse(b"scope=&sc%6Fpe=b").unwrap_err(),
            FormError::Duplicate("scope".to_owned())
        );
    }

    #[test]
    fn rejects_bad_escapes_and_invalid_utf8() {
        for body in [&b"a=%zz"[..], b"a=%4", b"a=%", b"a=%ff%fe", b"a=\xff"] {
            assert_eq!(
                Form::parse(body).unwrap_err(),
                FormError::Malformed,
                "{body:?}"
            );
        }
    }

    #[test]
    fn component_decoding() {
        assert_eq!(decode_component(b"a+b%2Bc%3A").expect("decode"), "a b+c:");
        assert_eq!(decode_component(b"caf%C3%A9").expect("decode"), "caf\u{e9}");
    }

    #[test]
    fn component_encoding_round_trips() {
        let value = "a b+c:/?&=~\u{e9}";
        assert_eq!(encode_component(value), "a%20b%2Bc%3A%2F%3F%26%3D~%C3%A9");
        assert_eq!(
            decode_component(encode_component(value).as_bytes()).expect("decode"),
            value
        );
    }
}
