//! The account pages, where users manage their second factors: `GET /account` lists
//! them; users add an authenticator app (QR code) or a passkey, remove either, and
//! sign out. Signing in here asks for a second factor whenever the user has one, so a
//! stolen password cannot change them. Every form carries an anti-CSRF value bound to
//! the session; the session cookie is `SameSite=Lax` as well. Every change is audited.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use qrcode::render::svg;
use qrcode::QrCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::form::{self, Form};
use super::pages::{self, LoginPage};
use super::signin::{self, Session, StepFailure};
use super::{blocking, client_ip, AppState};
use crate::protocol::authentication::{Authentication, Level, Method};
use crate::protocol::errors::OAuthError;
use crate::server::clock;
use crate::storage::factors::{self, Factor};
use crate::storage::users::User;

/// The account's forms bind their sign-in progress to this.
const BINDING: &str = "account";
const ENROLMENT_LIFETIME_SECS: i64 = 600;
const FIELDS: &[&str] = &[
    "username",
    "password",
    "method",
    "decision",
    "signin",
    "otp",
    "ceremony",
    "credential",
    "csrf",
    "factor_id",
    "label",
    "enrolment",
];

/// An authenticator app being set up: the seed shown, until the first code confirms it.
#[derive(Serialize, Deserialize)]
struct Enrolment {
    kind: String,
    user_id: String,
    seed: String,
    expires_at: i64,
}

/// `GET /assets/passkeys.js`.
pub async fn passkey_script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        include_str!("assets/passkeys.js"),
    )
        .into_response()
}

/// `GET /account`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let notice = notice_of(query.as_deref().unwrap_or_default());
    match manager(&state, &headers).await {
        Ok(Manager::Ready(session)) => account_page(&state, &session, notice, None).await,
        Ok(Manager::SignIn) => sign_in_page(&state, "", None, StatusCode::OK),
        Ok(Manager::StepUp(user, methods)) => step_up(&state, &user, methods, None).await,
        Err(_) => internal_error(),
    }
}

/// `POST /account/sign-in`: password, passkey alone, or the second step.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let ip = client_ip(&state, peer, request.headers());
    let Ok(form) = form::read(request, FIELDS).await else {
        return sign_in_page(
            &state,
            "",
            Some("The form was not sent correctly."),
            StatusCode::BAD_REQUEST,
        );
    };
    let username = form.get("username").unwrap_or_default().to_owned();
    if let Some(value) = form.get("signin") {
        let Some(progress) = signin::open_progress(&state, value, BINDING) else {
            return sign_in_page(
                &state,
                "",
                Some("That sign-in expired. Start again."),
                StatusCode::OK,
            );
        };
        let user = match signin::find_user(&state, &progress.username).await {
            Ok(Some(user)) if user.user_id == progress.user_id => user,
            Ok(_) => {
                return sign_in_page(
                    &state,
                    "",
                    Some("That sign-in expired. Start again."),
                    StatusCode::OK,
                )
            }
            Err(_) => return internal_error(),
        };
        return match signin::check_second_factor(&state, &progress, &form, ip).await {
            Ok((signed_in, factor_id)) => signed_in_now(&state, &user, &signed_in, vec![factor_id]),
            Err(StepFailure::Wrong(message)) => {
                step_up(&state, &user, progress.methods, Some(message)).await
            }
            Err(StepFailure::Blocked(blocked)) => {
                let message = format!(
                    "Too many failed attempts. Try again in {} seconds.",
                    blocked.retry_after_secs()
                );
                let mut response = step_up(&state, &user, progress.methods, Some(&message)).await;
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(blocked.retry_after_secs()),
                );
                response
            }
            Err(StepFailure::Expired) => sign_in_page(
                &state,
                "",
                Some("That sign-in expired. Start again."),
                StatusCode::OK,
            ),
            Err(StepFailure::Internal(_)) => internal_error(),
        };
    }
    if form.get("method") == Some("passkey") {
        let user = match signin::find_user(&state, &username).await {
            Ok(user) => user,
            Err(_) => return internal_error(),
        };
        let offer = match &user {
            Some(user) => signin::offer(&state, &user.user_id, &[], Level::PhishingResistant).await,
            None => Ok(None),
        };
        return match (user, offer) {
            (Some(user), Ok(Some(offer))) => step_page(&state, &user, Vec::new(), offer, None),
            (_, Err(_)) => internal_error(),
            _ => sign_in_page(
                &state,
                &username,
                Some("No passkey is set up for this account. Sign in with your password."),
                StatusCode::OK,
            ),
        };
    }
    let password = form.get("password").unwrap_or_default().to_owned();
    if username.is_empty() || password.is_empty() {
        return sign_in_page(
            &state,
            &username,
            Some("Enter your username and password."),
            StatusCode::OK,
        );
    }
    let user = match signin::check_password(&state, &username, password, ip, None).await {
        Ok(Ok(Some(user))) => user,
        Ok(Ok(None)) => {
            return sign_in_page(
                &state,
                &username,
                Some("The username or password is incorrect."),
                StatusCode::OK,
            )
        }
        Ok(Err(blocked)) => {
            let message = format!(
                "Too many failed sign-in attempts. Try again in {} seconds.",
                blocked.retry_after_secs()
            );
            let mut response = sign_in_page(
                &state,
                &username,
                Some(&message),
                StatusCode::TOO_MANY_REQUESTS,
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(blocked.retry_after_secs()),
            );
            return response;
        }
        Err(_) => return internal_error(),
    };
    match user_factors(&state, &user.user_id).await {
        Ok(list) if list.is_empty() => {
            let signed_in = Authentication::new(clock::now(), vec![Method::Pwd]);
            signed_in_now(&state, &user, &signed_in, Vec::new())
        }
        Ok(_) => step_up(&state, &user, vec![Method::Pwd], None).await,
        Err(_) => internal_error(),
    }
}

/// `POST /account/sign-out`.
pub async fn sign_out(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let Ok(form) = form::read(request, FIELDS).await else {
        return see_other(&state, "/account");
    };
    if let Some(session) = signin::session(&state, &headers, clock::now()) {
        if form
            .get("csrf")
            .is_some_and(|csrf| signin::same(csrf, &csrf_of(&state, &session)))
        {
            let mut response = see_other(&state, "/account");
            response
                .headers_mut()
                .insert(header::SET_COOKIE, signin::clear_session_cookie());
            return response;
        }
    }
    see_other(&state, "/account")
}

/// `GET /account/totp/new`: a new seed, its QR code, and the confirmation form.
pub async fn new_totp(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = match manager(&state, &headers).await {
        Ok(Manager::Ready(session)) => session,
        Ok(_) => return see_other(&state, "/account"),
        Err(_) => return internal_error(),
    };
    totp_page(&state, &session, &factors::new_totp_seed(), None)
}

/// `POST /account/totp`: the first code confirms the app.
pub async fn add_totp(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (session, form) = match checked(&state, request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(enrolment) = form
        .get("enrolment")
        .and_then(|value| state.sessions.open::<Enrolment>(value))
        .filter(|enrolment| {
            enrolment.kind == "totp"
                && enrolment.user_id == session.user_id
                && enrolment.expires_at > clock::now()
        })
    else {
        return see_other(&state, "/account");
    };
    let label = match factors::validate_label(form.get("label").unwrap_or_default()) {
        Ok(label) => label,
        Err(message) => return totp_page(&state, &session, &enrolment.seed, Some(&message)),
    };
    let code = form.get("otp").unwrap_or_default().replace([' ', '-'], "");
    let now = clock::now();
    let step = factors::totp(&enrolment.seed, &state.config.issuer, &session.username)
        .ok()
        .and_then(|totp| factors::matching_step(&totp, &code, now));
    let Some(step) = step else {
        return totp_page(
            &state,
            &session,
            &enrolment.seed,
            Some("That code is not right. Check your app’s clock and enter the current code."),
        );
    };
    let added = {
        let state = Arc::clone(&state);
        let user_id = session.user_id.clone();
        let label = label.clone();
        blocking(move || {
            state
                .db
                .with(|conn| factors::add_totp(conn, &user_id, &label, &enrolment.seed, step, now))
                .map_err(|err| OAuthError::internal("adding a TOTP factor", err))
        })
        .await
    };
    match added {
        Ok(factor_id) => {
            signin::audit(
                "user.factor_added",
                json!({"user_id": session.user_id, "factor_id": factor_id, "kind": "totp", "by": "user"}),
            );
            // The code just proved the app: the session now counts it.
            let mut methods = session.authentication.methods.clone();
            methods.push(Method::Otp);
            let signed_in = Authentication::new(now, methods);
            let mut factor_ids = session.factor_ids.clone();
            factor_ids.push(factor_id);
            let user = session_user(&session);
            let mut response = see_other(&state, "/account?done=totp-added");
            response.headers_mut().insert(
                header::SET_COOKIE,
                signin::session_cookie(&state, &user, &signed_in, factor_ids),
            );
            response
        }
        Err(_) => see_other(&state, "/account?done=totp-exists"),
    }
}

/// `GET /account/passkeys/new`: starts a registration ceremony.
pub async fn new_passkey(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = match manager(&state, &headers).await {
        Ok(Manager::Ready(session)) => session,
        Ok(_) => return see_other(&state, "/account"),
        Err(_) => return internal_error(),
    };
    passkey_page(&state, &session, None).await
}

/// `POST /account/passkeys`: finishes the registration.
pub async fn add_passkey(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (session, form) = match checked(&state, request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let label = match factors::validate_label(form.get("label").unwrap_or_default()) {
        Ok(label) => label,
        Err(message) => return passkey_page(&state, &session, Some(&message)).await,
    };
    let passkey = state.passkeys.finish_registration(
        &session.user_id,
        form.get("ceremony").unwrap_or_default(),
        form.get("credential").unwrap_or_default(),
        clock::now(),
    );
    let passkey = match passkey {
        Ok(passkey) => passkey,
        Err(message) => return passkey_page(&state, &session, Some(message)).await,
    };
    let added = {
        let state = Arc::clone(&state);
        let user_id = session.user_id.clone();
        blocking(move || {
            state
                .db
                .with(|conn| factors::add_passkey(conn, &user_id, &label, &passkey, clock::now()))
                .map_err(|err| OAuthError::internal("adding a passkey", err))
        })
        .await
    };
    match added {
        Ok(factor_id) => {
            signin::audit(
                "user.factor_added",
                json!({"user_id": session.user_id, "factor_id": factor_id, "kind": "passkey", "by": "user"}),
            );
            see_other(&state, "/account?done=passkey-added")
        }
        Err(_) => internal_error(),
    }
}

/// `POST /account/factors/remove`: takes effect at once (the factor stops working, and
/// sessions stop counting it).
pub async fn remove_factor(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (session, form) = match checked(&state, request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let factor_id = form.get("factor_id").unwrap_or_default().to_owned();
    let removed = {
        let state = Arc::clone(&state);
        let user_id = session.user_id.clone();
        let factor_id = factor_id.clone();
        blocking(move || {
            state
                .db
                .with(|conn| factors::remove(conn, &user_id, &factor_id))
                .map_err(|err| OAuthError::internal("removing a factor", err))
        })
        .await
    };
    match removed {
        Ok(true) => {
            signin::audit(
                "user.factor_removed",
                json!({"user_id": session.user_id, "factor_id": factor_id, "by": "user"}),
            );
            see_other(&state, "/account?done=removed")
        }
        Ok(false) => see_other(&state, "/account"),
        Err(_) => internal_error(),
    }
}

enum Manager {
    /// Signed in strongly enough to change factors.
    Ready(Session),
    SignIn,
    /// Signed in with the password only, but the user has a second factor: ask for it.
    StepUp(User, Vec<Method>),
}

async fn manager(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Manager, OAuthError> {
    let Some(session) = signin::current_session(state, headers).await? else {
        return Ok(Manager::SignIn);
    };
    if session.authentication.level() > Level::Password {
        return Ok(Manager::Ready(session));
    }
    if user_factors(state, &session.user_id).await?.is_empty() {
        return Ok(Manager::Ready(session));
    }
    match signin::find_user(state, &session.username).await? {
        Some(user) => Ok(Manager::StepUp(user, session.authentication.methods)),
        None => Ok(Manager::SignIn),
    }
}

/// A management POST: its session (strong enough) and form, anti-CSRF checked.
async fn checked(state: &Arc<AppState>, request: Request) -> Result<(Session, Form), Response> {
    let headers = request.headers().clone();
    let form = form::read(request, FIELDS)
        .await
        .map_err(|_| see_other(state, "/account"))?;
    let session = match manager(state, &headers).await {
        Ok(Manager::Ready(session)) => session,
        Ok(_) => return Err(see_other(state, "/account")),
        Err(_) => return Err(internal_error()),
    };
    if !form
        .get("csrf")
        .is_some_and(|csrf| signin::same(csrf, &csrf_of(state, &session)))
    {
        return Err(pages::error(
            StatusCode::FORBIDDEN,
            "This form is out of date. Reload the page and try again.",
        ));
    }
    Ok((session, form))
}

fn csrf_of(state: &AppState, session: &Session) -> String {
    state.sessions.mac(&format!(
        "csrf:{}:{}",
        session.user_id, session.authentication.auth_time
    ))
}

async fn user_factors(state: &Arc<AppState>, user_id: &str) -> Result<Vec<Factor>, OAuthError> {
    let state = Arc::clone(state);
    let user_id = user_id.to_owned();
    blocking(move || {
        state
            .db
            .with(|conn| factors::list(conn, &user_id))
            .map_err(|err| OAuthError::internal("listing factors", err))
    })
    .await
}

fn signed_in_now(
    state: &AppState,
    user: &User,
    signed_in: &Authentication,
    factor_ids: Vec<String>,
) -> Response {
    signin::audit(
        "sign_in.completed",
        json!({"user_id": user.user_id, "client_id": null, "acr": signed_in.acr(), "amr": signed_in.amr()}),
    );
    let mut response = see_other(state, "/account");
    response.headers_mut().insert(
        header::SET_COOKIE,
        signin::session_cookie(state, user, signed_in, factor_ids),
    );
    response
}

async fn account_page(
    state: &Arc<AppState>,
    session: &Session,
    notice: Option<&'static str>,
    error: Option<&str>,
) -> Response {
    let Ok(list) = user_factors(state, &session.user_id).await else {
        return internal_error();
    };
    let page = pages::AccountPage {
        base: &state.config.endpoint(""),
        username: &session.username,
        factors: &list,
        csrf: &csrf_of(state, session),
        notice,
        error,
        passkeys: state.passkeys.enabled(),
    };
    pages::account(StatusCode::OK, &page)
}

fn sign_in_page(
    state: &AppState,
    username: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let page = LoginPage {
        action: &state.config.endpoint("/account/sign-in"),
        request: None,
        client: None,
        username,
        error,
        signed_in_as: None,
        passkeys: state.passkeys.enabled(),
    };
    pages::login(status, &page)
}

async fn step_up(
    state: &Arc<AppState>,
    user: &User,
    methods: Vec<Method>,
    error: Option<&str>,
) -> Response {
    match signin::offer(state, &user.user_id, &methods, Level::MultiFactor).await {
        Ok(Some(offer)) => step_page(state, user, methods, offer, error),
        Ok(None) => sign_in_page(state, &user.username, error, StatusCode::OK),
        Err(_) => internal_error(),
    }
}

fn step_page(
    state: &AppState,
    user: &User,
    methods: Vec<Method>,
    offer: signin::Offer,
    error: Option<&str>,
) -> Response {
    let progress = signin::new_progress(user, methods, Level::MultiFactor, BINDING);
    let sealed = signin::seal_progress(state, &progress);
    let action = state.config.endpoint("/account/sign-in");
    let page = pages::SecondStep {
        action: &action,
        hidden: &[("signin", &sealed)],
        username: &user.username,
        context: None,
        offer: &offer,
        error,
    };
    pages::second_step(StatusCode::OK, &page)
}

fn totp_page(state: &AppState, session: &Session, seed: &str, error: Option<&str>) -> Response {
    let Ok(totp) = factors::totp(seed, &state.config.issuer, &session.username) else {
        return internal_error();
    };
    let Ok(qr) = QrCode::new(totp.get_url()) else {
        return internal_error();
    };
    let svg = qr
        .render::<svg::Color<'_>>()
        .min_dimensions(224, 224)
        .quiet_zone(true)
        .build();
    // The renderer's XML declaration does not belong inside HTML.
    let svg = svg
        .find("<svg")
        .and_then(|start| svg.get(start..))
        .unwrap_or_default();
    let enrolment = state.sessions.seal(&Enrolment {
        kind: "totp".to_owned(),
        user_id: session.user_id.clone(),
        seed: seed.to_owned(),
        expires_at: clock::now() + ENROLMENT_LIFETIME_SECS,
    });
    let page = pages::TotpEnrolment {
        base: &state.config.endpoint(""),
        qr_svg: svg,
        seed,
        enrolment: &enrolment,
        csrf: &csrf_of(state, session),
        error,
    };
    pages::totp_enrolment(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        &page,
    )
}

async fn passkey_page(state: &Arc<AppState>, session: &Session, error: Option<&str>) -> Response {
    if !state.passkeys.enabled() {
        return account_page(
            state,
            session,
            None,
            Some("Passkeys are not available on this server."),
        )
        .await;
    }
    let existing = {
        let state = Arc::clone(state);
        let user_id = session.user_id.clone();
        blocking(move || {
            state
                .db
                .with(|conn| factors::passkeys_of(conn, &user_id))
                .map_err(|err| OAuthError::internal("listing passkeys", err))
        })
        .await
    };
    let Ok(existing) = existing else {
        return internal_error();
    };
    let keys: Vec<_> = existing.into_iter().map(|(_, key)| key).collect();
    let user = session_user(session);
    let Ok((options, ceremony)) = state
        .passkeys
        .start_registration(&user, &keys, clock::now())
    else {
        return internal_error();
    };
    let page = pages::PasskeyRegistration {
        base: &state.config.endpoint(""),
        options: &options,
        ceremony: &ceremony,
        csrf: &csrf_of(state, session),
        error,
    };
    pages::passkey_registration(StatusCode::OK, &page)
}

/// The notice after a change, from the redirect's `?done=…`: only known values map to
/// text, so nothing from the URL is echoed.
/// The session's user, as far as sessions and ceremonies need one.
fn session_user(session: &Session) -> User {
    User {
        user_id: session.user_id.clone(),
        username: session.username.clone(),
        password_hash: String::new(),
        scopes: Default::default(),
        created_at: 0,
    }
}

fn notice_of(query: &str) -> Option<&'static str> {
    match query.strip_prefix("done=")? {
        "totp-added" => Some("Authenticator app turned on."),
        "totp-exists" => {
            Some("You already have an authenticator app. Remove it first to set up another.")
        }
        "passkey-added" => Some("Passkey added."),
        "removed" => Some("Removed. It can no longer be used to sign in."),
        _ => None,
    }
}

fn see_other(state: &AppState, path: &str) -> Response {
    let location = state.config.endpoint(path);
    let mut response =
        (StatusCode::SEE_OTHER, [(header::CACHE_CONTROL, "no-store")]).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn internal_error() -> Response {
    pages::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side.",
    )
}
