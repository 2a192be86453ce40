//! The request pipeline, in the order every request goes through it:
//!
//! 1. **lock-out** (`lockout`): an address locked out for guessing gets `429`;
//! 2. **context** (`decide`, `crate::context`): the rule's conditions on the
//!    request alone (client address, country, time windows, headers);
//! 3. **client certificate** (`certificate`): the one the matched rule requires, if any;
//! 4. **credential extraction** (`extract`): the one credential the matched rule accepts;
//! 5. **verification** (`verify`, `api_key`): fresh or from the token cache, then
//!    one validity-window check and the certificate binding for both;
//! 6. **revocation** (`verify`): the issuer's revocation feed;
//! 7. **policy** (`decide`): scopes and claims of the rule, then the device
//!    binding and step-up authentication (`crate::step_up`, RFC 9470);
//! 7. **anomaly signals** (`signals`): a suspended credential is refused; uses
//!    and refusals are recorded for the heuristics;
//! 8. **limits** (`limits`): counted only once everything else allowed the request;
//!    then **remote limits** (`remote_limits`): one rate-limit service call per
//!    remote policy, only once the local ones admitted it;
//! 9. **upstream edits**: credentials, identity look-alikes and method overrides
//!    removed (`crate::upstream`, on every route), verified identity set
//!    (`identity_headers`), the client certificate's identity on rules that check it
//!    (`certificate`).
//!
//! Every decision goes through [`record`] once: the stats, and the audit event
//! (denials always, allowed requests as sampled).
//!
//! Whatever must wait on the host is a [`Step`] the pipeline returns: the filter
//! crate maps steps to host calls and calls [`resume`] (or, after a rate-limit
//! call, [`resume_rate_limit`]) when a wait is over.

mod api_key;
mod certificate;
mod decide;
mod extract;
mod identity_headers;
mod limits;
mod lockout;
mod remote_limits;
mod signals;
mod verify;

pub use decide::{Authorizer, Outcome};
pub use remote_limits::{resume_rate_limit, PendingLimits, RateLimitAnswer, RateLimitCall};

use crate::anomaly::Signal;
use crate::apikey::KeySet as ApiKeySet;
use crate::config::ProviderId;
use crate::credentials::{HeaderEdit, RequestView};
use crate::decision::{render_denial, render_dpop_denial, Denial, Reason};
use crate::dpop;
use crate::host::{DecisionRecord, Host};
use crate::identity::{Caller, TokenDigest};
use crate::jwk::KeySet;
use crate::ratelimit::table::Churn;
use crate::ratelimit::PolicyId;
use crate::remote::FetchTrigger;
use crate::revocation::RevocationList;
use crate::worker::{DocId, Worker};
use std::sync::Arc;

/// What providers fetched from elsewhere: keys, revocation lists, key sets.
pub trait RemoteState {
    /// The current keys of a remote provider, `None` if none have loaded yet.
    fn remote_keys(&self, provider: ProviderId) -> Option<Arc<KeySet>>;
    /// Whether a token with this unknown `kid` may ask for a key fetch now.
    fn may_refetch(&self, provider: ProviderId, kid: Option<&str>) -> bool;
    /// The provider's revocation list, `None` if it has not loaded yet.
    fn revocations(&self, provider: ProviderId) -> Option<Arc<RevocationList>>;
    /// The fetched API-key set, `None` if it has not loaded yet.
    fn api_keys(&self) -> Option<Arc<ApiKeySet>>;
}

/// What the filter does next with the request.
#[derive(Debug)]
pub enum Step {
    /// Let it through after applying `edits` then `identity` to its headers;
    /// add `response_headers` to the upstream's response.
    Continue {
        edits: Vec<HeaderEdit>,
        identity: Arc<[HeaderEdit]>,
        response_headers: Vec<(&'static str, String)>,
    },
    /// Answer it with this response.
    Respond(Denial),
    /// Hold it until the callout `token` (fetching `doc`) answers, feed the
    /// answer to [`Worker::complete_fetch`], then call [`resume`] with
    /// `received_us` in the request.
    Wait {
        token: u32,
        doc: DocId,
        received_us: u64,
    },
    /// Hold it (see [`Worker::park`]) until the fetch of `doc` that another
    /// request or worker started ends: [`Worker::complete_fetch`] and
    /// [`Worker::on_tick`] hand it back, to [`resume`].
    Park { doc: DocId, received_us: u64 },
    /// Hold it while the rate-limit service is asked (see [`RateLimitCall`]),
    /// then hand the answer to [`resume_rate_limit`].
    CallRateLimit(Box<RateLimitCall>),
}

/// A request everything but its remote limits has admitted.
#[derive(Debug)]
struct Admitted {
    reason: Reason,
    rule: Option<usize>,
    edits: Vec<HeaderEdit>,
    identity: Arc<[HeaderEdit]>,
    caller: Option<Arc<Caller>>,
    token_hash: Option<TokenDigest>,
    signals: Vec<Signal>,
    tightest: limits::TightestLimit,
}

/// Whether the credential stages may still ask for a key refetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refetch {
    Allowed,
    Spent,
}

/// A request's headers have arrived.
pub fn on_request(worker: &Worker, host: Host<'_>, req: &RequestView<'_>) -> Step {
    let now = host.clock.now();
    let req = RequestView {
        received_us: now.as_micros() as u64,
        ..req.clone()
    };
    let now_ms = now.as_millis() as u64;
    if let Some(denial) = lockout::check(&worker.settings, host, req.client_ip, now_ms) {
        record(worker, host, &req, Decided::denied(&denial, None));
        return Step::Respond(denial);
    }
    run(worker, host, &req, Refetch::Allowed, now_ms)
}

/// A [`Step::Wait`] is over: decide again, without asking for another fetch.
/// `req.received_us` is the step's.
pub fn resume(worker: &Worker, host: Host<'_>, req: &RequestView<'_>) -> Step {
    let now_ms = host.clock.now().as_millis() as u64;
    run(worker, host, req, Refetch::Spent, now_ms)
}

fn run(
    worker: &Worker,
    host: Host<'_>,
    req: &RequestView<'_>,
    refetch: Refetch,
    now_ms: u64,
) -> Step {
    match worker.authorize(req, host.shared, now_ms, refetch == Refetch::Allowed) {
        Outcome::Allow {
            reason,
            rule,
            edits,
            identity,
            caller,
            token_hash,
            limits,
            proof,
        } => {
            let mut signals = Vec::new();
            let authenticated = reason == Reason::Authenticated;
            if authenticated
                && (signals::suspended(worker, token_hash, now_ms)
                    || signals::on_use(
                        worker,
                        host,
                        token_hash,
                        req.client_ip,
                        now_ms,
                        &mut signals,
                    ))
            {
                let denial =
                    render_denial(Reason::CredentialSuspended, &worker.settings.realm, None, 0);
                let decided = Decided {
                    rule,
                    caller: caller.as_deref(),
                    fingerprint: token_hash,
                    signals: &signals,
                    ..Decided::denied(&denial, None)
                };
                record(worker, host, req, decided);
                return Step::Respond(denial);
            }
            if let Err(denial) = dpop_once(worker, host, proof, now_ms) {
                let decided = Decided {
                    rule,
                    caller: caller.as_deref(),
                    fingerprint: token_hash,
                    signals: &signals,
                    ..Decided::denied(&denial, None)
                };
                record(worker, host, req, decided);
                return Step::Respond(denial);
            }
            match limits::enforce(&worker.settings.rate_limits, host, &limits, now_ms) {
                Err((policy, denial)) => {
                    signals::on_refusal(
                        worker,
                        host,
                        caller.as_deref(),
                        token_hash,
                        now_ms,
                        &mut signals,
                    );
                    let decided = Decided {
                        rule,
                        caller: caller.as_deref(),
                        fingerprint: token_hash,
                        signals: &signals,
                        ..Decided::denied(&denial, Some(policy))
                    };
                    record(worker, host, req, decided);
                    Step::Respond(denial)
                }
                Ok(tightest) => {
                    let admitted = Admitted {
                        reason,
                        rule,
                        edits,
                        identity,
                        caller,
                        token_hash,
                        signals,
                        tightest,
                    };
                    remote_limits::start(worker, host, req, admitted, limits, now_ms)
                }
            }
        }
        Outcome::Deny { denial, .. }
            if matches!(
                denial.reason,
                Reason::KeysUnavailable
                    | Reason::RevocationsUnavailable
                    | Reason::ApiKeysUnavailable
                    | Reason::UnknownKey
            ) && !worker.sync(host.shared, now_ms).is_empty() =>
        {
            // Another worker loaded them (or the rotated keys) since this one
            // last looked.
            run(worker, host, req, Refetch::Spent, now_ms)
        }
        Outcome::Deny {
            denial,
            rule,
            token_hash,
            caller,
        } => {
            if denial.reason.is_credential_guess() {
                lockout::record_failure(&worker.settings, host, req.client_ip, now_ms);
            }
            let mut signals = Vec::new();
            signals::on_refusal(
                worker,
                host,
                caller.as_deref(),
                token_hash,
                now_ms,
                &mut signals,
            );
            let decided = Decided {
                rule,
                caller: caller.as_deref(),
                fingerprint: token_hash,
                signals: &signals,
                ..Decided::denied(&denial, None)
            };
            record(worker, host, req, decided);
            Step::Respond(denial)
        }
        Outcome::FetchKeys { provider, kid } => {
            let doc = DocId::Keys(provider);
            // Another worker may already have the new keys (another document's
            // change says nothing about them).
            if worker.sync(host.shared, now_ms).contains(&doc) {
                return run(worker, host, req, Refetch::Spent, now_ms);
            }
            let received_us = req.received_us;
            if let Some(token) = worker.start_fetch(host, doc, FetchTrigger::OnDemand, now_ms) {
                worker.note_kid_fetched(provider, kid.as_deref(), now_ms);
                return Step::Wait {
                    token,
                    doc,
                    received_us,
                };
            }
            // A rotation: many requests with the new `kid` at once, one fetch. Or
            // the on-demand budget is spent (a flood of unknown `kid`s): the
            // request waits for the next fetch the budget allows, which a tick
            // starts, instead of being refused a key that may have been published.
            if worker.may_park() {
                worker.note_kid_fetched(provider, kid.as_deref(), now_ms);
                return Step::Park { doc, received_us };
            }
            run(worker, host, req, Refetch::Spent, now_ms)
        }
    }
}

/// Stage: a DPoP proof's `jti` is used once, across the workers (shared data).
fn dpop_once(
    worker: &Worker,
    host: Host<'_>,
    proof: Option<decide::ProofUse>,
    now_ms: u64,
) -> Result<(), Denial> {
    let Some(p) = proof else {
        return Ok(());
    };
    let mut churn = Churn::default();
    let table = &worker.settings.rate_limits.table;
    let fresh = dpop::remember_jti(table, host.shared, &p.proof, &p.rules, now_ms, &mut churn);
    host.metrics.churn(&churn);
    if fresh {
        Ok(())
    } else {
        let r = Reason::DpopProofReplayed;
        Err(render_dpop_denial(
            r,
            &p.rules.algorithms,
            r.description(),
            None,
        ))
    }
}

/// The request passed every stage.
fn admit(worker: &Worker, host: Host<'_>, req: &RequestView<'_>, a: Admitted) -> Step {
    let decided = Decided {
        reason: a.reason,
        status: None,
        rule: a.rule,
        caller: a.caller.as_deref(),
        fingerprint: a.token_hash,
        policy: None,
        signals: &a.signals,
    };
    record(worker, host, req, decided);
    Step::Continue {
        edits: a.edits,
        identity: a.identity,
        response_headers: a.tightest.into_headers(),
    }
}

/// A remote policy refused a request the earlier stages admitted: over its
/// limit (a refusal the anomaly heuristics hear of), or its service failed and
/// the policy fails closed (not the caller's doing).
fn refuse(
    worker: &Worker,
    host: Host<'_>,
    req: &RequestView<'_>,
    denial: Denial,
    policy: PolicyId,
    mut a: Admitted,
    now_ms: u64,
) -> Step {
    if denial.reason == Reason::RateLimited {
        let caller = a.caller.as_deref();
        signals::on_refusal(worker, host, caller, a.token_hash, now_ms, &mut a.signals);
    }
    let decided = Decided {
        rule: a.rule,
        caller: a.caller.as_deref(),
        fingerprint: a.token_hash,
        signals: &a.signals,
        ..Decided::denied(&denial, Some(policy))
    };
    record(worker, host, req, decided);
    Step::Respond(denial)
}

/// What was decided about a request, for [`record`].
struct Decided<'a> {
    reason: Reason,
    status: Option<u32>,
    rule: Option<usize>,
    caller: Option<&'a Caller>,
    fingerprint: Option<TokenDigest>,
    policy: Option<PolicyId>,
    signals: &'a [Signal],
}

impl Decided<'_> {
    fn denied(denial: &Denial, policy: Option<PolicyId>) -> Decided<'static> {
        Decided {
            reason: denial.reason,
            status: Some(denial.status),
            rule: None,
            caller: None,
            fingerprint: None,
            policy,
            signals: &[],
        }
    }
}

/// Every decision is counted and, unless sampled out, goes to the audit sink, once.
fn record(worker: &Worker, host: Host<'_>, req: &RequestView<'_>, d: Decided<'_>) {
    let time_us = host.clock.now().as_micros() as u64;
    let latency_us = time_us.saturating_sub(req.received_us);
    host.metrics.decision(d.reason, d.rule, latency_us);
    if d.status.is_none() && d.signals.is_empty() && !worker.sample_allow() {
        return;
    }
    let settings = &worker.settings;
    host.audit.decision(&DecisionRecord {
        time_us,
        latency_us,
        reason: d.reason,
        status: d.status,
        rule: d
            .rule
            .and_then(|i| settings.rules.get(i))
            .map(|r| r.name.as_str()),
        method: req.method,
        path: req.path_without_query(),
        request_id: req
            .header_values("x-request-id")
            .next()
            .and_then(|v| std::str::from_utf8(v).ok()),
        client_ip: req.client_ip,
        caller: d.caller,
        fingerprint: d.fingerprint,
        policy: d
            .policy
            .and_then(|p| settings.rate_limits.policy(p))
            .map(|p| p.name.as_str()),
        signals: d.signals,
    });
}

#[cfg(test)]
mod tests {
    //! The pipeline against a fake host: stage order, the re-decision after a
    //! key refetch, and what is counted when.

    use super::*;
    use crate::config::parse;
    use crate::crypto::{PureVerifier, SignatureVerifier};
    use crate::host::fakes::{Audited, FakeHost};
    use crate::jwk::tests::es256_jwk;
    use crate::jwk::VerificationKey;
    use crate::jwt::DecodedToken;
    use crate::worker::FetchResponse;
    use jwt_simple::prelude::*;
    use serde_json::json;
    use std::cell::Cell;
    use std::rc::Rc;

    const NOW: u64 = 1_800_000_000;

    /// The pure verifier, counting its calls.
    struct Counting(Rc<Cell<usize>>);

    impl SignatureVerifier for Counting {
        fn verify(&self, token: &DecodedToken<'_>, key: &VerificationKey) -> bool {
            self.0.set(self.0.get() + 1);
            PureVerifier.verify(token, key)
        }
    }

    struct Fixture {
        worker: Worker,
        local: ES256KeyPair,
        verifications: Rc<Cell<usize>>,
    }

    fn fixture(edit: impl FnOnce(&mut serde_json::Value)) -> Fixture {
        let local = ES256KeyPair::generate().with_key_id("local-1");
        let jwks = json!({"keys": [es256_jwk(&local, "local-1")]}).to_string();
        let mut config = json!({
            "providers": {
                "local": {"issuer": "https://local.test", "local_jwks": {"inline_string": jwks}},
                "remote": {
                    "issuer": "https://remote.test",
                    "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"},
                                    "unknown_kid_refetch_interval": "10s"}
                }
            },
            "rules": [
                {"match": {"prefix": "/data"}, "requires": {}},
            ]
        });
        edit(&mut config);
        let verifications = Rc::new(Cell::new(0));
        Fixture {
            worker: Worker::new(
                parse(config.to_string().as_bytes()).unwrap(),
                Box::new(Counting(verifications.clone())),
            ),
            local,
            verifications,
        }
    }

    fn sign(key: &ES256KeyPair, issuer: &str, sub: &str) -> String {
        let claims = Claims::create(jwt_simple::prelude::Duration::from_secs(300))
            .with_issuer(issuer)
            .with_subject(sub);
        let mut claims = claims;
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 300));
        key.sign(claims).unwrap()
    }

    fn request<'a>(headers: &'a [(String, Vec<u8>)], ip: &'a str) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path: "/data",
            headers,
            client_ip: Some(ip),
            client_cert: None,
            received_us: 0,
        }
    }

    fn bearer(token: &str) -> Vec<(String, Vec<u8>)> {
        vec![(
            "authorization".to_string(),
            format!("Bearer {token}").into_bytes(),
        )]
    }

    fn status(step: &Step) -> u32 {
        match step {
            Step::Continue { .. } => 200,
            Step::Respond(denial) => denial.status,
            Step::Wait { .. } | Step::Park { .. } | Step::CallRateLimit(_) => 0,
        }
    }

    fn subject(step: &Step) -> Option<String> {
        let Step::Continue { identity, .. } = step else {
            return None;
        };
        identity.iter().find_map(|e| match e {
            HeaderEdit::Set(n, v) if n == "x-tollgate-subject" => Some(v.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_locked_out_address_is_refused_before_its_credential_is_looked_at() {
        let f = fixture(|c| {
            c["rate_limits"] =
                json!({"brute_force": {"max_failures": 2, "window": "60s", "lockout": "300s"}});
        });
        let host = FakeHost::at_secs(NOW);
        let garbage = bearer("not.a.token");
        // The second failure (max_failures) starts the lock-out.
        for _ in 0..2 {
            let step = on_request(&f.worker, host.host(), &request(&garbage, "192.0.2.1"));
            assert_eq!(status(&step), 401);
        }
        let good = bearer(&sign(&f.local, "https://local.test", "alice"));
        let before = f.verifications.get();
        let step = on_request(&f.worker, host.host(), &request(&good, "192.0.2.1"));
        assert_eq!(status(&step), 429);
        assert_eq!(
            f.verifications.get(),
            before,
            "a locked-out request costs no signature check"
        );
        // Another address is unaffected.
        let step = on_request(&f.worker, host.host(), &request(&good, "192.0.2.2"));
        assert_eq!(subject(&step).as_deref(), Some("alice"));
        let reasons = host.metrics.decisions.borrow().clone();
        assert_eq!(
            reasons,
            [
                Reason::MalformedToken,
                Reason::MalformedToken,
                Reason::LockedOut,
                Reason::Authenticated
            ]
        );
    }

    #[test]
    fn only_guesses_count_towards_a_lock_out() {
        let f = fixture(|c| {
            c["rate_limits"] =
                json!({"brute_force": {"max_failures": 1, "window": "60s", "lockout": "300s"}});
        });
        let host = FakeHost::at_secs(NOW);
        // Missing credentials and expired tokens are not guesses.
        let expired = {
            let mut claims = Claims::create(jwt_simple::prelude::Duration::from_secs(1))
                .with_issuer("https://local.test");
            claims.expires_at = Some(UnixTimeStamp::from_secs(NOW - 600));
            bearer(&f.local.sign(claims).unwrap())
        };
        for _ in 0..3 {
            assert_eq!(
                status(&on_request(
                    &f.worker,
                    host.host(),
                    &request(&[], "192.0.2.1")
                )),
                401
            );
            assert_eq!(
                status(&on_request(
                    &f.worker,
                    host.host(),
                    &request(&expired, "192.0.2.1")
                )),
                401
            );
        }
        let good = bearer(&sign(&f.local, "https://local.test", "alice"));
        assert_eq!(
            status(&on_request(
                &f.worker,
                host.host(),
                &request(&good, "192.0.2.1")
            )),
            200
        );
    }

    #[test]
    fn limits_count_only_requests_that_everything_else_allowed() {
        let f = fixture(|c| {
            c["rate_limits"] = json!({"policies": {
                "per-ip": {"limit": 2, "window": "60s", "key": "client_ip"}}});
            c["rules"][0]["rate_limits"] = json!(["per-ip"]);
        });
        let host = FakeHost::at_secs(NOW);
        // Denied requests do not use the allowance up.
        for _ in 0..5 {
            let step = on_request(&f.worker, host.host(), &request(&[], "192.0.2.1"));
            assert_eq!(status(&step), 401);
        }
        assert_eq!(
            host.metrics.entries.get(),
            0,
            "no counter for denied requests"
        );
        let good = bearer(&sign(&f.local, "https://local.test", "alice"));
        let statuses: Vec<u32> = (0..3)
            .map(|_| {
                status(&on_request(
                    &f.worker,
                    host.host(),
                    &request(&good, "192.0.2.1"),
                ))
            })
            .collect();
        assert_eq!(statuses, [200, 200, 429]);
        assert_eq!(host.metrics.entries.get(), 1);
        let Step::Respond(denial) =
            on_request(&f.worker, host.host(), &request(&good, "192.0.2.1"))
        else {
            panic!("expected 429");
        };
        assert_eq!(denial.reason, Reason::RateLimited);
        assert!(denial.headers.iter().any(|(n, _)| *n == "retry-after"));
        let audited = host.audit.0.borrow().clone();
        assert_eq!(audited.len(), 9, "one audit record per decision");
        assert_eq!(
            audited.last(),
            Some(&Audited {
                reason: Reason::RateLimited,
                status: Some(429),
                subject: Some("alice".into())
            })
        );
    }

    /// Loads `keys` as the remote provider's JWKS through a scheduled fetch.
    fn load_remote_keys(f: &Fixture, host: &FakeHost, keys: &[(&ES256KeyPair, &str)]) {
        let tick = f.worker.on_tick(host.host());
        let (_, doc) = tick
            .started
            .into_iter()
            .find(|(_, d)| *d == DocId::Keys(f.worker.settings.provider_named("remote").unwrap()))
            .expect("a scheduled JWKS fetch");
        let jwks =
            json!({"keys": keys.iter().map(|(k, kid)| es256_jwk(k, kid)).collect::<Vec<_>>()});
        f.worker.complete_fetch(
            host.host(),
            doc,
            &FetchResponse::Body(jwks.to_string().into_bytes(), None),
        );
    }

    #[test]
    fn an_unknown_kid_waits_for_one_refetch_then_the_request_is_decided_again() {
        let f = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        load_remote_keys(&f, &host, &[(&old, "old")]);
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(30));

        // The issuer rotated: a token signed with a key this worker has not seen.
        let new = ES256KeyPair::generate().with_key_id("new");
        let token = bearer(&sign(&new, "https://remote.test", "bob"));
        let step = on_request(&f.worker, host.host(), &request(&token, "192.0.2.1"));
        let Step::Wait { doc, .. } = step else {
            panic!("expected a wait, got {step:?}");
        };
        assert_eq!(
            doc,
            DocId::Keys(f.worker.settings.provider_named("remote").unwrap())
        );
        assert_eq!(
            host.callouts.started.borrow().len(),
            2,
            "one on-demand fetch"
        );
        assert!(
            host.metrics.decisions.borrow().is_empty(),
            "nothing decided yet"
        );

        let jwks = json!({"keys": [es256_jwk(&old, "old"), es256_jwk(&new, "new")]});
        f.worker.complete_fetch(
            host.host(),
            doc,
            &FetchResponse::Body(jwks.to_string().into_bytes(), None),
        );
        let step = resume(&f.worker, host.host(), &request(&token, "192.0.2.1"));
        assert_eq!(subject(&step).as_deref(), Some("bob"));
        assert_eq!(*host.metrics.decisions.borrow(), [Reason::Authenticated]);

        // A key the refetched set lacks too: no second fetch within the interval;
        // the request is held until a tick may fetch again.
        let stranger = ES256KeyPair::generate().with_key_id("stranger");
        let token = bearer(&sign(&stranger, "https://remote.test", "eve"));
        let step = on_request(&f.worker, host.host(), &request(&token, "192.0.2.1"));
        assert!(
            matches!(step, Step::Park { .. }),
            "held, not refused: {step:?}"
        );
        assert_eq!(host.callouts.started.borrow().len(), 2);
    }

    fn park(worker: &Worker, context: u32, doc: DocId, mut headers: Vec<(String, Vec<u8>)>) {
        headers.push((":method".into(), b"GET".to_vec()));
        headers.push((":path".into(), b"/data".to_vec()));
        worker.park(crate::worker::ParkedRequest {
            context,
            doc,
            received_us: NOW * 1_000_000,
            headers,
            client_ip: Some("192.0.2.1".into()),
            client_cert: crate::client_cert::CertificateSnapshot::UNKNOWN,
        });
    }

    #[test]
    fn a_rotation_parks_every_request_behind_one_fetch() {
        let f = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        load_remote_keys(&f, &host, &[(&old, "old")]);
        // The issuer rotates a second after the scheduled fetch.
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(1));
        let new = ES256KeyPair::generate().with_key_id("new");
        let remote = f.worker.settings.provider_named("remote").unwrap();
        let mut parked = 0;
        let mut waiting = None;
        for i in 0..20 {
            let headers = bearer(&sign(&new, "https://remote.test", &format!("user-{i}")));
            match on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1")) {
                Step::Wait { doc, .. } => waiting = Some(doc),
                Step::Park { doc, .. } => {
                    park(&f.worker, i, doc, headers);
                    parked += 1;
                }
                other => panic!("request {i}: {other:?}"),
            }
        }
        assert_eq!(waiting, Some(DocId::Keys(remote)));
        assert_eq!(parked, 19);
        assert_eq!(
            host.callouts.started.borrow().len(),
            2,
            "one on-demand fetch"
        );

        let jwks = json!({"keys": [es256_jwk(&old, "old"), es256_jwk(&new, "new")]});
        let woken = f.worker.complete_fetch(
            host.host(),
            DocId::Keys(remote),
            &FetchResponse::Body(jwks.to_string().into_bytes(), None),
        );
        assert_eq!(woken.len(), 19);
        for p in &woken {
            let step = resume(&f.worker, host.host(), &p.view());
            assert_eq!(subject(&step), Some(format!("user-{}", p.context)));
        }
    }

    #[test]
    fn a_fetch_another_worker_holds_is_waited_for_until_a_tick_sees_it() {
        let f = fixture(|_| {});
        let other = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        load_remote_keys(&f, &host, &[(&old, "old")]);
        other.worker.sync(&host.shared, NOW * 1000);
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(30));

        let new = ES256KeyPair::generate().with_key_id("new");
        let headers = bearer(&sign(&new, "https://remote.test", "bob"));
        let first = on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
        let Step::Wait { doc, .. } = first else {
            panic!("expected a wait, got {first:?}");
        };
        let second = on_request(&other.worker, host.host(), &request(&headers, "192.0.2.1"));
        assert!(matches!(second, Step::Park { .. }), "{second:?}");
        park(&other.worker, 7, doc, headers.clone());
        assert!(
            other.worker.on_tick(host.host()).woken.is_empty(),
            "still underway"
        );

        let jwks = json!({"keys": [es256_jwk(&old, "old"), es256_jwk(&new, "new")]});
        f.worker.complete_fetch(
            host.host(),
            doc,
            &FetchResponse::Body(jwks.to_string().into_bytes(), None),
        );
        let woken = other.worker.on_tick(host.host()).woken;
        assert_eq!(woken.len(), 1);
        let step = resume(&other.worker, host.host(), &woken[0].view());
        assert_eq!(subject(&step).as_deref(), Some("bob"));
        assert_eq!(host.callouts.started.borrow().len(), 2);
    }

    /// Decides what a tick hands back, after completing the fetches it started
    /// with `jwks`. Returns the steps of the requests it woke.
    fn tick_and_decide(f: &Fixture, host: &FakeHost, jwks: &serde_json::Value) -> Vec<Step> {
        let tick = f.worker.on_tick(host.host());
        let mut woken = tick.woken;
        for (_, doc) in tick.started {
            let body = FetchResponse::Body(jwks.to_string().into_bytes(), None);
            woken.extend(f.worker.complete_fetch(host.host(), doc, &body));
        }
        woken
            .iter()
            .map(|p| resume(&f.worker, host.host(), &p.view()))
            .collect()
    }

    #[test]
    fn a_flood_of_random_kids_costs_a_bounded_number_of_fetches() {
        let f = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        load_remote_keys(&f, &host, &[(&old, "old")]);
        let jwks = json!({"keys": [es256_jwk(&old, "old")]});
        let mut refused = 0;
        let mut count = |step: &Step| {
            if let Step::Respond(d) = step {
                assert_eq!(d.reason, Reason::UnknownKey);
                refused += 1;
            }
        };
        // 200 requests over 20 s, each with a kid nobody publishes; a tick a second.
        for i in 0..200u32 {
            host.clock
                .as_ref()
                .unwrap()
                .advance(std::time::Duration::from_millis(100));
            let key = ES256KeyPair::generate().with_key_id(&format!("random-{i}"));
            let headers = bearer(&sign(&key, "https://remote.test", "mallory"));
            match on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1")) {
                Step::Wait { doc, .. } => {
                    let body = FetchResponse::Body(jwks.to_string().into_bytes(), None);
                    // The fetch also wakes the requests held for it.
                    for p in f.worker.complete_fetch(host.host(), doc, &body) {
                        count(&resume(&f.worker, host.host(), &p.view()));
                    }
                    count(&resume(
                        &f.worker,
                        host.host(),
                        &request(&headers, "192.0.2.1"),
                    ));
                }
                // The budget is spent: held for the next fetch it allows.
                Step::Park { doc, .. } => park(&f.worker, i, doc, headers),
                step => count(&step),
            }
            if i % 10 == 9 {
                tick_and_decide(&f, &host, &jwks)
                    .iter()
                    .for_each(&mut count);
            }
        }
        // Held requests are decided within interval / 3 + 2 s (here 5.3 s).
        for _ in 0..6 {
            host.clock
                .as_ref()
                .unwrap()
                .advance(std::time::Duration::from_secs(1));
            tick_and_decide(&f, &host, &jwks)
                .iter()
                .for_each(&mut count);
        }
        // A kid a fetch has looked for (the last one was held for the fetches the
        // ticks made) is refused at once, without another fetch.
        let key = ES256KeyPair::generate().with_key_id("random-199");
        let headers = bearer(&sign(&key, "https://remote.test", "mallory"));
        let before = host.callouts.started.borrow().len();
        let step = on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
        assert_eq!(status(&step), 401);
        assert_eq!(host.callouts.started.borrow().len(), before);
        count(&step);
        assert_eq!(refused, 201, "every request refused, none left held");
        let on_demand = host.callouts.started.borrow().len() - 1;
        // A burst of 3, then one per 10 s / 3: at most 3 + 8 in 26 s.
        assert!(
            (3..=11).contains(&on_demand),
            "{on_demand} on-demand fetches"
        );
    }

    #[test]
    fn a_rotated_key_in_a_flood_of_random_kids_waits_for_the_next_fetch_instead_of_a_401() {
        let f = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        load_remote_keys(&f, &host, &[(&old, "old")]);
        let published = json!({"keys": [es256_jwk(&old, "old")]});
        // Random kids spend the on-demand budget (a burst of fetches).
        let mut i = 0;
        loop {
            i += 1;
            host.clock
                .as_ref()
                .unwrap()
                .advance(std::time::Duration::from_millis(1_100));
            let key = ES256KeyPair::generate().with_key_id(&format!("random-{i}"));
            let headers = bearer(&sign(&key, "https://remote.test", "mallory"));
            match on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1")) {
                Step::Wait { doc, .. } => {
                    let body = FetchResponse::Body(published.to_string().into_bytes(), None);
                    f.worker.complete_fetch(host.host(), doc, &body);
                }
                Step::Park { doc, .. } => {
                    park(&f.worker, i, doc, headers);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        // The issuer rotates now: the new key's first token is held, not refused.
        let new = ES256KeyPair::generate().with_key_id("new");
        let headers = bearer(&sign(&new, "https://remote.test", "bob"));
        let step = on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
        let Step::Park { doc, .. } = step else {
            panic!("expected the request to be held, got {step:?}");
        };
        park(&f.worker, 1_000, doc, headers);
        let rotated = json!({"keys": [es256_jwk(&old, "old"), es256_jwk(&new, "new")]});
        let mut steps = Vec::new();
        for _ in 0..5 {
            host.clock
                .as_ref()
                .unwrap()
                .advance(std::time::Duration::from_secs(1));
            steps.extend(tick_and_decide(&f, &host, &rotated));
        }
        assert_eq!(steps.len(), 2, "both held requests decided: {steps:?}");
        assert_eq!(status(&steps[0]), 401, "the random kid");
        assert_eq!(subject(&steps[1]).as_deref(), Some("bob"));
    }

    #[test]
    fn a_second_rotation_right_after_a_refetch_holds_every_request_for_the_next_one() {
        let f = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        load_remote_keys(&f, &host, &[(&old, "old")]);
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(30));
        let first = ES256KeyPair::generate().with_key_id("first");
        let headers = bearer(&sign(&first, "https://remote.test", "alice"));
        let Step::Wait { doc, .. } =
            on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"))
        else {
            panic!("expected a fetch");
        };
        let keys = |keys: &[(&ES256KeyPair, &str)]| json!({"keys": keys.iter().map(|(k, kid)| es256_jwk(k, kid)).collect::<Vec<_>>()});
        let body = FetchResponse::Body(
            keys(&[(&old, "old"), (&first, "first")])
                .to_string()
                .into_bytes(),
            None,
        );
        f.worker.complete_fetch(host.host(), doc, &body);
        // The issuer rotates again within the second on-demand fetches must keep
        // apart: every request with the newest key is held, none refused.
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_millis(200));
        let second = ES256KeyPair::generate().with_key_id("second");
        for i in 0..10 {
            let headers = bearer(&sign(&second, "https://remote.test", &format!("user-{i}")));
            let step = on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
            let Step::Park { doc, .. } = step else {
                panic!("request {i} not held: {step:?}");
            };
            park(&f.worker, i, doc, headers);
        }
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(1));
        let all = keys(&[(&old, "old"), (&first, "first"), (&second, "second")]);
        let steps = tick_and_decide(&f, &host, &all);
        let subjects: Vec<Option<String>> = steps.iter().map(subject).collect();
        assert_eq!(subjects.len(), 10);
        assert!(subjects.iter().all(Option::is_some), "{steps:?}");
    }

    #[test]
    fn a_new_kid_right_after_another_document_changed_still_gets_its_fetch() {
        let feed = |c: &mut serde_json::Value| {
            c["providers"]["remote"]["revocation_feed"] =
                json!({"http_uri": {"uri": "http://idp/revocations", "cluster": "idp"}});
        };
        let f = fixture(feed);
        let other = fixture(feed);
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        let remote = f.worker.settings.provider_named("remote").unwrap();
        let list = |jti: &str| {
            let body = json!({"revoked": [{"jti": jti, "exp": NOW + 600}]}).to_string();
            FetchResponse::Body(body.into_bytes(), None)
        };
        load_remote_keys(&f, &host, &[(&old, "old")]);
        f.worker
            .complete_fetch(host.host(), DocId::Revocations(remote), &list("a"));
        other.worker.sync(&host.shared, NOW * 1000);
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(30));
        // Worker f publishes a new revocation list; the issuer has rotated too.
        f.worker
            .complete_fetch(host.host(), DocId::Revocations(remote), &list("b"));
        let new = ES256KeyPair::generate().with_key_id("new");
        let headers = bearer(&sign(&new, "https://remote.test", "bob"));
        let step = on_request(&other.worker, host.host(), &request(&headers, "192.0.2.1"));
        let Step::Wait { doc, .. } = step else {
            panic!("expected a fetch of the keys, got {step:?}");
        };
        assert_eq!(doc, DocId::Keys(remote));
    }

    #[test]
    fn a_withdrawn_key_stops_verifying_on_every_worker_within_one_tick() {
        let f = fixture(|_| {});
        let other = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let leaked = ES256KeyPair::generate().with_key_id("leaked");
        let next = ES256KeyPair::generate().with_key_id("next");
        load_remote_keys(&f, &host, &[(&leaked, "leaked")]);
        other.worker.sync(&host.shared, NOW * 1000);
        let headers = bearer(&sign(&leaked, "https://remote.test", "alice"));
        for worker in [&f.worker, &other.worker] {
            let step = on_request(worker, host.host(), &request(&headers, "192.0.2.1"));
            assert_eq!(
                subject(&step).as_deref(),
                Some("alice"),
                "cached on both workers"
            );
        }
        // The issuer withdraws the key; the next scheduled fetch is worker f's.
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(301));
        load_remote_keys(&f, &host, &[(&next, "next")]);
        let step = on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
        assert_ne!(
            status(&step),
            200,
            "refused at once where the new set was fetched"
        );
        // The other worker's cache entry still stands on its old copy of the
        // keys until its next tick (at most 1 s): that is the window.
        let step = on_request(&other.worker, host.host(), &request(&headers, "192.0.2.1"));
        assert_eq!(status(&step), 200);
        other.worker.on_tick(host.host());
        let step = on_request(&other.worker, host.host(), &request(&headers, "192.0.2.1"));
        assert_ne!(status(&step), 200, "refused after the other worker's tick");
    }

    #[test]
    fn keys_another_worker_loaded_are_picked_up_instead_of_a_503() {
        let f = fixture(|_| {});
        let other = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let key = ES256KeyPair::generate().with_key_id("k");
        let token = bearer(&sign(&key, "https://remote.test", "carol"));
        let step = on_request(&other.worker, host.host(), &request(&token, "192.0.2.1"));
        let Step::Respond(denial) = step else {
            panic!("expected 503");
        };
        assert_eq!(
            (denial.status, denial.reason),
            (503, Reason::KeysUnavailable)
        );
        load_remote_keys(&f, &host, &[(&key, "k")]);
        let step = on_request(&other.worker, host.host(), &request(&token, "192.0.2.1"));
        assert_eq!(subject(&step).as_deref(), Some("carol"));
    }

    fn with_request_id(mut headers: Vec<(String, Vec<u8>)>, id: &str) -> Vec<(String, Vec<u8>)> {
        headers.push(("x-request-id".into(), id.as_bytes().to_vec()));
        headers
    }

    #[test]
    fn a_denial_event_names_rule_path_caller_and_fingerprint_never_the_token() {
        let f = fixture(|c| {
            c["rules"] = json!([
                {"name": "write-data", "match": {"prefix": "/data"},
                 "requires": {"scopes": {"all_of": ["write:data"]}}}
            ]);
        });
        let host = FakeHost::at_secs(NOW);
        let token = sign(&f.local, "https://local.test", "alice");
        let headers = with_request_id(bearer(&token), "req-1");
        let req = RequestView {
            method: "POST",
            path: "/data?secret-param=hunter2",
            ..request(&headers, "192.0.2.7")
        };
        assert_eq!(status(&on_request(&f.worker, host.host(), &req)), 403);
        let events = host.audit.events();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e["v"], 1);
        assert_eq!(e["decision"], "deny");
        assert_eq!(e["reason"], "insufficient_scope");
        assert_eq!(e["status"], 403);
        assert_eq!(e["rule"], "write-data");
        assert_eq!(e["method"], "POST");
        assert_eq!(e["path"], "/data", "never the query");
        assert_eq!(e["request_id"], "req-1");
        assert_eq!(e["client_ip"], "192.0.2.7");
        assert_eq!(e["provider"], "local");
        assert_eq!(e["subject"], "alice");
        assert_eq!(e["credential"], TokenDigest::of(&token).to_string());
        assert_eq!(e["time"], "2027-01-15T08:00:00.000Z");
        let text = e.to_string();
        assert!(
            !text.contains(&token) && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(
            *host.metrics.rules.borrow(),
            [(Some(0), Reason::InsufficientScope)]
        );
    }

    #[test]
    fn unnamed_rules_are_named_by_their_place_and_unmatched_requests_by_none() {
        let f = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        on_request(&f.worker, host.host(), &request(&[], "192.0.2.1"));
        let other = RequestView {
            path: "/elsewhere",
            ..request(&[], "192.0.2.1")
        };
        on_request(&f.worker, host.host(), &other);
        let events = host.audit.events();
        assert_eq!(events[0]["rule"], "rules[0]");
        assert_eq!(events[0]["reason"], "missing_credentials");
        assert!(events[1].get("rule").is_none());
        assert_eq!(events[1]["reason"], "no_matching_rule");
        assert_eq!(
            *host.metrics.rules.borrow(),
            [
                (Some(0), Reason::MissingCredentials),
                (None, Reason::NoMatchingRule)
            ]
        );
    }

    #[test]
    fn allowed_requests_are_sampled_denials_never_and_all_are_counted() {
        let f = fixture(|c| c["audit"] = json!({"allow_sample_rate": 0.25}));
        let host = FakeHost::at_secs(NOW);
        let good = bearer(&sign(&f.local, "https://local.test", "alice"));
        for _ in 0..8 {
            assert_eq!(
                status(&on_request(
                    &f.worker,
                    host.host(),
                    &request(&good, "192.0.2.1")
                )),
                200
            );
        }
        for _ in 0..3 {
            on_request(&f.worker, host.host(), &request(&[], "192.0.2.1"));
        }
        let events = host.audit.events();
        let allows = events.iter().filter(|e| e["decision"] == "allow").count();
        let denials = events.iter().filter(|e| e["decision"] == "deny").count();
        assert_eq!((allows, denials), (2, 3));
        assert_eq!(
            host.metrics.decisions.borrow().len(),
            11,
            "stats count every one"
        );
        let allow = events.iter().find(|e| e["decision"] == "allow").unwrap();
        assert!(allow.get("status").is_none(), "{allow}");
        assert_eq!(allow["subject"], "alice");
    }

    #[test]
    fn a_rate_limit_event_names_its_policy_and_stats_count_by_policy() {
        let f = fixture(|c| {
            c["rate_limits"] = json!({"policies": {
                "per-ip": {"limit": 100, "window": "60s", "key": "client_ip"},
                "per-sub": {"limit": 1, "window": "60s", "key": "subject"}}});
            c["rules"][0]["rate_limits"] = json!(["per-ip", "per-sub"]);
        });
        let host = FakeHost::at_secs(NOW);
        let good = bearer(&sign(&f.local, "https://local.test", "alice"));
        let statuses: Vec<u32> = (0..2)
            .map(|_| {
                status(&on_request(
                    &f.worker,
                    host.host(),
                    &request(&good, "192.0.2.1"),
                ))
            })
            .collect();
        assert_eq!(statuses, [200, 429]);
        let events = host.audit.events();
        assert_eq!(events[1]["reason"], "rate_limited");
        assert_eq!(events[1]["policy"], "per-sub");
        assert_eq!(events[1]["subject"], "alice");
        let ip = f
            .worker
            .settings
            .rate_limits
            .policies
            .iter()
            .position(|p| p.name == "per-ip");
        let sub = f
            .worker
            .settings
            .rate_limits
            .policies
            .iter()
            .position(|p| p.name == "per-sub");
        let limits: Vec<(usize, bool)> = host
            .metrics
            .limits
            .borrow()
            .iter()
            .map(|(p, limited)| (p.index(), *limited))
            .collect();
        let (ip, sub) = (ip.unwrap(), sub.unwrap());
        assert_eq!(
            limits,
            [(ip, false), (sub, false), (ip, false), (sub, true)]
        );
    }

    #[test]
    fn a_token_from_too_many_addresses_raises_the_signal_and_is_suspended() {
        let f = fixture(|c| {
            c["anomalies"] = json!({"shared_credential":
                {"max_addresses": 2, "window": "60s", "suspend": "30s"}});
        });
        let host = FakeHost::at_secs(NOW);
        let stolen = bearer(&sign(&f.local, "https://local.test", "alice"));
        let other = bearer(&sign(&f.local, "https://local.test", "bob"));
        for ip in ["192.0.2.1", "192.0.2.1", "192.0.2.2"] {
            assert_eq!(
                status(&on_request(&f.worker, host.host(), &request(&stolen, ip))),
                200
            );
        }
        let Step::Respond(denial) =
            on_request(&f.worker, host.host(), &request(&stolen, "192.0.2.3"))
        else {
            panic!("expected the credential to be refused");
        };
        assert_eq!(
            (denial.status, denial.reason),
            (401, Reason::CredentialSuspended)
        );
        assert!(denial.body.contains("suspended"));
        assert_eq!(
            *host.metrics.signals.borrow(),
            [(Signal::SharedCredential, true)]
        );
        let events = host.audit.events();
        let last = events.last().unwrap();
        assert_eq!(last["signals"], json!(["shared_credential"]));
        assert_eq!(last["client_ip"], "192.0.2.3");
        // Refused from its first address too, until the suspension ends; others pass.
        assert_eq!(
            status(&on_request(
                &f.worker,
                host.host(),
                &request(&stolen, "192.0.2.1")
            )),
            401
        );
        assert_eq!(
            status(&on_request(
                &f.worker,
                host.host(),
                &request(&other, "192.0.2.1")
            )),
            200
        );
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(31));
        assert_eq!(
            status(&on_request(
                &f.worker,
                host.host(),
                &request(&stolen, "192.0.2.1")
            )),
            200
        );
    }

    #[test]
    fn a_spike_of_refusals_for_one_client_raises_one_signal() {
        let f = fixture(|c| {
            c["rules"][0]["requires"] = json!({"scopes": {"all_of": ["admin"]}});
            c["anomalies"] = json!({"failure_spike": {"max_failures": 3, "window": "60s"}});
        });
        let host = FakeHost::at_secs(NOW);
        let token = bearer(&sign(&f.local, "https://local.test", "alice"));
        for _ in 0..6 {
            assert_eq!(
                status(&on_request(
                    &f.worker,
                    host.host(),
                    &request(&token, "192.0.2.1")
                )),
                403
            );
        }
        // Unidentified failures do not count against anyone.
        for _ in 0..6 {
            on_request(&f.worker, host.host(), &request(&[], "192.0.2.1"));
        }
        assert_eq!(
            *host.metrics.signals.borrow(),
            [(Signal::FailureSpike, false)]
        );
        let flagged: Vec<usize> = host
            .audit
            .events()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.get("signals").is_some())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(flagged, [3], "the fourth refusal within the window");
    }
}
