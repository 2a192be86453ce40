//! `tollgate-token-service`: the OAuth 2.0 authorization server that issues the JWT
//! access tokens Tollgate's Envoy filter verifies, plus the CLI that manages its
//! clients, users and signing keys in the same SQLite file.

mod cli;
mod client_ip;
mod clients;
mod clock;
mod codes;
mod config;
mod db;
mod errors;
mod grants;
mod http;
mod keys;
mod keystore;
mod opaque;
mod pending;
mod pkce;
mod redirect_uri;
mod refresh;
mod revocation;
mod scope;
mod secrets;
mod server;
mod throttle;
mod token;
mod users;

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
    about = "OAuth 2.0 authorization server for Tollgate: issues RFC 9068 JWT access tokens"
)]
struct Cli {
    /// SQLite database holding clients, users, grants and signing keys (created if missing).
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
    /// Manage the users who log in at /authorize.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a client. A confidential client gets a generated secret, printed once;
    /// a public client (--public) has none and must use PKCE.
    Add {
        /// Client id (printable ASCII, no spaces).
        #[arg(long, value_parser = parse_client_id)]
        id: String,
        /// Space-delimited scopes the client may request, e.g. "read:data write:data".
        #[arg(long, default_value = "")]
        scopes: ScopeSet,
        /// A public client (mobile app, SPA): no secret, PKCE mandatory. Needs at least
        /// one --redirect-uri.
        #[arg(long)]
        public: bool,
        /// A redirect URI for the authorization code flow, matched exactly (repeatable):
        /// https, http on a loopback host, or a reverse-domain private-use scheme such
        /// as com.example.app:/callback.
        #[arg(long = "redirect-uri", value_name = "URI", value_parser = parse_redirect_uri)]
        redirect_uris: Vec<String>,
    },
    /// List registered clients (never their secrets).
    List,
    /// Remove a client and its grants: its refresh tokens stop working, the access
    /// tokens issued from them are revoked, client_credentials tokens run out.
    Remove {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user. The password is read from standard input (prompted for, without
    /// echo, on a terminal), never from the command line.
    Add {
        /// Username: 1 to 64 ASCII letters, digits and . _ @ + -
        #[arg(long, value_parser = parse_username)]
        username: String,
    },
    /// List users (never their password hashes).
    List,
    /// Remove a user: their refresh tokens stop working and their access tokens are
    /// revoked.
    Remove {
        #[arg(long)]
        username: String,
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

fn parse_redirect_uri(uri: &str) -> Result<String, String> {
    redirect_uri::validate(uri).map(|()| uri.to_owned())
}

fn parse_username(username: &str) -> Result<String, String> {
    users::validate_username(username).map(|()| username.to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let db = cli.db.as_path();
    let result = match cli.command {
        Command::Serve(config) => server::run(db, config),
        Command::Clients(ClientsCommand::Add {
            id,
            scopes,
            public,
            redirect_uris,
        }) => cli::add_client(db, &id, scopes, public, &redirect_uris),
        Command::Clients(ClientsCommand::List) => cli::list_clients(db),
        Command::Clients(ClientsCommand::Remove { id }) => cli::remove_client(db, &id),
        Command::Users(UsersCommand::Add { username }) => cli::add_user(db, &username),
        Command::Users(UsersCommand::List) => cli::list_users(db),
        Command::Users(UsersCommand::Remove { username }) => cli::remove_user(db, &username),
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
