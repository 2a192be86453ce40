//! The administrative subcommands, `clients` and `keys`. They work on the SQLite file
//! directly and are safe to run while the server is up: it sees committed changes on
//! its next request.

use std::path::Path;

use anyhow::bail;

use crate::clients::{self, Client, ClientType};
use crate::keys::Algorithm;
use crate::scope::ScopeSet;
use crate::{clock, db, keystore, secrets};

/// Registers a confidential client and prints its secret, the only time it is shown.
pub fn add_client(db_path: &Path, client_id: &str, scopes: ScopeSet) -> anyhow::Result<()> {
    let secret = secrets::generate();
    let client = Client {
        client_id: client_id.to_owned(),
        client_type: ClientType::Confidential,
        secret_hash: secrets::hash(&secret)?,
        scopes,
        created_at: clock::now(),
    };
    clients::insert(&db::open(db_path)?, &client)?;
    println!("client_id: {}", client.client_id);
    println!("client_secret: {secret}");
    if client.scopes.is_empty() {
        println!("scopes: (none)");
    } else {
        println!("scopes: {}", client.scopes);
    }
    eprintln!("Store the client secret now: it is not shown again and cannot be recovered.");
    Ok(())
}

pub fn list_clients(db_path: &Path) -> anyhow::Result<()> {
    let clients = clients::list(&db::open(db_path)?)?;
    if clients.is_empty() {
        eprintln!("no clients registered");
        return Ok(());
    }
    let rows = clients
        .iter()
        .map(|client| {
            vec![
                client.client_id.clone(),
                client.client_type.as_str().to_owned(),
                clock::rfc3339(client.created_at),
                client.scopes.to_string(),
            ]
        })
        .collect();
    print_table(&["CLIENT_ID", "TYPE", "CREATED", "SCOPES"], rows);
    Ok(())
}

pub fn remove_client(db_path: &Path, client_id: &str) -> anyhow::Result<()> {
    if !clients::remove(&db::open(db_path)?, client_id)? {
        bail!("no client {client_id}");
    }
    println!("removed client {client_id}");
    Ok(())
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
