//! Stage: the verified identity as headers for the upstream. (What the client
//! may not hand the upstream is removed by `crate::upstream::purge`.)

use super::decide::Authorizer;
use crate::claims::ClaimPath;
use crate::config::Provider;
use crate::credentials::HeaderEdit;
use crate::decision::Reason;
use crate::jwt::DecodedToken;
use serde_json::{Map, Value};

impl Authorizer<'_> {
    /// The verified identity as headers. An empty claim is left out; a claim
    /// with control characters refuses the token
    /// ([`Reason::UnsafeIdentityClaim`]): forwarding the request without the
    /// identity it was authenticated as is never an option.
    pub(super) fn identity_headers(
        &self,
        p: &Provider,
        t: &DecodedToken<'_>,
        scopes: &[&str],
    ) -> Result<Vec<HeaderEdit>, Reason> {
        let id = &self.settings.identity;
        let claim_str = |name: &str| t.claims.get(name).and_then(Value::as_str);
        let mut out = Vec::with_capacity(6 + p.claim_to_headers.len());
        let mut unsafe_claim = false;
        let mut set = |name: &str, value: Option<String>| match value {
            Some(v) if v.chars().any(char::is_control) => unsafe_claim = true,
            Some(v) if !v.is_empty() => out.push(HeaderEdit::Set(name.to_string(), v)),
            _ => {}
        };
        set(&id.subject, claim_str("sub").map(str::to_string));
        set(
            &id.client_id,
            first_string(&p.client_id_claims, &t.claims).map(str::to_string),
        );
        set(&id.scopes, Some(scopes.join(" ")).filter(|s| !s.is_empty()));
        set(&id.issuer, Some(p.issuer.clone()));
        set(&id.provider, Some(p.name.clone()));
        set(
            &id.dpop_jkt,
            t.claims
                .get("cnf")
                .and_then(|cnf| cnf.get("jkt"))
                .and_then(Value::as_str)
                .map(str::to_string),
        );
        for (claim, header) in &p.claim_to_headers {
            set(header, claim.lookup(&t.claims).and_then(claim_header_value));
        }
        if let Some(header) = &p.forward_payload_header {
            // The payload segment is already base64url JSON, exactly as signed.
            let payload = t.signing_input.split('.').nth(1).map(str::to_string);
            set(header, payload);
        }
        if unsafe_claim {
            return Err(Reason::UnsafeIdentityClaim);
        }
        Ok(out)
    }
}

/// The first of `paths` that holds a string.
pub(super) fn first_string<'a>(
    paths: &[ClaimPath],
    claims: &'a Map<String, Value>,
) -> Option<&'a str> {
    paths.iter().find_map(|p| p.lookup(claims)?.as_str())
}

/// Scalars and arrays of scalars become header values; objects do not.
pub(super) fn claim_header_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::Array(_) | Value::Object(_) | Value::Null => None,
                    other => claim_header_value(other),
                })
                .collect();
            parts.map(|p| p.join(","))
        }
        Value::Object(_) | Value::Null => None,
    }
}

/// No control characters (header injection), no empty values.
pub(super) fn header_safe(v: &str) -> bool {
    !v.is_empty() && !v.chars().any(|c| c.is_control())
}
