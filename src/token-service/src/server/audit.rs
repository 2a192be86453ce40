//! Security audit events: one JSON object per line, for a SIEM.
//!
//! Every event has the same envelope (`schema`, `version`, `time`, `event`,
//! `request_id`, `source`) plus fields of its own; the README lists them. Events go to
//! stderr, or to the file given by `serve --audit-log` / `TOLLGATE_AUDIT_LOG` (opened
//! for appending). They never carry a secret: where it helps to recognise a credential
//! (a token, a code), the event carries its [`fingerprint`] instead.
//!
//! The request id comes from the request's [`Context`], set by the HTTP layer for the
//! request's task and carried over to the blocking threads it uses
//! ([`on_this_thread`]); the CLI sets one for the whole process ([`for_process`]).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::crypto::opaque;
use crate::server::clock;
use crate::server::metrics::{Throttled, METRICS};
use crate::server::throttle::Blocked;
use crate::storage::api_keys::ApiKey;

/// Names the schema; `version` changes when a field changes meaning or goes away
/// (new fields and events may be added within a version).
pub const SCHEMA: &str = "tollgate.token-service.audit";
pub const VERSION: u32 = 1;

/// Who and what an event belongs to: one HTTP request, or one CLI invocation.
#[derive(Clone, Debug)]
pub struct Context {
    pub request_id: String,
    /// `http` or `cli`.
    pub source: &'static str,
    /// Who acted, once known: the admin API's operator client, the CLI's OS user.
    pub actor: Option<String>,
}

tokio::task_local! {
    static TASK: RefCell<Context>;
}

thread_local! {
    static THREAD: RefCell<Option<Context>> = const { RefCell::new(None) };
}

static PROCESS: OnceLock<Context> = OnceLock::new();

/// Runs `request` with `context` as the context of its events.
pub async fn in_request<F: Future>(context: Context, request: F) -> F::Output {
    TASK.scope(RefCell::new(context), request).await
}

/// The context of the running request (or CLI invocation), if any.
pub fn current() -> Option<Context> {
    TASK.try_with(|context| context.borrow().clone())
        .ok()
        .or_else(|| THREAD.with(|context| context.borrow().clone()))
        .or_else(|| PROCESS.get().cloned())
}

/// Records who is acting in the running request (the admin API's operator).
pub fn set_actor(actor: &str) {
    let set = |context: &RefCell<Context>| context.borrow_mut().actor = Some(actor.to_owned());
    if TASK.try_with(set).is_err() {
        THREAD.with(|context| {
            if let Some(context) = context.borrow_mut().as_mut() {
                context.actor = Some(actor.to_owned());
            }
        });
    }
}

/// Runs `work` (on a blocking thread) with `context` as its events' context.
pub fn on_this_thread<T>(context: Option<Context>, work: impl FnOnce() -> T) -> T {
    let previous = THREAD.with(|slot| slot.replace(context));
    let result = work();
    THREAD.with(|slot| slot.replace(previous));
    result
}

/// Gives the CLI's events one request id for the whole invocation.
pub fn for_process(source: &'static str, actor: Option<String>) {
    let _ = PROCESS.set(Context {
        request_id: new_request_id(),
        source,
        actor,
    });
}

/// A fresh request id: 128 random bits, hex.
pub fn new_request_id() -> String {
    opaque::random_bytes::<16>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The request id a proxy sent in `x-request-id`, if it is one we can log and echo
/// as is: 1 to 128 visible ASCII characters, no quotes or backslashes.
pub fn accepted_request_id(value: &str) -> Option<&str> {
    let acceptable = |byte: u8| byte.is_ascii_graphic() && byte != b'"' && byte != b'\\';
    (!value.is_empty() && value.len() <= 128 && value.bytes().all(acceptable)).then_some(value)
}

/// `sha256:` and the first 16 hex digits of the SHA-256 of `credential`: enough to
/// match two events about the same token or code, useless to present.
pub fn fingerprint(credential: &str) -> String {
    let digest = Sha256::digest(credential.as_bytes());
    let hex: String = digest
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A lock-out: the brute-force throttle refused an attempt for `account` (a client id
/// or a username) at `ip` with 429. Counted in the metrics too.
pub fn throttled(kind: Throttled, account: &str, ip: IpAddr, blocked: &Blocked) {
    METRICS.throttled(kind);
    let (kind, field) = match kind {
        Throttled::Client => ("client", "client_id"),
        Throttled::User => ("user", "username"),
    };
    Event::new("authentication.throttled")
        .field("account", kind)
        .field(field, account)
        .field("client_address", ip)
        .field("retry_after", blocked.retry_after_secs())
        .emit();
}

/// An event about an API key: its id, consumer and restrictions, never the key.
pub fn api_key_event(name: &'static str, key: &ApiKey) -> Event {
    Event::new(name)
        .field("api_key_id", &key.id)
        .field("consumer_id", &key.consumer_id)
        .field("expires_at", key.expires_at.map(clock::rfc3339))
        .field(
            "allowed_cidrs",
            (!key.allowed_cidrs.is_empty()).then_some(&key.allowed_cidrs),
        )
}

/// An event being built: [`Event::new`], [`Event::field`]s, then [`Event::emit`].
#[must_use = "an event is only logged by `emit`"]
pub struct Event(Map<String, Value>);

impl Event {
    pub fn new(name: &'static str) -> Self {
        let context = current();
        let mut fields = Map::new();
        fields.insert("schema".into(), SCHEMA.into());
        fields.insert("version".into(), VERSION.into());
        fields.insert("time".into(), now_rfc3339_millis().into());
        fields.insert("event".into(), name.into());
        fields.insert(
            "request_id".into(),
            context
                .as_ref()
                .map_or(Value::Null, |context| context.request_id.clone().into()),
        );
        fields.insert(
            "source".into(),
            context
                .as_ref()
                .map_or("http", |context| context.source)
                .into(),
        );
        if let Some(actor) = context.and_then(|context| context.actor) {
            fields.insert("actor".into(), actor.into());
        }
        Self(fields)
    }

    /// Adds `name: value`; `None` values are left out.
    pub fn field(mut self, name: &'static str, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(Value::Null) | Err(_) => {}
            Ok(value) => {
                self.0.insert(name.into(), value);
            }
        }
        self
    }

    /// Adds every member of `fields` (events whose fields are built as JSON).
    pub fn fields(mut self, fields: Value) -> Self {
        if let Value::Object(fields) = fields {
            self.0
                .extend(fields.into_iter().filter(|(_, v)| !v.is_null()));
        }
        self
    }

    /// Writes the event as one line to the audit sink.
    pub fn emit(self) {
        let mut line = Value::Object(self.0).to_string();
        line.push('\n');
        let mut sink = sink().lock().unwrap_or_else(PoisonError::into_inner);
        let written = match sink.as_mut() {
            Some(file) => file.write_all(line.as_bytes()).and_then(|()| file.flush()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
        if let Err(err) = written {
            eprintln!("error: writing an audit event: {err}");
        }
    }
}

/// `None`: stderr.
fn sink() -> &'static Mutex<Option<File>> {
    static SINK: OnceLock<Mutex<Option<File>>> = OnceLock::new();
    SINK.get_or_init(|| Mutex::new(None))
}

/// Sends every later event to `path` (appending) instead of stderr.
pub fn log_to_file(path: &Path) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the audit log {}", path.display()))?;
    *sink().lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC.
fn now_rfc3339_millis() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let seconds = i64::try_from(millis / 1000).unwrap_or(i64::MAX);
    let whole = clock::rfc3339(seconds);
    format!("{}.{:03}Z", whole.trim_end_matches('Z'), millis % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_short_stable_and_not_the_credential() {
        let print = fingerprint("tgr_secret-refresh-token");
        assert_eq!(print, fingerprint("tgr_secret-refresh-token"));
        assert_ne!(print, fingerprint("tgr_other"));
        assert_eq!(print.len(), "sha256:".len() + 16);
        assert!(!print.contains("secret"));
    }

    #[test]
    fn request_ids_from_a_proxy_are_checked() {
        assert_eq!(accepted_request_id("abc-123"), Some("abc-123"));
        assert_eq!(accepted_request_id(""), None);
        assert_eq!(accepted_request_id("a b"), None);
        assert_eq!(accepted_request_id("a\"b"), None);
        assert_eq!(accepted_request_id(&"x".repeat(129)), None);
        assert_eq!(new_request_id().len(), 32);
    }

    #[tokio::test]
    async fn events_carry_the_request_context_into_blocking_threads() {
        let context = Context {
            request_id: "req-1".into(),
            source: "http",
            actor: None,
        };
        let seen = in_request(context, async {
            set_actor("ops");
            let context = current();
            tokio::task::spawn_blocking(move || on_this_thread(context, current))
                .await
                .expect("join")
        })
        .await
        .expect("context");
        assert_eq!(seen.request_id, "req-1");
        assert_eq!(seen.actor.as_deref(), Some("ops"));
        let event = Event::new("test.event").field("absent", None::<String>).0;
        assert_eq!(event["schema"], SCHEMA);
        assert_eq!(event["version"], 1);
        assert!(!event.contains_key("absent"));
        let time = event["time"].as_str().expect("time");
        assert_eq!(time.len(), "2024-01-01T00:00:00.000Z".len(), "{time}");
        assert!(time.ends_with('Z'));
    }
}
