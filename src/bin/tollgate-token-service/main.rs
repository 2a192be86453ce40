//! `tollgate-token-service`: the OAuth 2.0 authorization server that issues the JWT
//! access tokens Tollgate's Envoy filter verifies, plus the CLI that manages its
//! clients and signing keys in the same SQLite file.

mod cli;
mod clients;
mod clock;
mod config;
mod db;
mod errors;
mod http;
mod keys;
mod keystore;
mod scope;
mod secrets;
mod server;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ServeConfig;
use crate::keys::Algorithm;
use crate::scope::ScopeSet;

#[derive(Parser)]
#[command(
    name = "tollgate-token-service",
    version,
    about = "OAuth 2.0 token service for Tollgate: issues RFC 9068 JWT access tokens"
)]
struct Cli {
    /// SQLite database holding clients and signing keys (created if missing).
    #[arg(
        long,
        env = "TOLLGATE_DB",
        default_value = "tollgate-token-service.db",
        global = true
    )]
    db: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP token service.
    Serve(ServeConfig),
    /// Manage OAuth clients.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a confidential client; prints its generated secret, once.
    Add {
        /// Client id (printable ASCII, no spaces).
        #[arg(long, value_parser = parse_client_id)]
        id: String,
        /// Space-delimited scopes the client may request, e.g. "read:data write:data".
        #[arg(long, default_value = "")]
        scopes: ScopeSet,
    },
    /// List registered clients (never their secrets).
    List,
    /// Remove a client; its tokens stay valid until they expire.
    Remove {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new signing key and retire the active one, which stays in the JWKS
    /// until every token it signed has expired.
    Rotate {
        /// Algorithm of the new key [default: that of the active key, else ES256].
        #[arg(long, value_enum)]
        alg: Option<Algorithm>,
    },
    /// List signing keys and their publication status.
    List,
}

fn parse_client_id(client_id: &str) -> Result<String, String> {
    clients::validate_client_id(client_id).map(|()| client_id.to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let db = cli.db.as_path();
    let result = match cli.command {
        Command::Serve(config) => server::run(db, config),
        Command::Clients(ClientsCommand::Add { id, scopes }) => cli::add_client(db, &id, scopes),
        Command::Clients(ClientsCommand::List) => cli::list_clients(db),
        Command::Clients(ClientsCommand::Remove { id }) => cli::remove_client(db, &id),
        Command::Keys(KeysCommand::Rotate { alg }) => cli::rotate_keys(db, alg),
        Command::Keys(KeysCommand::List) => cli::list_keys(db),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
