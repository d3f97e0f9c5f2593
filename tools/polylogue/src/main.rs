//! `polylogue`: operator commands, spoken to the services over NATS (never to their databases),
//! so they work the same against one machine or a cluster.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use polylogue_bus::{Bus, RequestContext};
use polylogue_config::Settings;
use polylogue_contracts::auth::{RegisterRequest, UserView};
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
    let bus = Bus::connect(&settings.nats, "polylogue-cli").await?;
    match cli.command {
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
