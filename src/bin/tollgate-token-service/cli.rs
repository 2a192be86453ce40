//! The administrative subcommands, `clients`, `users` and `keys`. They work on the
//! SQLite file directly and are safe to run while the server is up: it sees committed
//! changes on its next request.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context as _};

use crate::clients::{self, Client, ClientType};
use crate::keys::Algorithm;
use crate::scope::ScopeSet;
use crate::users::{self, User};
use crate::{clock, db, keystore, secrets};

/// Registers a client. A confidential client's secret is printed here, the only time
/// it is shown.
pub fn add_client(
    db_path: &Path,
    client_id: &str,
    scopes: ScopeSet,
    public: bool,
    redirect_uris: &[String],
) -> anyhow::Result<()> {
    ensure!(
        !public || !redirect_uris.is_empty(),
        "a public client needs at least one --redirect-uri: it can only use the authorization code flow"
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
        created_at: clock::now(),
    };
    clients::insert(&db::open(db_path)?, &client, redirect_uris)?;
    println!("client_id: {}", client.client_id);
    println!("client_type: {}", client.client_type.as_str());
    if let Some(secret) = &secret {
        println!("client_secret: {secret}");
    }
    if client.scopes.is_empty() {
        println!("scopes: (none)");
    } else {
        println!("scopes: {}", client.scopes);
    }
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
            clock::rfc3339(client.created_at),
            client.scopes.to_string(),
            clients::redirect_uris(&conn, &client.client_id)?.join(" "),
        ]);
    }
    print_table(
        &["CLIENT_ID", "TYPE", "CREATED", "SCOPES", "REDIRECT_URIS"],
        rows,
    );
    Ok(())
}

pub fn remove_client(db_path: &Path, client_id: &str) -> anyhow::Result<()> {
    if !clients::remove(&db::open(db_path)?, client_id, clock::now())? {
        bail!("no client {client_id}");
    }
    println!("removed client {client_id}");
    Ok(())
}

/// Adds a user with a password read from standard input; prints the user id, which is
/// the `sub` of the user's tokens.
pub fn add_user(db_path: &Path, username: &str) -> anyhow::Result<()> {
    let password = read_password()?;
    users::validate_password(&password).map_err(anyhow::Error::msg)?;
    let user = User {
        user_id: users::new_user_id(),
        username: username.to_owned(),
        password_hash: secrets::hash(&password)?,
        created_at: clock::now(),
    };
    users::insert(&db::open(db_path)?, &user)?;
    println!("user_id: {}", user.user_id);
    println!("username: {}", user.username);
    Ok(())
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
            ]
        })
        .collect();
    print_table(&["USERNAME", "USER_ID", "CREATED"], rows);
    Ok(())
}

pub fn remove_user(db_path: &Path, username: &str) -> anyhow::Result<()> {
    if !users::remove(&db::open(db_path)?, username, clock::now())? {
        bail!("no user {username}");
    }
    println!("removed user {username}");
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
