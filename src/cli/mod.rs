//! The command line (contract §5). Human output by default, `--json` for scripts; every
//! error is one line naming the problem and the fix, with a non-zero exit.

mod client;

use crate::app::{self, dev};
use crate::clock::{Clock as _, SystemClock};
use crate::domain::{Audience, ScopeSet, SpiffeId, parse_duration};
use crate::policy::{AccessRequest, CompiledPolicy, Decision, check_report};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Security token service for workloads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Exchange a credential for an access token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask the server whether a token is active (RFC 7662).
    Introspect(IntrospectArgs),
    /// Operator commands against the admin API.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Helpers for trying Tessera with `serve --dev`.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Reads a secret on stdin and prints its argon2id hash for `[[introspection.client]]`.
    HashSecret,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (contract §4).
    #[arg(long, conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Embedded default: plain HTTP on loopback, generated keys, demo policy.
    #[arg(long)]
    pub dev: bool,
    /// Dev mode data directory.
    #[arg(long, default_value = dev::DEFAULT_DATA_DIR, requires = "dev")]
    pub data_dir: PathBuf,
    /// Dev mode public listener.
    #[arg(long, default_value = dev::DEFAULT_PUBLIC, requires = "dev")]
    pub listen: SocketAddr,
    /// Dev mode admin listener.
    #[arg(long, default_value = dev::DEFAULT_ADMIN, requires = "dev")]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the decision for an identity and audience, and the rule that made it.
    Check {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        audience: String,
        #[arg(long, default_value = "")]
        scope: String,
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Public URL of the server.
    #[arg(long, env = "TESSERA_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// PEM CA certificate to trust for https URLs.
    #[arg(long, env = "TESSERA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the raw JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// RFC 8693 token exchange with a JWT-SVID (or OIDC token) read from a file.
    Exchange {
        #[arg(long)]
        subject_token_file: PathBuf,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Args)]
pub struct IntrospectArgs {
    /// The token to check (or `-` to read it from stdin).
    pub token: String,
    /// Authenticate with this JWT-SVID (client assertion, jwt-spiffe).
    #[arg(long)]
    pub assertion_file: Option<PathBuf>,
    /// Authenticate as a static client (HTTP Basic); the secret is read from --secret-file.
    #[arg(long, requires = "secret_file")]
    pub client_id: Option<String>,
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args, Clone)]
pub struct AdminConn {
    /// Admin URL of the server.
    #[arg(
        long,
        env = "TESSERA_ADMIN_URL",
        default_value = "http://127.0.0.1:9080"
    )]
    pub url: String,
    /// File holding the admin token.
    #[arg(
        long,
        env = "TESSERA_ADMIN_TOKEN_FILE",
        default_value = "./tessera-data/admin-token"
    )]
    pub admin_token_file: PathBuf,
    #[arg(long, env = "TESSERA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Revoke one token, a subject's tokens, or every token of a key.
    Revoke {
        #[arg(long, group = "target", required = true)]
        jti: Option<String>,
        #[arg(long, group = "target")]
        subject: Option<String>,
        #[arg(long, group = "target")]
        kid: Option<String>,
        #[arg(long)]
        reason: String,
        /// With --subject: also refuse new tokens for this long (e.g. 30m).
        #[arg(long, requires = "subject")]
        block_new: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List live revocations.
    Revocations {
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Lift a subject or key revocation by its id.
    Lift {
        id: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List live issued tokens (never the tokens themselves).
    Tokens {
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        audience: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Promote the next signing key and publish a new next key.
    RotateKeys {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Reload policy and trust bundles.
    ReloadPolicy {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Recent audit events.
    Audit {
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Mint a JWT-SVID from the dev trust domain (created by `serve --dev`).
    JwtSvid {
        spiffe_id: String,
        #[arg(long, required = true)]
        audience: Vec<String>,
        #[arg(long, default_value = "5m")]
        ttl: String,
        #[arg(long, default_value = dev::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Policy(PolicyCommand::Check {
            policy,
            identity,
            audience,
            scope,
            actor,
        }) => policy_check(&policy, &identity, &audience, &scope, actor.as_deref()),
        Command::Token(TokenCommand::Exchange {
            subject_token_file,
            audience,
            scope,
            conn,
        }) => client::exchange(&conn, &subject_token_file, &audience, scope.as_deref()).await,
        Command::Introspect(args) => client::introspect(&args).await,
        Command::Admin(cmd) => client::admin(cmd).await,
        Command::Dev(DevCommand::JwtSvid {
            spiffe_id,
            audience,
            ttl,
            data_dir,
        }) => {
            let id = SpiffeId::parse(&spiffe_id)
                .with_context(|| format!("{spiffe_id:?} is not a SPIFFE ID"))?;
            let ttl = parse_duration(&ttl).context("--ttl")?;
            let token = dev::mint_jwt_svid(&data_dir, &id, &audience, ttl, SystemClock.now())?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::HashSecret => hash_secret(),
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let settings = if args.dev {
        let s = dev::prepare(&args.data_dir, args.listen, args.admin_listen)?;
        eprintln!("{}", dev::warning(&args.data_dir));
        s
    } else {
        let Some(path) = args.config else {
            bail!("give --config FILE for a production server, or --dev to try Tessera locally");
        };
        let env: Vec<(String, String)> = std::env::vars().collect();
        crate::config::load(&path, &env)?
    };
    app::run(settings).await?;
    Ok(ExitCode::SUCCESS)
}

fn policy_check(
    policy: &std::path::Path,
    identity: &str,
    audience: &str,
    scope: &str,
    actor: Option<&str>,
) -> Result<ExitCode> {
    let compiled = CompiledPolicy::load(policy)?;
    let id = SpiffeId::parse(identity)
        .with_context(|| format!("--identity {identity:?} is not a SPIFFE ID"))?;
    let audience = Audience::parse(audience).context("--audience")?;
    let scopes = ScopeSet::parse(scope).context("--scope")?;
    let actor = actor
        .map(|a| SpiffeId::parse(a).with_context(|| format!("--actor {a:?} is not a SPIFFE ID")))
        .transpose()?;
    let principal = crate::domain::Principal::Spiffe(id);
    let request = AccessRequest {
        audience: &audience,
        scopes: &scopes,
        actor: actor.as_ref(),
    };
    let decision = compiled.decide(&principal, &request);
    println!("{}", check_report(&principal, &request, &decision));
    Ok(match decision {
        Decision::Grant(_) => ExitCode::SUCCESS,
        Decision::Deny(_) => ExitCode::from(1),
    })
}

fn hash_secret() -> Result<ExitCode> {
    use argon2::PasswordHasher as _;
    let mut secret = String::new();
    std::io::stdin()
        .read_line(&mut secret)
        .context("reading the secret from stdin")?;
    let secret = secret.trim_end_matches(['\n', '\r']);
    if secret.len() < 16 {
        bail!("the secret is shorter than 16 characters; use a long random secret");
    }
    let salt_bytes = crate::jose::random_bytes::<16>()?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt_bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}
