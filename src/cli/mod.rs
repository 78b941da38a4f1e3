//! The command line (contract §5). Human output by default, `--json` for scripts; every
//! error is one line naming the problem and the fix, with a non-zero exit.

mod client;

use crate::app::{self, dev};
use crate::clock::{Clock as _, SystemClock};
use crate::domain::{Audience, Principal, ScopeSet, SpiffeId, parse_duration};
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
    about = "Security token service for workloads",
    long_about = "Security token service for workloads: exchange a SPIFFE X.509-SVID, \
JWT-SVID or OIDC token for a short-lived, narrowly scoped, revocable JWT access token.",
    after_help = "Try it: `tessera serve --dev` in one terminal, then\n  \
tessera dev jwt-svid spiffe://dev.local/ns/demo/sa/app --audience http://127.0.0.1:8080 > svid.jwt\n  \
tessera token exchange --subject-token-file svid.jwt --audience https://ledger.dev.local\n\n\
Docs: README.md, docs/contract.md (endpoints, configuration, policy), docs/operations.md."
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
    /// Print a shell completion script (e.g. `tessera completions bash >
    /// /etc/bash_completion.d/tessera`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
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
    /// Print the decision for an identity and audience, and the rule that made it; with
    /// --lint, also (or only) the policy's warnings.
    Check(PolicyCheckArgs),
}

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// The policy file to check (contract §4, Policy file).
    #[arg(long)]
    pub policy: PathBuf,
    /// A SPIFFE ID to check.
    #[arg(
        long,
        conflicts_with = "claims_file",
        required_unless_present_any = ["lint", "claims_file"],
        requires = "audience"
    )]
    pub identity: Option<String>,
    /// An OIDC token's claims as a JSON object, to check OIDC rules offline; the issuer
    /// is its `iss`, the subject its `sub`.
    #[arg(long, requires = "audience")]
    pub claims_file: Option<PathBuf>,
    /// The audience the token would be for.
    #[arg(long, required_unless_present = "lint")]
    pub audience: Option<String>,
    /// Space-separated scopes to request (empty: the rule's default scopes).
    #[arg(long, default_value = "")]
    pub scope: String,
    /// A delegating actor's SPIFFE ID (RFC 8693 actor_token), for delegation rules.
    #[arg(long)]
    pub actor: Option<String>,
    /// Print the policy's warnings (unpinned tenants, trust-domain-wide patterns, TTLs
    /// above the global maximum), then their count.
    #[arg(long)]
    pub lint: bool,
    /// With --lint: exit 1 when there is any warning.
    #[arg(long, requires = "lint")]
    pub strict: bool,
    /// The server's tokens.max_ttl, for the TTL warning.
    #[arg(long, default_value = "15m", conflicts_with = "config")]
    pub max_ttl: String,
    /// Read tokens.max_ttl from this Tessera configuration file instead of --max-ttl.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
        /// File holding the subject token (a JWT-SVID or an OIDC ID token).
        #[arg(long)]
        subject_token_file: PathBuf,
        /// The audience (resource server) the access token is for.
        #[arg(long)]
        audience: String,
        /// Space-separated scopes to request (absent: the rule's default scopes).
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
    /// File holding the static client's secret.
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
    /// PEM CA certificate to trust for https URLs.
    #[arg(long, env = "TESSERA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the raw JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Revoke one token, a subject's tokens, or every token of a key.
    Revoke {
        /// Revoke the one token with this `jti`, until it expires.
        #[arg(long, group = "target", required = true)]
        jti: Option<String>,
        /// Revoke every token issued so far to this subject (SPIFFE ID or `<iss>#<sub>`).
        #[arg(long, group = "target")]
        subject: Option<String>,
        /// Revoke every token signed by this key and remove it from the JWKS.
        #[arg(long, group = "target")]
        kid: Option<String>,
        /// Why (required; recorded in the revocation and the audit trail).
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
        /// Only this kind: jti, subject or kid.
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Lift a subject or key revocation by its id.
    Lift {
        /// The revocation's id (from `tessera admin revocations`).
        id: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List live issued tokens (never the tokens themselves).
    Tokens {
        /// Only tokens of this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only tokens for this audience.
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
        /// Only events about this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only events with this outcome: success or failure.
        #[arg(long)]
        outcome: Option<String>,
        /// At most this many events (newest first).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        conn: AdminConn,
    },
}

const MAX_DEV_SVID_TTL_SECS: u64 = 86_400;

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Mint a JWT-SVID from the dev trust domain (created by `serve --dev`).
    JwtSvid {
        /// The SPIFFE ID to mint for, in the dev trust domain (spiffe://dev.local/...).
        spiffe_id: String,
        /// The JWT-SVID's audience (repeat for several); Tessera's issuer URL to exchange it.
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Lifetime, from 1s to 24h, e.g. 5m.
        #[arg(long, default_value = "5m")]
        ttl: String,
        /// The dev server's data directory (holds the dev trust domain's key).
        #[arg(long, default_value = dev::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Policy(PolicyCommand::Check(args)) => policy_check(&args),
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
            // A JWT-SVID is short-lived; the bound also keeps iat + ttl from overflowing.
            if !(1..=MAX_DEV_SVID_TTL_SECS).contains(&ttl) {
                bail!("--ttl must be from 1s to 24h, e.g. --ttl 5m");
            }
            let token = dev::mint_jwt_svid(&data_dir, &id, &audience, ttl, SystemClock.now())?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::HashSecret => hash_secret(),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tessera",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
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

fn policy_check(args: &PolicyCheckArgs) -> Result<ExitCode> {
    let compiled = CompiledPolicy::load(&args.policy)?;
    let mut code = ExitCode::SUCCESS;
    let principal = match (&args.identity, &args.claims_file) {
        (Some(identity), _) => Some(Principal::Spiffe(
            SpiffeId::parse(identity)
                .with_context(|| format!("--identity {identity:?} is not a SPIFFE ID"))?,
        )),
        (None, Some(path)) => Some(oidc_principal(path)?),
        (None, None) => None,
    };
    match (principal, &args.audience) {
        (Some(principal), Some(audience)) => {
            let audience = Audience::parse(audience).context("--audience")?;
            let scopes = ScopeSet::parse(&args.scope).context("--scope")?;
            let actor = args
                .actor
                .as_deref()
                .map(|a| {
                    SpiffeId::parse(a).with_context(|| format!("--actor {a:?} is not a SPIFFE ID"))
                })
                .transpose()?;
            let request = AccessRequest {
                audience: &audience,
                scopes: &scopes,
                actor: actor.as_ref(),
            };
            let decision = compiled.decide(&principal, &request);
            println!("{}", check_report(&principal, &request, &decision));
            if let Decision::Deny(_) = decision {
                code = ExitCode::from(1);
            }
        }
        (None, Some(_)) => {
            bail!("--audience needs an identity to check; give --identity or --claims-file")
        }
        (_, None) => {}
    }
    if args.lint {
        let warnings = compiled.lint(lint_max_ttl(args)?);
        for w in &warnings {
            println!("{w}");
        }
        let n = warnings.len();
        println!("{n} warning{}", if n == 1 { "" } else { "s" });
        if args.strict && n > 0 {
            code = ExitCode::from(1);
        }
    }
    Ok(code)
}

/// The global maximum TTL the lint compares rules with: `tokens.max_ttl` of `--config`
/// (through the server's own loader and environment overlay, so the value is the one
/// `serve` would use), else `--max-ttl`.
fn lint_max_ttl(args: &PolicyCheckArgs) -> Result<u64> {
    if let Some(path) = &args.config {
        let env: Vec<(String, String)> = std::env::vars().collect();
        return Ok(crate::config::load(path, &env)?.max_ttl);
    }
    match parse_duration(&args.max_ttl) {
        Ok(0) => bail!("--max-ttl must be above zero, like \"15m\""),
        Ok(secs) => Ok(secs),
        Err(e) => bail!("--max-ttl: {e}"),
    }
}

/// Longest claims file read, like the largest token the server accepts would decode to.
const MAX_CLAIMS_FILE: u64 = 64 * 1024;

/// An OIDC principal from a JSON claims file, as the verifier would build it from a
/// token it accepted (`iss`, `sub`, every claim).
fn oidc_principal(path: &std::path::Path) -> Result<Principal> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("--claims-file {shown}"))?;
    if meta.len() > MAX_CLAIMS_FILE {
        bail!("--claims-file {shown}: larger than 64 KiB; give the decoded claims of one token");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("--claims-file {shown}"))?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| {
            format!("--claims-file {shown}: expected a JSON object of token claims, like {{\"iss\": \"https://…\", \"sub\": \"…\"}}")
        })?;
    let string = |name: &str| match claims.get(name) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(anyhow::anyhow!(
            "--claims-file {shown}: no {name:?} string; add the token's {name} claim"
        )),
    };
    let issuer = string("iss")?;
    let subject = string("sub")?;
    Ok(Principal::Oidc {
        issuer,
        subject,
        claims,
    })
}

fn hash_secret() -> Result<ExitCode> {
    use argon2::PasswordHasher as _;
    let mut secret = zeroize::Zeroizing::new(String::new());
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
