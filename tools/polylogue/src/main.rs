//! `polylogue`: operator commands, spoken to the services over NATS (never to their databases),
//! so they work the same against one machine or a cluster.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use polylogue_bus::{Bus, RequestContext};
use polylogue_config::Settings;
use polylogue_contracts::auth::{RegisterRequest, UserView};
use polylogue_contracts::profile::{RewrapReply, RewrapRequest};
use polylogue_contracts::subjects::{auth as verbs, service};
use polylogue_contracts::{ErrorCode, Secret};
use std::io::{BufRead, Write};

#[derive(Parser)]
#[command(name = "polylogue", version, about = "Polylogue operator commands")]
struct Cli {
    /// NATS URL (default: from configuration, `POLYLOGUE_CONFIG` / `POLYLOGUE__NATS__URL`).
    #[arg(long, global = true)]
    nats_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Encryption of users' provider keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate the key-encryption key (`[kms]`: the local key file or the Vault transit key). New
    /// keys are wrapped with the new version at once; stored ones keep opening with their old
    /// version until `keys rewrap` moves them.
    Rotate,
    /// Re-wrap every stored data key under the newest key-encryption-key version (done by the
    /// auth service; secrets stay sealed). Safe to run again; prints the counts.
    Rewrap {
        /// Keys per store page.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// How long to wait for the auth service to finish.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (works whether or not self-service registration is open).
    Add {
        #[arg(long)]
        username: String,
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "password_env")]
        password_stdin: bool,
        /// Read the password from this environment variable.
        #[arg(long)]
        password_env: Option<String>,
        /// Succeed without change if the user already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load_unchecked(Settings::env_file().as_deref())
        .context("loading configuration")?;
    if let Some(url) = cli.nats_url {
        settings.nats.url = url;
    }
    match cli.command {
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let kms = polylogue_crypto::kms_from_settings(&settings).await?;
            let version = kms
                .rotate()
                .await
                .map_err(|e| anyhow::anyhow!("rotating the {} key: {e}", kms.name()))?;
            writeln!(
                std::io::stdout().lock(),
                "{} key-encryption key is now version {version}; run `polylogue keys rewrap` to move stored keys to it",
                kms.name()
            )?;
        }
        Command::Keys {
            command:
                KeysCommand::Rewrap {
                    page_size,
                    timeout_secs,
                },
        } => {
            let bus = Bus::connect(&settings.nats, "polylogue-cli").await?;
            let reply: RewrapReply = bus
                .request_with_timeout(
                    service::AUTH,
                    verbs::KEYS_REWRAP,
                    &RequestContext::internal(),
                    &RewrapRequest {
                        page_size: Some(page_size),
                    },
                    std::time::Duration::from_secs(timeout_secs),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
            writeln!(
                std::io::stdout().lock(),
                "scanned {}, rewrapped {}, already current {}, changed meanwhile {}, failed {} (version {})",
                reply.scanned,
                reply.rewrapped,
                reply.current,
                reply.skipped,
                reply.failed,
                reply.version
            )?;
            if reply.failed > 0 {
                bail!(
                    "{} keys did not rewrap; see the auth service's log",
                    reply.failed
                );
            }
        }
        Command::User {
            command:
                UserCommand::Add {
                    username,
                    display_name,
                    password_stdin,
                    password_env,
                    if_not_exists,
                },
        } => {
            let bus = Bus::connect(&settings.nats, "polylogue-cli").await?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else if let Some(var) = password_env {
                std::env::var(&var).with_context(|| format!("{var} is not set"))?
            } else {
                bail!(
                    "give the password with --password-stdin or --password-env VAR (never on the command line)"
                );
            };
            let request = RegisterRequest {
                username,
                password: Secret::new(password),
                display_name,
            };
            let result: Result<UserView, _> = bus
                .request(
                    service::AUTH,
                    verbs::ADMIN_USER_CREATE,
                    &RequestContext::internal(),
                    &request,
                )
                .await;
            let mut out = std::io::stdout().lock();
            match result {
                Ok(user) => writeln!(out, "created user {} ({})", user.username, user.id)?,
                Err(e) if e.code == ErrorCode::Conflict && if_not_exists => {
                    writeln!(
                        out,
                        "user {} already exists",
                        request.username.trim().to_lowercase()
                    )?;
                }
                Err(e) => bail!("{}: {}", e.code, e.message),
            }
        }
    }
    Ok(())
}
