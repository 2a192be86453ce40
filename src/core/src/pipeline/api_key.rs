//! Stage: API-key authentication. The key's digest is looked up in the key set
//! (inline, or polled from the token service); its consumer becomes the caller.
//! What a key stands for (caller, claims, identity headers) is built on its
//! first use and kept with the key set: later requests with it only look it up.

use super::decide::{unavailable, Authenticated, Authorizer, Failure};
use super::identity_headers::header_safe;
use crate::apikey::{Consumer, KeyEntry, KeyIdentity};
use crate::config::ApiKeySource;
use crate::credentials::{HeaderEdit, RequestView};
use crate::decision::Reason;
use crate::identity::{Caller, TokenDigest};
use crate::policy::Rule;
use crate::ratelimit::{LimitCheck, ValueKind};
use serde_json::{Map, Value};
use std::sync::Arc;

impl Authorizer<'_> {
    pub(super) fn authenticate_api_key(
        &self,
        key: &str,
        rule: &Rule,
        req: &RequestView<'_>,
    ) -> Result<Authenticated, Failure> {
        let s = self.settings;
        let requirement = &rule.requirement;
        let k = s.api_keys.as_ref().ok_or(Reason::MissingCredentials)?;
        let set = match &k.key_set {
            ApiKeySource::Local(set) => set.clone(),
            ApiKeySource::Remote(src) => self
                .remote
                .api_keys()
                .ok_or_else(|| unavailable(Reason::ApiKeysUnavailable, src))?,
        };
        let hash = TokenDigest::of(key);
        let digest = k.hashing.digest_from_sha256(key, &hash.0);
        let (consumer, entry) = set.verify_digest(&digest, req.client_ip, self.now)?;
        let known = entry
            .identity
            .get_or_init(|| Arc::new(self.key_identity(consumer, entry)));
        let scopes: Vec<&str> = consumer.scopes.iter().map(String::as_str).collect();
        if !requirement.allow_anonymous {
            requirement
                .authorize(&scopes, &[], &known.claims)
                .map_err(|r| Failure::from(r).of(&known.caller))?;
        }
        let mut limits = self.limit_checks(rule, req, Some((&known.caller, &known.claims)));
        let plan = consumer
            .plan
            .as_ref()
            .and_then(|plan| s.rate_limits.plans.iter().find(|(name, _)| name == plan));
        for &policy in plan.map(|(_, ids)| ids.as_slice()).unwrap_or_default() {
            if !limits.iter().any(|c| c.policy == policy) {
                limits.push(LimitCheck {
                    policy,
                    value: consumer.id.clone(),
                    kind: ValueKind::Consumer,
                });
            }
        }
        Ok(Authenticated {
            caller: Arc::clone(&known.caller),
            identity: Arc::clone(&known.headers),
            digest: hash,
            limits,
            proof: None,
        })
    }

    /// The caller, claims and identity headers of a key of `consumer`.
    fn key_identity(&self, consumer: &Consumer, entry: &KeyEntry) -> KeyIdentity {
        let scope = consumer.scopes.join(" ");
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from(consumer.id.as_str()));
        claims.insert("client_id".into(), Value::from(consumer.id.as_str()));
        claims.insert("scope".into(), Value::from(scope.as_str()));
        if let Some(tenant) = &consumer.tenant {
            claims.insert("tenant".into(), Value::from(tenant.as_str()));
        }
        let caller = Arc::new(Caller {
            provider: "api_key".to_string(),
            subject: Some(consumer.id.clone()),
            client_id: Some(consumer.id.clone()),
            consumer: Some(consumer.id.clone()),
            tenant: consumer.tenant.clone(),
            api_key_id: Some(entry.id.clone()),
            jti: None,
        });
        let id = &self.settings.identity;
        let mut headers: Vec<HeaderEdit> = Vec::with_capacity(7);
        let mut set_header = |name: &str, value: &str| {
            if header_safe(value) {
                headers.push(HeaderEdit::Set(name.to_string(), value.to_string()));
            }
        };
        set_header(&id.subject, &consumer.id);
        set_header(&id.client_id, &consumer.id);
        set_header(&id.consumer, &consumer.id);
        set_header(&id.api_key_id, &entry.id);
        set_header(&id.scopes, &scope);
        set_header(&id.provider, "api_key");
        if let Some(tenant) = &consumer.tenant {
            set_header(&id.tenant, tenant);
        }
        KeyIdentity {
            caller,
            claims,
            headers: headers.into(),
        }
    }
}
