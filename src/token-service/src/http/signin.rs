//! Signing a user in, shared by `/authorize` and the account pages: the password, the
//! second factor (a one-time code or a passkey), passkey-only sign-in, the browser
//! session that remembers a sign-in, and the audit lines of factor changes.
//!
//! Nothing is kept on the server between steps but the passkey ceremonies in flight
//! (single use, two minutes): the progress after the password travels in the form,
//! sealed ([`crate::crypto::sealed`]), and the session is a sealed cookie naming the
//! factors used, which stops counting a factor as soon as it is removed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{header, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid,
    Webauthn, WebauthnBuilder,
};

use super::form::Form;
use super::{blocking, AppState};
use crate::crypto::{opaque, sealed};
use crate::protocol::authentication::{Authentication, Level, Method};
use crate::protocol::errors::OAuthError;
use crate::server::audit;
use crate::server::clock;
use crate::server::metrics::{Throttled, METRICS};
use crate::server::throttle::{Account, Blocked};
use crate::storage::factors;
use crate::storage::users::{self, User};

pub const SESSION_COOKIE: &str = "tollgate_session";
/// A browser session lasts at most this long (seconds); `max_age` can ask for less.
pub const SESSION_LIFETIME_SECS: i64 = 12 * 3600;
/// Seconds to finish the second step after the password.
const PROGRESS_LIFETIME_SECS: i64 = 600;
/// Seconds a passkey ceremony stays open.
const CEREMONY_LIFETIME_SECS: i64 = 120;
const MAX_CEREMONIES: usize = 10_000;

/// A remembered sign-in (the session cookie's sealed value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub user_id: String,
    pub username: String,
    pub authentication: Authentication,
    /// The second factors used: the session stops counting them once removed.
    pub factor_ids: Vec<String>,
    pub expires_at: i64,
}

/// Where a sign-in stands after the first step (sealed into the form's `signin` field).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub user_id: String,
    pub username: String,
    /// Methods already passed (`pwd`), or none for passkey-only sign-in.
    pub methods: Vec<Method>,
    /// The level the sign-in must reach.
    #[serde(with = "level_text")]
    pub required: Level,
    /// Binds the progress to one form (the pending authorization's nonce, or the
    /// account page's).
    pub binding: String,
    pub expires_at: i64,
}

/// Which second factors a step may offer.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub totp: bool,
    /// Passkey request options (JSON) and the ceremony id, if passkeys are offered.
    pub passkey: Option<(String, String)>,
}

/// A second step that did not succeed.
pub enum StepFailure {
    /// Wrong code or assertion: shown on the same step again.
    Wrong(&'static str),
    Blocked(Blocked),
    /// The progress or ceremony expired: start again.
    Expired,
    Internal(OAuthError),
}

pub struct Passkeys {
    webauthn: Option<Webauthn>,
    ceremonies: Mutex<HashMap<String, Ceremony>>,
}

enum Ceremony {
    Register {
        user_id: String,
        state: PasskeyRegistration,
        expires_at: i64,
    },
    Authenticate {
        user_id: String,
        state: PasskeyAuthentication,
        expires_at: i64,
    },
}

impl Ceremony {
    fn expires_at(&self) -> i64 {
        match self {
            Self::Register { expires_at, .. } | Self::Authenticate { expires_at, .. } => {
                *expires_at
            }
        }
    }
}

impl Passkeys {
    /// Passkeys for the issuer's origin. WebAuthn needs a domain name as the relying
    /// party id, so an issuer on an IP address (`http://127.0.0.1:8080`) has none:
    /// browse the service as `localhost` or a real name to use them.
    pub fn for_issuer(issuer: &str) -> Self {
        let webauthn = Url::parse(issuer).ok().and_then(|url| {
            let host = url.host_str()?.to_owned();
            if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
                eprintln!(
                    "note: passkeys are off: the issuer {issuer} is on an IP address, and \
                     WebAuthn needs a domain name (use localhost or a DNS name)"
                );
                return None;
            }
            let origin = Url::parse(&url.origin().ascii_serialization()).ok()?;
            WebauthnBuilder::new(&host, &origin)
                .ok()?
                .rp_name("Tollgate")
                .build()
                .map_err(|err| eprintln!("note: passkeys are off: {err}"))
                .ok()
        });
        Self {
            webauthn,
            ceremonies: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.webauthn.is_some()
    }

    fn remember(&self, ceremony: Ceremony, now: i64) -> String {
        let mut ceremonies = self
            .ceremonies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ceremonies.len() >= MAX_CEREMONIES {
            ceremonies.retain(|_, ceremony| ceremony.expires_at() > now);
        }
        if ceremonies.len() >= MAX_CEREMONIES {
            let oldest = ceremonies
                .iter()
                .min_by_key(|(_, ceremony)| ceremony.expires_at())
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                ceremonies.remove(&id);
            }
        }
        let id = opaque::random(16);
        ceremonies.insert(id.clone(), ceremony);
        id
    }

    /// Takes a ceremony out (it can be finished once).
    fn take(&self, id: &str, now: i64) -> Option<Ceremony> {
        self.ceremonies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .filter(|ceremony| ceremony.expires_at() > now)
    }

    /// Starts registering a passkey for `user`: the browser's creation options (JSON)
    /// and the ceremony id.
    pub fn start_registration(
        &self,
        user: &User,
        existing: &[Passkey],
        now: i64,
    ) -> anyhow::Result<(String, String)> {
        let webauthn = self
            .webauthn
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("passkeys are off"))?;
        let exclude = existing.iter().map(|key| key.cred_id().clone()).collect();
        let (options, state): (CreationChallengeResponse, _) = webauthn
            .start_passkey_registration(
                user_handle(&user.user_id),
                &user.username,
                &user.username,
                Some(exclude),
            )
            .map_err(|err| anyhow::anyhow!("starting passkey registration: {err}"))?;
        let id = self.remember(
            Ceremony::Register {
                user_id: user.user_id.clone(),
                state,
                expires_at: now + CEREMONY_LIFETIME_SECS,
            },
            now,
        );
        Ok((serde_json::to_string(&options)?, id))
    }

    /// Finishes a registration: the new passkey, or why not (shown to the user).
    pub fn finish_registration(
        &self,
        user_id: &str,
        ceremony: &str,
        credential: &str,
        now: i64,
    ) -> Result<Passkey, &'static str> {
        let webauthn = self
            .webauthn
            .as_ref()
            .ok_or("Passkeys are not available.")?;
        let Some(Ceremony::Register {
            user_id: owner,
            state,
            ..
        }) = self.take(ceremony, now)
        else {
            return Err("The passkey request expired. Try again.");
        };
        if owner != user_id {
            return Err("The passkey request expired. Try again.");
        }
        let credential: RegisterPublicKeyCredential =
            serde_json::from_str(credential).map_err(|_| "The browser sent no usable passkey.")?;
        webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|_| "The passkey could not be verified.")
    }

    /// Starts a passkey sign-in with `passkeys`: request options (JSON) and ceremony id.
    pub fn start_authentication(
        &self,
        user_id: &str,
        passkeys: &[Passkey],
        now: i64,
    ) -> anyhow::Result<(String, String)> {
        let webauthn = self
            .webauthn
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("passkeys are off"))?;
        let (options, state): (RequestChallengeResponse, _) = webauthn
            .start_passkey_authentication(passkeys)
            .map_err(|err| anyhow::anyhow!("starting passkey sign-in: {err}"))?;
        let id = self.remember(
            Ceremony::Authenticate {
                user_id: user_id.to_owned(),
                state,
                expires_at: now + CEREMONY_LIFETIME_SECS,
            },
            now,
        );
        Ok((serde_json::to_string(&options)?, id))
    }
}

/// The WebAuthn user handle: derived from the opaque user id, never the username.
fn user_handle(user_id: &str) -> Uuid {
    let digest = hmac_sha256::Hash::hash(user_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    Uuid::from_bytes(bytes)
}

/// The session in the request's cookie, if valid and unexpired at `now`.
pub fn session(state: &AppState, headers: &HeaderMap, now: i64) -> Option<Session> {
    let value = cookie(headers, SESSION_COOKIE)?;
    let session: Session = state.sessions.open(&value)?;
    (session.expires_at > now).then_some(session)
}

/// The session, with any factor since removed no longer counted.
pub async fn current_session(
    state: &Arc<AppState>,
    headers: &HeaderMap,
) -> Result<Option<Session>, OAuthError> {
    let Some(mut session) = session(state, headers, clock::now()) else {
        return Ok(None);
    };
    let check = {
        let state = Arc::clone(state);
        let session = session.clone();
        blocking(move || {
            state
                .db
                .with(|conn| {
                    let user_exists = users::find_by_username(conn, &session.username)?
                        .is_some_and(|user| user.user_id == session.user_id);
                    let factors_exist =
                        factors::all_exist(conn, &session.user_id, &session.factor_ids)?;
                    Ok::<_, rusqlite::Error>((user_exists, factors_exist))
                })
                .map_err(|err| OAuthError::internal("checking a session", err))
        })
        .await?
    };
    match check {
        (false, _) => Ok(None),
        (true, true) => Ok(Some(session)),
        (true, false) => {
            session
                .authentication
                .methods
                .retain(|method| *method == Method::Pwd);
            session.factor_ids.clear();
            Ok(Some(session))
        }
    }
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(
    state: &AppState,
    user: &User,
    authentication: &Authentication,
    factor_ids: Vec<String>,
) -> HeaderValue {
    let session = Session {
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        authentication: authentication.clone(),
        factor_ids,
        expires_at: authentication.auth_time + SESSION_LIFETIME_SECS,
    };
    let secure = if state.config.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_LIFETIME_SECS}{secure}",
        state.sessions.seal(&session)
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static("tollgate_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Checks a user's password, throttled per username and address. `Ok(None)`: wrong.
/// `client_id`: the app the user signs in to (`None` on the account page), for the
/// audit events.
pub async fn check_password(
    state: &Arc<AppState>,
    username: &str,
    password: String,
    ip: IpAddr,
    client_id: Option<&str>,
) -> Result<Result<Option<User>, Blocked>, OAuthError> {
    let attempt = match state.throttle.begin(Account::User(username), ip).await {
        Ok(attempt) => attempt,
        Err(blocked) => {
            audit::throttled(Throttled::User, username, ip, &blocked);
            return Ok(Err(blocked));
        }
    };
    if !attempt.delay().is_zero() {
        tokio::time::sleep(attempt.delay()).await;
    }
    let user = {
        let state = Arc::clone(state);
        let username = username.to_owned();
        blocking(move || {
            state
                .db
                .with(|conn| users::find_by_username(conn, &username))
                .map_err(|err| OAuthError::internal("looking up user", err))
        })
        .await?
    };
    // Unknown users cost the same Argon2 verification as known ones.
    let hash = user.as_ref().map(|user| user.password_hash.clone());
    let valid = state
        .secrets
        .verify(password, hash)
        .await
        .map_err(|err| OAuthError::internal("verifying a password", err))?;
    let sign_in = |name| {
        audit::Event::new(name)
            .field("username", username)
            .field("client_id", client_id)
            .field("client_address", ip)
    };
    // With a second factor to come, the password step is what this records.
    METRICS.sign_in(valid && user.is_some());
    match user.filter(|_| valid) {
        Some(user) => {
            attempt.succeeded();
            sign_in("sign_in.succeeded")
                .field("user_id", &user.user_id)
                .field("step", "password")
                .emit();
            Ok(Ok(Some(user)))
        }
        None => {
            attempt.failed();
            sign_in("sign_in.failed")
                .field("reason", "bad_credentials")
                .emit();
            Ok(Ok(None))
        }
    }
}

pub async fn find_user(state: &Arc<AppState>, username: &str) -> Result<Option<User>, OAuthError> {
    let state = Arc::clone(state);
    let username = username.to_owned();
    blocking(move || {
        state
            .db
            .with(|conn| users::find_by_username(conn, &username))
            .map_err(|err| OAuthError::internal("looking up user", err))
    })
    .await
}

/// The second factors `user_id` has that reach `required` after `methods`, with a
/// passkey ceremony started if a passkey is among them. `None`: nothing they have can.
pub async fn offer(
    state: &Arc<AppState>,
    user_id: &str,
    methods: &[Method],
    required: Level,
) -> Result<Option<Offer>, OAuthError> {
    let (totp, passkeys) = {
        let state = Arc::clone(state);
        let user_id = user_id.to_owned();
        blocking(move || {
            state
                .db
                .with(|conn| {
                    Ok::<_, anyhow::Error>((
                        factors::totp_of(conn, &user_id)?.is_some(),
                        factors::passkeys_of(conn, &user_id)?,
                    ))
                })
                .map_err(|err| OAuthError::internal("listing factors", err))
        })
        .await?
    };
    let with = |method: Method| {
        let mut all = methods.to_vec();
        all.push(method);
        Authentication::new(0, all).level() >= required
    };
    let mut offer = Offer {
        // A one-time code is a second factor only.
        totp: totp && !methods.is_empty() && with(Method::Otp),
        passkey: None,
    };
    if !passkeys.is_empty() && state.passkeys.enabled() && with(Method::Hwk) {
        let keys: Vec<Passkey> = passkeys.into_iter().map(|(_, key)| key).collect();
        offer.passkey = Some(
            state
                .passkeys
                .start_authentication(user_id, &keys, clock::now())
                .map_err(|err| OAuthError::internal("starting passkey sign-in", err))?,
        );
    }
    Ok((offer.totp || offer.passkey.is_some()).then_some(offer))
}

pub fn seal_progress(state: &AppState, progress: &Progress) -> String {
    state.sessions.seal(&("progress", progress))
}

pub fn open_progress(state: &AppState, value: &str, binding: &str) -> Option<Progress> {
    let (kind, progress): (String, Progress) = state.sessions.open(value)?;
    (kind == "progress" && progress.binding == binding && progress.expires_at > clock::now())
        .then_some(progress)
}

pub fn new_progress(user: &User, methods: Vec<Method>, required: Level, binding: &str) -> Progress {
    Progress {
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        methods,
        required,
        binding: binding.to_owned(),
        expires_at: clock::now() + PROGRESS_LIFETIME_SECS,
    }
}

/// Checks the second step's `otp` or passkey `credential` (with its `ceremony`),
/// throttled per user and address like passwords. On success: the completed sign-in
/// and the factor used.
pub async fn check_second_factor(
    state: &Arc<AppState>,
    progress: &Progress,
    form: &Form,
    ip: IpAddr,
) -> Result<(Authentication, String), StepFailure> {
    let code = form.get("otp").map(|code| code.replace([' ', '-'], ""));
    let credential = form.get("credential").filter(|value| !value.is_empty());
    if code.as_deref().is_none_or(str::is_empty) && credential.is_none() {
        return Err(StepFailure::Wrong(
            "Enter the code from your authenticator app.",
        ));
    }
    let attempt = match state
        .throttle
        .begin(Account::SecondFactor(&progress.user_id), ip)
        .await
    {
        Ok(attempt) => attempt,
        Err(blocked) => return Err(StepFailure::Blocked(blocked)),
    };
    if !attempt.delay().is_zero() {
        tokio::time::sleep(attempt.delay()).await;
    }
    let now = clock::now();
    let verified = match (credential, code) {
        (Some(credential), _) => {
            let ceremony = form.get("ceremony").unwrap_or_default();
            verify_passkey(state, progress, ceremony, credential, now).await
        }
        (None, Some(code)) => verify_totp(state, progress, code, now).await,
        (None, None) => Ok(None),
    };
    let (method, factor_id) = match verified {
        Ok(Some(found)) => found,
        Ok(None) => {
            attempt.failed();
            return Err(StepFailure::Wrong(
                "That code or passkey did not work. Check it and try again.",
            ));
        }
        Err(failure) => {
            attempt.failed();
            return Err(failure);
        }
    };
    attempt.succeeded();
    let mut methods = progress.methods.clone();
    methods.push(method);
    Ok((Authentication::new(now, methods), factor_id))
}

async fn verify_totp(
    state: &Arc<AppState>,
    progress: &Progress,
    code: String,
    now: i64,
) -> Result<Option<(Method, String)>, StepFailure> {
    let state = Arc::clone(state);
    let user_id = progress.user_id.clone();
    let username = progress.username.clone();
    blocking(move || {
        state
            .db
            .with(|conn| {
                let Some((factor_id, seed)) = factors::totp_of(conn, &user_id)? else {
                    return Ok(None);
                };
                let totp = factors::totp(&seed, &state.config.issuer, &username)?;
                let Some(step) = factors::matching_step(&totp, &code, now) else {
                    return Ok(None);
                };
                // A code already used in its step is refused, atomically.
                if !factors::use_totp_step(conn, &factor_id, step, now)? {
                    audit(
                        "second_factor.replayed",
                        json!({"user_id": user_id, "factor_id": factor_id}),
                    );
                    return Ok(None);
                }
                Ok::<_, anyhow::Error>(Some((Method::Otp, factor_id)))
            })
            .map_err(|err| OAuthError::internal("checking a one-time code", err))
    })
    .await
    .map_err(StepFailure::Internal)
}

async fn verify_passkey(
    state: &Arc<AppState>,
    progress: &Progress,
    ceremony: &str,
    credential: &str,
    now: i64,
) -> Result<Option<(Method, String)>, StepFailure> {
    let Some(webauthn) = state.passkeys.webauthn.as_ref() else {
        return Ok(None);
    };
    let Some(Ceremony::Authenticate {
        user_id,
        state: ceremony_state,
        ..
    }) = state.passkeys.take(ceremony, now)
    else {
        return Err(StepFailure::Expired);
    };
    if user_id != progress.user_id {
        return Err(StepFailure::Expired);
    }
    let Ok(credential) = serde_json::from_str::<PublicKeyCredential>(credential) else {
        return Ok(None);
    };
    let Ok(result) = webauthn.finish_passkey_authentication(&credential, &ceremony_state) else {
        return Ok(None);
    };
    if !result.user_verified() {
        return Ok(None);
    }
    let state = Arc::clone(state);
    blocking(move || {
        state
            .db
            .with(|conn| {
                for (factor_id, mut passkey) in factors::passkeys_of(conn, &user_id)? {
                    if passkey.cred_id() == result.cred_id() {
                        if passkey.update_credential(&result) == Some(true) {
                            factors::update_passkey(conn, &factor_id, &passkey, now)?;
                        }
                        return Ok(Some((Method::Hwk, factor_id)));
                    }
                }
                // Removed since the ceremony started: it no longer counts.
                Ok::<_, anyhow::Error>(None)
            })
            .map_err(|err| OAuthError::internal("checking a passkey", err))
    })
    .await
    .map_err(StepFailure::Internal)
}

/// One audit line on stderr: JSON with a timestamp, the request id (the proxy's
/// `x-request-id`, else a fresh one), the event and its fields. Never a secret.
pub fn audit(event: &'static str, fields: Value) {
    audit::Event::new(event).fields(fields).emit();
}

/// `Level` as its `acr` text inside sealed JSON.
mod level_text {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::protocol::authentication::Level;

    pub fn serialize<S: Serializer>(level: &Level, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(level.acr())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Level, D::Error> {
        let text = String::deserialize(deserializer)?;
        Level::from_acr(&text).ok_or_else(|| serde::de::Error::custom("unknown acr"))
    }
}

/// Constant-time comparison for form tokens.
pub fn same(a: &str, b: &str) -> bool {
    sealed::constant_time_eq(a.as_bytes(), b.as_bytes())
}
