//! The request pipeline, in the order every request goes through it:
//!
//! 1. **lock-out** (`lockout`): an address locked out for guessing gets `429`;
//! 2. **credential extraction** (`extract`): the one credential the matched rule accepts;
//! 3. **verification** (`verify`, `api_key`): fresh or from the token cache, then
//!    one validity-window check for both;
//! 4. **revocation** (`verify`): the issuer's revocation feed;
//! 5. **policy** (`decide`): scopes and claims of the rule;
//! 6. **limits** (`limits`): counted only once everything else allowed the request;
//!    then **remote limits** (`remote_limits`): one rate-limit service call per
//!    remote policy, only once the local ones admitted it;
//! 7. **upstream edits** (`upstream`): credentials stripped, spoofed identity
//!    purged, verified identity set.
//!
//! Whatever must wait on the host is a [`Step`] the pipeline returns: the filter
//! crate maps steps to host calls and calls [`resume`] (or, after a rate-limit
//! call, [`resume_rate_limit`]) when a wait is over.

mod api_key;
mod decide;
mod extract;
mod limits;
mod lockout;
mod remote_limits;
mod upstream;
mod verify;

pub use decide::{Authorizer, Outcome};
pub use remote_limits::{resume_rate_limit, PendingLimits, RateLimitAnswer, RateLimitCall};

use crate::apikey::KeySet as ApiKeySet;
use crate::config::ProviderId;
use crate::credentials::{HeaderEdit, RequestView};
use crate::decision::{Denial, Reason};
use crate::host::{DecisionRecord, Host};
use crate::identity::{Caller, TokenDigest};
use crate::jwk::KeySet;
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
    /// answer to [`Worker::complete_fetch`], then call [`resume`].
    Wait { token: u32, doc: DocId },
    /// Hold it (see [`Worker::park`]) until the fetch of `doc` that another
    /// request or worker started ends: [`Worker::complete_fetch`] and
    /// [`Worker::on_tick`] hand it back, to [`resume`].
    Park { doc: DocId },
    /// Hold it while the rate-limit service is asked (see [`RateLimitCall`]),
    /// then hand the answer to [`resume_rate_limit`].
    CallRateLimit(Box<RateLimitCall>),
}

/// A request everything but its remote limits has admitted.
#[derive(Debug)]
struct Admitted {
    reason: Reason,
    edits: Vec<HeaderEdit>,
    identity: Arc<[HeaderEdit]>,
    caller: Option<Caller>,
    token_hash: Option<TokenDigest>,
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
    let now_ms = now.as_millis() as u64;
    if let Some(denial) = lockout::check(&worker.settings, host, req.client_ip, now_ms) {
        record(host, req, denial.reason, Some(denial.status), None, None);
        return Step::Respond(denial);
    }
    run(worker, host, req, Refetch::Allowed)
}

/// A [`Step::Wait`] is over: decide again, without asking for another fetch.
pub fn resume(worker: &Worker, host: Host<'_>, req: &RequestView<'_>) -> Step {
    run(worker, host, req, Refetch::Spent)
}

fn run(worker: &Worker, host: Host<'_>, req: &RequestView<'_>, refetch: Refetch) -> Step {
    let now_ms = host.clock.now().as_millis() as u64;
    match worker.authorize(req, host.shared, now_ms, refetch == Refetch::Allowed) {
        Outcome::Allow {
            reason,
            edits,
            identity,
            caller,
            token_hash,
            limits,
        } => match limits::enforce(&worker.settings.rate_limits, host, &limits, now_ms) {
            Err(denial) => {
                record(
                    host,
                    req,
                    denial.reason,
                    Some(denial.status),
                    caller.as_ref(),
                    token_hash,
                );
                Step::Respond(denial)
            }
            Ok(tightest) => {
                let admitted = Admitted {
                    reason,
                    edits,
                    identity,
                    caller,
                    token_hash,
                    tightest,
                };
                remote_limits::start(worker, host, req, admitted, limits, now_ms)
            }
        },
        Outcome::Deny { denial, .. }
            if matches!(
                denial.reason,
                Reason::KeysUnavailable | Reason::RevocationsUnavailable | Reason::UnknownKey
            ) && worker.sync(host.shared, now_ms) =>
        {
            // Another worker loaded them (or the rotated keys) since this one
            // last looked.
            run(worker, host, req, Refetch::Spent)
        }
        Outcome::Deny { denial, token_hash } => {
            if denial.reason.is_credential_guess() {
                lockout::record_failure(&worker.settings, host, req.client_ip, now_ms);
            }
            record(
                host,
                req,
                denial.reason,
                Some(denial.status),
                None,
                token_hash,
            );
            Step::Respond(denial)
        }
        Outcome::FetchKeys { provider, kid } => {
            // Another worker may already have the new keys.
            if worker.sync(host.shared, now_ms) {
                return run(worker, host, req, Refetch::Spent);
            }
            let doc = DocId::Keys(provider);
            if let Some(token) = worker.start_fetch(host, doc, FetchTrigger::OnDemand, now_ms) {
                worker.note_kid_fetched(provider, kid.as_deref(), now_ms);
                return Step::Wait { token, doc };
            }
            // A rotation: many requests with the new `kid` at once, one fetch.
            if worker.fetch_underway(host.shared, doc, now_ms) && worker.may_park() {
                worker.note_kid_fetched(provider, kid.as_deref(), now_ms);
                return Step::Park { doc };
            }
            run(worker, host, req, Refetch::Spent)
        }
    }
}

/// The request passed every stage.
fn admit(host: Host<'_>, req: &RequestView<'_>, a: Admitted) -> Step {
    record(host, req, a.reason, None, a.caller.as_ref(), a.token_hash);
    Step::Continue {
        edits: a.edits,
        identity: a.identity,
        response_headers: a.tightest.into_headers(),
    }
}

/// A later stage refused a request the earlier ones admitted.
fn refuse(host: Host<'_>, req: &RequestView<'_>, denial: Denial, a: &Admitted) -> Step {
    let status = Some(denial.status);
    record(
        host,
        req,
        denial.reason,
        status,
        a.caller.as_ref(),
        a.token_hash,
    );
    Step::Respond(denial)
}

/// Every decision is counted and goes to the audit sink, once.
fn record(
    host: Host<'_>,
    req: &RequestView<'_>,
    reason: Reason,
    status: Option<u32>,
    caller: Option<&Caller>,
    fingerprint: Option<TokenDigest>,
) {
    host.metrics.decision(reason);
    host.audit.decision(&DecisionRecord {
        reason,
        status,
        method: req.method,
        client_ip: req.client_ip,
        caller,
        fingerprint,
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
        for _ in 0..3 {
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

        // A key the refetched set lacks too: no second fetch within the interval.
        let stranger = ES256KeyPair::generate().with_key_id("stranger");
        let token = bearer(&sign(&stranger, "https://remote.test", "eve"));
        let step = on_request(&f.worker, host.host(), &request(&token, "192.0.2.1"));
        let Step::Respond(denial) = step else {
            panic!("expected a denial, got {step:?}");
        };
        assert_eq!(denial.reason, Reason::UnknownKey);
        assert_eq!(host.callouts.started.borrow().len(), 2);
    }

    fn park(worker: &Worker, context: u32, doc: DocId, mut headers: Vec<(String, Vec<u8>)>) {
        headers.push((":method".into(), b"GET".to_vec()));
        headers.push((":path".into(), b"/data".to_vec()));
        worker.park(crate::worker::ParkedRequest {
            context,
            doc,
            since_ms: NOW * 1000,
            headers,
            client_ip: Some("192.0.2.1".into()),
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
                Step::Park { doc } => {
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

    #[test]
    fn a_flood_of_random_kids_costs_a_bounded_number_of_fetches() {
        let f = fixture(|_| {});
        let host = FakeHost::at_secs(NOW);
        let old = ES256KeyPair::generate().with_key_id("old");
        load_remote_keys(&f, &host, &[(&old, "old")]);
        let jwks = json!({"keys": [es256_jwk(&old, "old")]}).to_string();
        let mut refused = 0;
        let mut last_fetched = String::new();
        // 200 requests over 20 s, each with a kid nobody publishes.
        for i in 0..200u32 {
            host.clock
                .as_ref()
                .unwrap()
                .advance(std::time::Duration::from_millis(100));
            let key = ES256KeyPair::generate().with_key_id(&format!("random-{i}"));
            let headers = bearer(&sign(&key, "https://remote.test", "mallory"));
            let mut step = on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
            if let Step::Wait { doc, .. } = step {
                last_fetched = format!("random-{i}");
                f.worker.complete_fetch(
                    host.host(),
                    doc,
                    &FetchResponse::Body(jwks.clone().into_bytes(), None),
                );
                step = resume(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
            }
            if let Step::Respond(d) = &step {
                assert_eq!(d.reason, Reason::UnknownKey);
                refused += 1;
            }
        }
        assert_eq!(refused, 200);
        let on_demand = host.callouts.started.borrow().len() - 1;
        // A burst of 3, then one per 10 s / 3: at most 3 + 6 in 20 s.
        assert!(
            (3..=9).contains(&on_demand),
            "{on_demand} on-demand fetches"
        );

        // A kid a fetch has already looked for is refused without another fetch.
        let key = ES256KeyPair::generate().with_key_id(&last_fetched);
        let headers = bearer(&sign(&key, "https://remote.test", "mallory"));
        let before = host.callouts.started.borrow().len();
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(5));
        let step = on_request(&f.worker, host.host(), &request(&headers, "192.0.2.1"));
        assert_eq!(status(&step), 401);
        assert_eq!(host.callouts.started.borrow().len(), before);
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
}
