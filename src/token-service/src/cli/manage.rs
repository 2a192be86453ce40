//! The administrative subcommands, `clients`, `users`, `keys`, `consumers` and
//! `api-keys`. They work on the SQLite file directly and are safe to run while the
//! server is up: it sees committed changes on its next request (and the gateway on its
//! next poll of the key set).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context as _};

use crate::crypto::secrets;
use crate::crypto::signing_keys::Algorithm;
use crate::http::signin;
use crate::protocol::mtls::TlsAuth;
use crate::protocol::scope::ScopeSet;
use crate::server::audit;
use crate::server::clock;
use crate::storage::api_key_hashing::KeyHasher;
use crate::storage::api_keys::{self, NewKey, Restrictions};
use crate::storage::clients::{self, Client, ClientType};
use crate::storage::consumers::{self, Consumer};
use crate::storage::users::{self, User};
use crate::storage::{client_tls, db, factors, keystore};

/// Registers a client. A confidential client's secret is printed here, the only time
/// it is shown; one that authenticates with a certificate (`tls_auth`) has none.
pub fn add_client(
    db_path: &Path,
    client_id: &str,
    scopes: ScopeSet,
    default_scopes: ScopeSet,
    public: bool,
    redirect_uris: &[String],
    tls_auth: Option<TlsAuth>,
) -> anyhow::Result<()> {
    ensure!(
        !public || !redirect_uris.is_empty(),
        "a public client needs at least one --redirect-uri: it can only use the authorization code flow"
    );
    ensure!(
        !public || tls_auth.is_none(),
        "a public client cannot authenticate with a certificate"
    );
    let secret = (!public).then(secrets::generate);
    let client = Client {
        client_id: client_id.to_owned(),
        client_type: if public {
            ClientType::Public
        } else {
            ClientType::Confidential
        },
        secret_hash: secret.as_deref().map(secrets::hash).transpose()?,
        scopes,
        default_scopes,
        created_at: clock::now(),
        disabled_at: None,
    };
    let conn = db::open(db_path)?;
    clients::insert(&conn, &client, redirect_uris)?;
    if let Some(tls_auth) = &tls_auth {
        client_tls::register(&conn, client_id, tls_auth)?;
    }
    audit::Event::new("client.created")
        .field("client_id", &client.client_id)
        .field("client_type", client.client_type.as_str())
        .field("scope", client.scopes.to_string())
        .field("redirect_uris", redirect_uris)
        .field("tls_auth", tls_auth.as_ref().map(ToString::to_string))
        .emit();
    println!("client_id: {}", client.client_id);
    println!("client_type: {}", client.client_type.as_str());
    if let Some(tls_auth) = &tls_auth {
        println!("token_endpoint_auth_method: {tls_auth}");
    }
    // A certificate client's secret is never shown: nobody can authenticate with it (the
    // schema wants a hash for every confidential client).
    let secret = secret.filter(|_| tls_auth.is_none());
    if let Some(secret) = &secret {
        println!("client_secret: {secret}");
    }
    println!("scopes: {}", or_none(&client.scopes));
    println!("default_scopes: {}", or_none(&client.default_scopes));
    for redirect_uri in redirect_uris {
        println!("redirect_uri: {redirect_uri}");
    }
    if secret.is_some() {
        eprintln!("Store the client secret now: it is not shown again and cannot be recovered.");
    }
    Ok(())
}

pub fn list_clients(db_path: &Path) -> anyhow::Result<()> {
    let clients = clients::list(&db::open(db_path)?)?;
    if clients.is_empty() {
        eprintln!("no clients registered");
        return Ok(());
    }
    let conn = db::open(db_path)?;
    let mut rows = Vec::new();
    for client in &clients {
        rows.push(vec![
            client.client_id.clone(),
            client.client_type.as_str().to_owned(),
            if client.disabled_at.is_some() {
                "disabled"
            } else {
                "enabled"
            }
            .to_owned(),
            clock::rfc3339(client.created_at),
            client.scopes.to_string(),
            client.default_scopes.to_string(),
            clients::redirect_uris(&conn, &client.client_id)?.join(" "),
            client_tls::find(&conn, &client.client_id)?
                .map_or_else(String::new, |tls_auth| tls_auth.to_string()),
        ]);
    }
    print_table(
        &[
            "CLIENT_ID",
            "TYPE",
            "STATE",
            "CREATED",
            "SCOPES",
            "DEFAULT_SCOPES",
            "REDIRECT_URIS",
            "CERTIFICATE",
        ],
        rows,
    );
    Ok(())
}

pub fn remove_client(db_path: &Path, client_id: &str) -> anyhow::Result<()> {
    if !clients::remove(&db::open(db_path)?, client_id, clock::now())? {
        bail!("no client {client_id}");
    }
    audit::Event::new("client.removed")
        .field("client_id", client_id)
        .emit();
    println!("removed client {client_id}; its unexpired access tokens are revoked");
    Ok(())
}

pub fn set_client_enabled(db_path: &Path, client_id: &str, enabled: bool) -> anyhow::Result<()> {
    let conn = db::open(db_path)?;
    if clients::set_enabled(&conn, client_id, enabled, clock::now())?.is_none() {
        bail!("no client {client_id}");
    }
    let event = if enabled {
        "client.enabled"
    } else {
        "client.disabled"
    };
    audit::Event::new(event)
        .field("client_id", client_id)
        .emit();
    if enabled {
        println!("enabled client {client_id}");
    } else {
        println!("disabled client {client_id}; its grants and unexpired access tokens are revoked");
    }
    Ok(())
}

/// Adds a user with a password read from standard input; prints the user id, which is
/// the `sub` of the user's tokens.
pub fn add_user(db_path: &Path, username: &str, scopes: ScopeSet) -> anyhow::Result<()> {
    let password = read_password()?;
    users::validate_password(&password).map_err(anyhow::Error::msg)?;
    let user = User {
        user_id: users::new_user_id(),
        username: username.to_owned(),
        password_hash: secrets::hash(&password)?,
        scopes,
        created_at: clock::now(),
    };
    users::insert(&db::open(db_path)?, &user)?;
    audit::Event::new("user.created")
        .field("username", &user.username)
        .field("user_id", &user.user_id)
        .field("scope", user.scopes.to_string())
        .emit();
    println!("user_id: {}", user.user_id);
    println!("username: {}", user.username);
    println!("scopes: {}", or_none(&user.scopes));
    Ok(())
}

pub fn set_user_scopes(db_path: &Path, username: &str, scopes: &ScopeSet) -> anyhow::Result<()> {
    if !users::set_scopes(&db::open(db_path)?, username, scopes)? {
        bail!("no user {username}");
    }
    audit::Event::new("user.scopes_changed")
        .field("username", username)
        .field("scope", scopes.to_string())
        .emit();
    println!("{username}: {}", or_none(scopes));
    Ok(())
}

/// Scopes for display: `(none)` when empty.
fn or_none(scopes: &ScopeSet) -> String {
    if scopes.is_empty() {
        "(none)".to_owned()
    } else {
        scopes.to_string()
    }
}

pub fn list_users(db_path: &Path) -> anyhow::Result<()> {
    let users = users::list(&db::open(db_path)?)?;
    if users.is_empty() {
        eprintln!("no users");
        return Ok(());
    }
    let rows = users
        .iter()
        .map(|user| {
            vec![
                user.username.clone(),
                user.user_id.clone(),
                clock::rfc3339(user.created_at),
                user.scopes.to_string(),
            ]
        })
        .collect();
    print_table(&["USERNAME", "USER_ID", "CREATED", "SCOPES"], rows);
    Ok(())
}

pub fn remove_user(db_path: &Path, username: &str) -> anyhow::Result<()> {
    if !users::remove(&db::open(db_path)?, username, clock::now())? {
        bail!("no user {username}");
    }
    audit::Event::new("user.removed")
        .field("username", username)
        .emit();
    println!("removed user {username}");
    Ok(())
}

pub fn list_user_factors(db_path: &Path, username: &str) -> anyhow::Result<()> {
    let conn = db::open(db_path)?;
    let Some(user) = users::find_by_username(&conn, username)? else {
        bail!("no user {username}");
    };
    let list = factors::list(&conn, &user.user_id)?;
    if list.is_empty() {
        eprintln!("{username} has no second factor");
        return Ok(());
    }
    let rows = list
        .into_iter()
        .map(|factor| {
            vec![
                factor.factor_id,
                factor.kind.as_str().to_owned(),
                factor.label,
                clock::rfc3339(factor.created_at),
                factor
                    .last_used_at
                    .map_or_else(|| "never".to_owned(), clock::rfc3339),
            ]
        })
        .collect();
    print_table(&["FACTOR_ID", "KIND", "NAME", "ADDED", "LAST_USED"], rows);
    Ok(())
}

/// Enrols an authenticator app for a user; prints the secret once.
pub fn add_user_totp(db_path: &Path, username: &str, label: &str) -> anyhow::Result<()> {
    let label = factors::validate_label(label).map_err(anyhow::Error::msg)?;
    let conn = db::open(db_path)?;
    let Some(user) = users::find_by_username(&conn, username)? else {
        bail!("no user {username}");
    };
    let issuer = std::env::var("TOLLGATE_ISSUER").unwrap_or_else(|_| "Tollgate".to_owned());
    let seed = factors::new_totp_seed();
    let totp = factors::totp(&seed, &issuer, username)?;
    let factor_id = factors::add_totp(&conn, &user.user_id, &label, &seed, 0, clock::now())?;
    signin::audit(
        "user.factor_added",
        serde_json::json!({"user_id": user.user_id, "factor_id": factor_id, "kind": "totp", "by": "cli"}),
    );
    println!("factor_id: {factor_id}");
    println!("totp_secret: {seed}");
    println!("otpauth_uri: {}", totp.get_url());
    Ok(())
}

/// Removes every second factor of a user, with an audit line.
pub fn reset_user_factors(db_path: &Path, username: &str) -> anyhow::Result<()> {
    let conn = db::open(db_path)?;
    let Some(user) = users::find_by_username(&conn, username)? else {
        bail!("no user {username}");
    };
    let removed = factors::reset(&conn, &user.user_id)?;
    signin::audit(
        "user.factors_reset",
        serde_json::json!({"user_id": user.user_id, "removed": removed, "by": "cli"}),
    );
    println!("removed {removed} second factor(s) of {username}");
    Ok(())
}

/// The first line of standard input, without its line ending. On a terminal, prompts
/// twice with echo off (through `stty`).
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_line().context("reading the password from standard input");
    }
    let echo_off = stty("-echo");
    if !echo_off {
        eprintln!("warning: cannot turn off terminal echo; the password will be visible");
    }
    let prompt = |text: &str| -> anyhow::Result<String> {
        eprint!("{text}");
        std::io::stderr().flush()?;
        let line = read_line();
        eprintln!();
        line
    };
    let entered = prompt("Password: ").and_then(|first| {
        let second = prompt("Repeat password: ")?;
        ensure!(first == second, "the passwords differ");
        Ok(first)
    });
    if echo_off {
        stty("echo");
    }
    entered
}

fn read_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    ensure!(!line.is_empty(), "no password given on standard input");
    Ok(line.to_owned())
}

/// Runs `stty` on the terminal standard input is; returns whether it worked.
fn stty(setting: &str) -> bool {
    Command::new("stty")
        .arg(setting)
        .stdin(Stdio::inherit())
        .status()
        .is_ok_and(|status| status.success())
}

pub fn rotate_keys(db_path: &Path, alg: Option<Algorithm>) -> anyhow::Result<()> {
    let rotation = keystore::rotate(&mut db::open(db_path)?, alg, clock::now())?;
    audit::Event::new("signing_key.rotated")
        .field("kid", &rotation.new_kid)
        .field("alg", rotation.alg.to_string())
        .field("retired_kid", rotation.retired.as_ref().map(|(kid, _)| kid))
        .emit();
    println!("active key: {} ({})", rotation.new_kid, rotation.alg);
    if let Some((kid, publish_until)) = rotation.retired {
        println!(
            "retired key: {kid} (published in the JWKS until {})",
            clock::rfc3339(publish_until)
        );
    }
    if rotation.pruned > 0 {
        println!("deleted {} expired key(s)", rotation.pruned);
    }
    Ok(())
}

pub fn list_keys(db_path: &Path) -> anyhow::Result<()> {
    let keys = keystore::list(&db::open(db_path)?)?;
    if keys.is_empty() {
        eprintln!("no signing keys yet: `serve` or `keys rotate` creates one");
        return Ok(());
    }
    let now = clock::now();
    let optional_time = |time: Option<i64>| time.map_or_else(|| "-".to_owned(), clock::rfc3339);
    let rows = keys
        .iter()
        .map(|key| {
            let status = match key.publish_until {
                None => "active",
                Some(until) if until > now => "published",
                Some(_) => "expired",
            };
            vec![
                key.kid.clone(),
                key.alg.to_string(),
                status.to_owned(),
                clock::rfc3339(key.created_at),
                optional_time(key.retired_at),
                optional_time(key.publish_until),
            ]
        })
        .collect();
    print_table(
        &[
            "KID",
            "ALG",
            "STATUS",
            "CREATED",
            "RETIRED",
            "PUBLISHED_UNTIL",
        ],
        rows,
    );
    Ok(())
}

pub fn add_consumer(
    db_path: &Path,
    id: String,
    tenant: Option<String>,
    scopes: ScopeSet,
    plan: Option<String>,
) -> anyhow::Result<()> {
    let consumer = Consumer {
        id,
        tenant,
        scopes,
        plan,
        created_at: clock::now(),
    };
    ensure!(
        consumers::insert(&db::open(db_path)?, &consumer)?,
        "a consumer {} exists already",
        consumer.id
    );
    audit::Event::new("consumer.created")
        .field("consumer_id", &consumer.id)
        .field("tenant", &consumer.tenant)
        .field("scope", consumer.scopes.to_string())
        .field("plan", &consumer.plan)
        .emit();
    println!("consumer: {}", consumer.id);
    Ok(())
}

pub fn list_consumers(db_path: &Path) -> anyhow::Result<()> {
    let consumers = consumers::list(&db::open(db_path)?)?;
    if consumers.is_empty() {
        eprintln!("no consumers");
        return Ok(());
    }
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let rows = consumers
        .iter()
        .map(|consumer| {
            vec![
                consumer.id.clone(),
                or_dash(&consumer.tenant),
                or_dash(&consumer.plan),
                clock::rfc3339(consumer.created_at),
                consumer.scopes.to_string(),
            ]
        })
        .collect();
    print_table(&["CONSUMER", "TENANT", "PLAN", "CREATED", "SCOPES"], rows);
    Ok(())
}

pub fn remove_consumer(db_path: &Path, id: &str) -> anyhow::Result<()> {
    let Some(keys) = consumers::remove(&db::open(db_path)?, id)? else {
        bail!("no consumer {id}");
    };
    audit::Event::new("consumer.removed")
        .field("consumer_id", id)
        .field("removed_api_keys", keys)
        .emit();
    println!("removed consumer {id} and its {keys} API key(s)");
    Ok(())
}

pub fn create_api_key(
    db_path: &Path,
    hasher: &KeyHasher,
    consumer: &str,
    expires_in: Option<u32>,
    allowed_cidrs: Vec<String>,
) -> anyhow::Result<()> {
    let now = clock::now();
    let restrictions = Restrictions {
        expires_at: expires_in.map(|seconds| now + i64::from(seconds)),
        allowed_cidrs,
    };
    let created = api_keys::create(&db::open(db_path)?, hasher, consumer, &restrictions, now)??;
    audit::api_key_event("api_key.created", &created.key).emit();
    print_new_key(created)
}

pub fn rotate_api_key(
    db_path: &Path,
    hasher: &KeyHasher,
    id: &str,
    disable_old: bool,
) -> anyhow::Result<()> {
    let rotated = api_keys::rotate(&db::open(db_path)?, hasher, id, disable_old, clock::now())??;
    audit::api_key_event("api_key.rotated", &rotated.key)
        .field("replaces", id)
        .field("old_key_disabled", disable_old)
        .emit();
    print_new_key(rotated)?;
    if disable_old {
        println!("disabled: {id}");
    }
    Ok(())
}

fn print_new_key(new: NewKey) -> anyhow::Result<()> {
    println!("id: {}", new.key.id);
    println!("consumer: {}", new.key.consumer_id);
    if let Some(expires_at) = new.key.expires_at {
        println!("expires: {}", clock::rfc3339(expires_at));
    }
    if !new.key.allowed_cidrs.is_empty() {
        println!("allowed_cidrs: {}", new.key.allowed_cidrs.join(" "));
    }
    println!("api_key: {}", new.plaintext);
    eprintln!("Store the API key now: it is not shown again and cannot be recovered.");
    Ok(())
}

pub fn list_api_keys(db_path: &Path, consumer: Option<&str>) -> anyhow::Result<()> {
    let keys = api_keys::list(&db::open(db_path)?, consumer)?;
    if keys.is_empty() {
        eprintln!("no API keys");
        return Ok(());
    }
    let now = clock::now();
    let rows = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                key.consumer_id.clone(),
                key.state(now).to_owned(),
                clock::rfc3339(key.created_at),
                key.expires_at
                    .map_or_else(|| "-".to_owned(), clock::rfc3339),
                key.allowed_cidrs.join(" "),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "CONSUMER",
            "STATE",
            "CREATED",
            "EXPIRES",
            "ALLOWED_CIDRS",
        ],
        rows,
    );
    Ok(())
}

pub fn set_api_key_enabled(db_path: &Path, id: &str, enabled: bool) -> anyhow::Result<()> {
    let Some(key) = api_keys::set_enabled(&db::open(db_path)?, id, enabled)? else {
        bail!("no API key {id}");
    };
    let event = if enabled {
        "api_key.enabled"
    } else {
        "api_key.disabled"
    };
    audit::api_key_event(event, &key).emit();
    println!("{}: {}", key.id, key.state(clock::now()));
    Ok(())
}

pub fn delete_api_key(db_path: &Path, id: &str) -> anyhow::Result<()> {
    ensure!(
        api_keys::delete(&db::open(db_path)?, id)?,
        "no API key {id}"
    );
    audit::Event::new("api_key.deleted")
        .field("api_key_id", id)
        .emit();
    println!("deleted API key {id}");
    Ok(())
}

/// Left-aligned columns separated by two spaces.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let header_row = headers.iter().map(|header| (*header).to_owned()).collect();
    for row in std::iter::once(header_row).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
