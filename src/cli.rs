//! The `fleetload` command line: `serve` (default), `migrate`, `schema`, `token`.

use clap::{Parser, Subcommand};

use crate::auth::{Permission, mint_token};
use crate::config::Settings;
use crate::startup::{Application, jwt_secret};
use crate::{db, demo, graphql, telemetry};

#[derive(Debug, Parser)]
#[command(name = "fleetload", version, about = "Bulk CSV device upload GraphQL server")]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and GraphiQL (the default); on the embedded default also the workers.
    Serve,
    /// Run the dispatcher and workers only (production: PostgreSQL + SQS + S3).
    Worker,
    /// Apply database migrations (and seed demo data with --demo-data), then exit.
    Migrate,
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Print a dev token signed with the embedded secret of --data-dir.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user (`sub` and `username`).
    #[arg(long)]
    pub user: String,
    /// The user's root tenant.
    #[arg(long)]
    pub tenant: String,
    /// Comma-separated permissions.
    #[arg(long, value_delimiter = ',', default_value = "READ,UPDATE")]
    pub permissions: Vec<Permission>,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl_secs: i64,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            telemetry::init(settings.log_json);
            Application::build(settings).await?.run_until_stopped().await?;
        }
        Command::Worker => {
            telemetry::init(settings.log_json);
            crate::startup::run_worker(settings, None).await?;
        }
        Command::Migrate => {
            telemetry::init(settings.log_json);
            let db = db::connect(&settings).await?;
            db::migrate(&db).await?;
            if settings.demo_data || (settings.uses_embedded_database() && demo::is_empty(&db).await?) {
                demo::seed(&db).await?;
            }
            tracing::info!("database is up to date");
        }
        Command::Schema => print!("{}", graphql::sdl()),
        Command::Token(args) => {
            let secret = jwt_secret(&settings)?;
            let token = mint_token(
                &secret,
                &args.user,
                &args.tenant,
                &args.permissions,
                &settings.jwt_audience,
                settings.jwt_issuer.as_deref(),
                args.ttl_secs,
            )?;
            println!("{token}");
        }
    }
    Ok(())
}
