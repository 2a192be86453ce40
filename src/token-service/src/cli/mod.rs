//! The command line: `serve` and the management commands, parsed and dispatched here;
//! the management commands themselves are in [`manage`].

mod manage;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::crypto::signing_keys::Algorithm;
use crate::protocol::mtls::{self, TlsAuth};
use crate::protocol::redirect_uri;
use crate::protocol::scope::ScopeSet;
use crate::server;
use crate::server::audit;
use crate::server::config::ServeConfig;
use crate::storage::{api_key_hashing, api_keys, clients, consumers, users};

#[derive(Parser)]
#[command(
    name = "tollgate-token-service",
    version,
    about = "OAuth 2.0 authorization server for Tollgate: issues RFC 9068 JWT access tokens"
)]
struct Cli {
    /// SQLite database holding clients, users, grants and signing keys [default:
    /// tollgate-token-service.db in the current directory if it exists, else the
    /// `make run` stack's .run/tollgate.db if that exists, else
    /// tollgate-token-service.db]. Only `serve` and `--create` make a missing one.
    #[arg(long, env = "TOLLGATE_DB", global = true)]
    db: Option<PathBuf>,

    /// Let a management command create the database if it does not exist (without
    /// it, a missing database is an error: usually a wrong path or working directory).
    #[arg(long, global = true)]
    create: bool,

    /// File holding the pepper for API-key digests (HMAC-SHA256 instead of SHA-256);
    /// the gateway's `api_keys.pepper` must hold the same text. Used by `serve` and
    /// `api-keys`.
    #[arg(
        long,
        env = "TOLLGATE_API_KEY_PEPPER_FILE",
        value_name = "FILE",
        global = true
    )]
    api_key_pepper_file: Option<PathBuf>,

    /// File the JSON audit events (see the README) are appended to, created if
    /// missing; stderr when not given. `serve` and the management commands both log.
    #[arg(long, env = "TOLLGATE_AUDIT_LOG", value_name = "FILE", global = true)]
    audit_log: Option<PathBuf>,

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
    /// Manage API-key consumers: partners, scripts and devices that use API keys.
    #[command(subcommand)]
    Consumers(ConsumersCommand),
    /// Manage API keys. Only their digests are stored; a key is shown once.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
}

#[derive(Subcommand)]
enum ConsumersCommand {
    /// Add a consumer.
    Add {
        /// Consumer id, forwarded upstream as the caller's subject.
        #[arg(long, value_parser = parse_name)]
        id: String,
        /// Tenant, forwarded upstream and usable as a rate-limit key.
        #[arg(long, value_parser = parse_name)]
        tenant: Option<String>,
        /// Space-delimited scopes every key of the consumer carries.
        #[arg(long, default_value = "")]
        scopes: ScopeSet,
        /// Rate-limit plan: a name in the gateway's `rate_limits.plans`.
        #[arg(long, value_parser = parse_name)]
        plan: Option<String>,
    },
    /// List consumers.
    List,
    /// Remove a consumer and every one of its keys.
    Remove {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum ApiKeysCommand {
    /// Create a key for a consumer and print it, the only time it is shown.
    Create {
        #[arg(long)]
        consumer: String,
        /// Lifetime in seconds [default: no expiry].
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
        expires_in: Option<u32>,
        /// An address block the key may be used from, e.g. 203.0.113.0/24 (repeatable;
        /// default: any address).
        #[arg(long = "allow-cidr", value_name = "CIDR", value_parser = api_keys::parse_cidr)]
        allowed_cidrs: Vec<String>,
    },
    /// List keys (ids and states, never a key or its digest).
    List {
        /// Only this consumer's keys.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Disable a key: the gateway refuses it from its next poll of the key set.
    Disable {
        #[arg(long)]
        id: String,
    },
    /// Enable a disabled key again.
    Enable {
        #[arg(long)]
        id: String,
    },
    /// Create a new key for the same consumer, with the same allowed addresses and
    /// lifetime, and print it.
    Rotate {
        #[arg(long)]
        id: String,
        /// Disable the old key at once (default: leave it enabled until the caller has
        /// moved over, then `disable` it).
        #[arg(long)]
        disable_old: bool,
    },
    /// Delete a key.
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a client. A confidential client gets a generated secret, printed once;
    /// a public client (--public) has none and must use PKCE.
    Add {
        /// Client id: 1 to 128 ASCII letters, digits and - . _ ~
        #[arg(long, value_parser = parse_client_id)]
        id: String,
        /// Space-delimited scopes the client may request, e.g. "read:data write:data".
        #[arg(long, default_value = "")]
        scopes: ScopeSet,
        /// What a token request without `scope` gets: some of --scopes [default: none,
        /// so requests must name the scopes they want].
        #[arg(long, default_value = "")]
        default_scopes: ScopeSet,
        /// A public client (a native mobile or desktop app): no secret, PKCE mandatory.
        /// Needs at least one --redirect-uri.
        #[arg(long)]
        public: bool,
        /// A redirect URI for the authorization code flow, matched exactly (repeatable):
        /// https, http on a loopback host, or a reverse-domain private-use scheme such
        /// as com.example.app:/callback.
        #[arg(long = "redirect-uri", value_name = "URI", value_parser = parse_redirect_uri)]
        redirect_uris: Vec<String>,
        #[command(flatten)]
        tls: TlsAuthArgs,
    },
    /// List registered clients (never their secrets).
    List,
    /// Remove a client and its grants: its refresh tokens stop working and every
    /// unexpired access token issued to it (client_credentials ones too) is revoked.
    Remove {
        #[arg(long)]
        id: String,
    },
    /// Disable a client: it can no longer authenticate, its grants are revoked and
    /// every unexpired access token issued to it is revoked.
    Disable {
        #[arg(long)]
        id: String,
    },
    /// Enable a disabled client again (what was revoked stays revoked).
    Enable {
        #[arg(long)]
        id: String,
    },
}

/// A client that authenticates with a certificate instead of a secret (RFC 8705 §2):
/// no secret is made, and its tokens are bound to the certificate. At most one.
#[derive(clap::Args)]
#[group(multiple = false, conflicts_with = "public")]
struct TlsAuthArgs {
    /// tls_client_auth: the certificate's subject DN, as Envoy forwards it (RFC 2253,
    /// e.g. "CN=partner-a,O=Example").
    #[arg(long, value_name = "DN")]
    tls_subject_dn: Option<String>,
    /// tls_client_auth: a DNS name among the certificate's SANs.
    #[arg(long, value_name = "NAME")]
    tls_san_dns: Option<String>,
    /// tls_client_auth: a URI among the certificate's SANs (e.g. a SPIFFE ID).
    #[arg(long, value_name = "URI")]
    tls_san_uri: Option<String>,
    /// self_signed_tls_client_auth: the client's (self-signed) PEM certificate.
    #[arg(long, value_name = "FILE")]
    tls_certificate: Option<PathBuf>,
    /// self_signed_tls_client_auth: the certificate's SHA-256, hex or base64url.
    #[arg(long, value_name = "THUMBPRINT", value_parser = mtls::thumbprint_of)]
    tls_thumbprint: Option<String>,
}

impl TlsAuthArgs {
    fn into_tls_auth(self) -> anyhow::Result<Option<TlsAuth>> {
        let nonempty = |value: String, flag: &str| {
            anyhow::ensure!(!value.trim().is_empty(), "{flag} must not be empty");
            Ok(value)
        };
        Ok(Some(if let Some(dn) = self.tls_subject_dn {
            TlsAuth::SubjectDn(nonempty(dn, "--tls-subject-dn")?)
        } else if let Some(name) = self.tls_san_dns {
            TlsAuth::SanDns(nonempty(name, "--tls-san-dns")?)
        } else if let Some(uri) = self.tls_san_uri {
            TlsAuth::SanUri(nonempty(uri, "--tls-san-uri")?)
        } else if let Some(path) = self.tls_certificate {
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            TlsAuth::SelfSigned(mtls::thumbprint_of(&pem).map_err(anyhow::Error::msg)?)
        } else if let Some(thumbprint) = self.tls_thumbprint {
            TlsAuth::SelfSigned(thumbprint)
        } else {
            return Ok(None);
        }))
    }
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user. The password is read from standard input (prompted for, without
    /// echo, on a terminal), never from the command line.
    Add {
        /// Username: 1 to 64 ASCII letters, digits and . _ @ + -
        #[arg(long, value_parser = parse_username)]
        username: String,
        /// Space-delimited scopes the user may hold, e.g. "read:data"; a token for the
        /// user carries no others, whatever the client may ask for [default: none].
        #[arg(long, default_value = "")]
        scopes: ScopeSet,
    },
    /// List users (never their password hashes).
    List,
    /// Replace the scopes a user may hold. Their tokens keep their scopes until they
    /// expire; refreshes from then on get the new set.
    SetScopes {
        #[arg(long)]
        username: String,
        #[arg(long)]
        scopes: ScopeSet,
    },
    /// Remove a user: their refresh tokens stop working and their access tokens are
    /// revoked.
    Remove {
        #[arg(long)]
        username: String,
    },
    /// Set up an authenticator app (TOTP) for a user and print its secret and
    /// otpauth:// URI once (for provisioning; users normally enrol at /account).
    AddTotp {
        #[arg(long)]
        username: String,
        /// The name the user sees for it.
        #[arg(long, default_value = "Authenticator app")]
        label: String,
    },
    /// List a user's second factors (passkeys, authenticator app); never a secret.
    Factors {
        #[arg(long)]
        username: String,
    },
    /// Remove every second factor of a user (lost phone or passkey): from now on they
    /// sign in with their password and enrol again.
    ResetFactors {
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

fn parse_name(name: &str) -> Result<String, String> {
    consumers::validate_name("name", name).map(|()| name.to_owned())
}

/// The default database: the one in the current directory, else the `make run`
/// stack's, else where `serve` makes a new one.
const DEFAULT_DB: &str = "tollgate-token-service.db";
const RUN_STACK_DB: &str = ".run/tollgate.db";

fn database_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let here = PathBuf::from(DEFAULT_DB);
        let stack = PathBuf::from(RUN_STACK_DB);
        if !here.exists() && stack.exists() {
            stack
        } else {
            here
        }
    })
}

/// Parses the command line and runs the command: the whole program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    let db_path = database_path(cli.db);
    if !serving && !cli.create && !db_path.exists() {
        eprintln!(
            "error: database {} does not exist. Point --db (or TOLLGATE_DB) at the service's \
             database (for `make run`'s stack: export TOLLGATE_DB=$PWD/.run/tollgate.db), or \
             pass --create to start a new one there",
            db_path.display()
        );
        return ExitCode::FAILURE;
    }
    let db = db_path.as_path();
    let pepper = cli.api_key_pepper_file.as_deref();
    let hasher = || api_key_hashing::KeyHasher::load(pepper);
    if let Some(path) = &cli.audit_log {
        if let Err(err) = audit::log_to_file(path) {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    }
    if !matches!(cli.command, Command::Serve(_)) {
        // One request id for the whole invocation; the actor is the OS user.
        audit::for_process("cli", std::env::var("USER").ok());
    }
    let result = match cli.command {
        Command::Serve(config) => hasher().and_then(|hasher| server::run(db, config, hasher)),
        Command::Clients(ClientsCommand::Add {
            id,
            scopes,
            default_scopes,
            public,
            redirect_uris,
            tls,
        }) => tls.into_tls_auth().and_then(|tls_auth| {
            manage::add_client(
                db,
                &id,
                scopes,
                default_scopes,
                public,
                &redirect_uris,
                tls_auth,
            )
        }),
        Command::Clients(ClientsCommand::List) => manage::list_clients(db),
        Command::Clients(ClientsCommand::Remove { id }) => manage::remove_client(db, &id),
        Command::Clients(ClientsCommand::Disable { id }) => {
            manage::set_client_enabled(db, &id, false)
        }
        Command::Clients(ClientsCommand::Enable { id }) => {
            manage::set_client_enabled(db, &id, true)
        }
        Command::Users(UsersCommand::Add { username, scopes }) => {
            manage::add_user(db, &username, scopes)
        }
        Command::Users(UsersCommand::List) => manage::list_users(db),
        Command::Users(UsersCommand::SetScopes { username, scopes }) => {
            manage::set_user_scopes(db, &username, &scopes)
        }
        Command::Users(UsersCommand::Remove { username }) => manage::remove_user(db, &username),
        Command::Users(UsersCommand::AddTotp { username, label }) => {
            manage::add_user_totp(db, &username, &label)
        }
        Command::Users(UsersCommand::Factors { username }) => {
            manage::list_user_factors(db, &username)
        }
        Command::Users(UsersCommand::ResetFactors { username }) => {
            manage::reset_user_factors(db, &username)
        }
        Command::Keys(KeysCommand::Rotate { alg }) => manage::rotate_keys(db, alg),
        Command::Keys(KeysCommand::List) => manage::list_keys(db),
        Command::Consumers(ConsumersCommand::Add {
            id,
            tenant,
            scopes,
            plan,
        }) => manage::add_consumer(db, id, tenant, scopes, plan),
        Command::Consumers(ConsumersCommand::List) => manage::list_consumers(db),
        Command::Consumers(ConsumersCommand::Remove { id }) => manage::remove_consumer(db, &id),
        Command::ApiKeys(ApiKeysCommand::Create {
            consumer,
            expires_in,
            allowed_cidrs,
        }) => hasher().and_then(|hasher| {
            manage::create_api_key(db, &hasher, &consumer, expires_in, allowed_cidrs)
        }),
        Command::ApiKeys(ApiKeysCommand::List { consumer }) => {
            manage::list_api_keys(db, consumer.as_deref())
        }
        Command::ApiKeys(ApiKeysCommand::Disable { id }) => {
            manage::set_api_key_enabled(db, &id, false)
        }
        Command::ApiKeys(ApiKeysCommand::Enable { id }) => {
            manage::set_api_key_enabled(db, &id, true)
        }
        Command::ApiKeys(ApiKeysCommand::Rotate { id, disable_old }) => {
            hasher().and_then(|hasher| manage::rotate_api_key(db, &hasher, &id, disable_old))
        }
        Command::ApiKeys(ApiKeysCommand::Delete { id }) => manage::delete_api_key(db, &id),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
