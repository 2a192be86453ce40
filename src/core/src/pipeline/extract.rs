//! Stage: credential extraction. Finds the one credential the rule accepts:
//! an API key (recognised by its own headers or prefix) before a JWT, and a JWT
//! only where the rule's providers read tokens.

use super::decide::Authorizer;
use crate::credentials::{find_token, RequestView, TokenLocation};
use crate::policy::Requirement;
use std::borrow::Cow;

/// A credential found in a request.
pub(super) enum Credential {
    /// A JWT, and the index of where it was found in `locations_for`.
    Jwt(String, usize),
    ApiKey(String),
}

impl Authorizer<'_> {
    /// An API key (when the rule accepts them and one is present) wins over
    /// a JWT: keys are recognised by their own headers or prefix.
    pub(super) fn find_credential(
        &self,
        req: &RequestView<'_>,
        requirement: &Requirement,
        jwt_locations: &[TokenLocation],
    ) -> Option<Credential> {
        if let (true, Some(k)) = (requirement.accept_api_key, &self.settings.api_keys) {
            if let Some((key, _)) = find_token(req, &k.headers) {
                return Some(Credential::ApiKey(key));
            }
            if let Some((location, prefix)) = &k.bearer {
                if let Some((key, _)) = find_token(req, std::slice::from_ref(location))
                    .filter(|(v, _)| v.starts_with(prefix.as_str()))
                {
                    return Some(Credential::ApiKey(key));
                }
            }
            if requirement.api_key_in_query {
                if let Some((key, _)) = find_token(req, std::slice::from_ref(&k.query)) {
                    return Some(Credential::ApiKey(key));
                }
            }
        }
        if !requirement.accept_jwt {
            return None;
        }
        find_token(req, jwt_locations).map(|(token, at)| Credential::Jwt(token, at))
    }

    /// Where to look for a token on this rule: every provider's locations,
    /// or only those of the providers the rule accepts.
    pub(super) fn locations_for(&self, requirement: &Requirement) -> Cow<'_, [TokenLocation]> {
        let s = self.settings;
        match &requirement.providers {
            None => Cow::Borrowed(&s.token_locations),
            Some(ids) => {
                let mut locs: Vec<TokenLocation> = Vec::new();
                for loc in ids
                    .iter()
                    .filter_map(|&id| s.provider(id))
                    .flat_map(|p| p.locations.iter())
                {
                    if !locs.contains(loc) {
                        locs.push(loc.clone());
                    }
                }
                Cow::Owned(locs)
            }
        }
    }
}
