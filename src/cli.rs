//! The `fleetload` command line: `serve` (default), `migrate`, `schema`, `token`, the
//! client commands `upload`, `status`, `uploads` (src/client/), and `carrier-simulator`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::{Permission, mint_token};
use crate::carrier_sim::{CarrierSim, SimConfig};
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
    /// Whether `--listen` (or its variable) was given rather than defaulted: the carrier
    /// simulator keeps its own default port then, beside a server on the default one.
    #[arg(skip)]
    pub listen_given: bool,
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
    /// Upload a CSV to a running server and follow it to its end; exit code 0 for COMPLETED,
    /// 2 for COMPLETED_WITH_ERRORS, 1 for FAILED, CANCELLED or any error.
    Upload(Box<crate::client::UploadArgs>),
    /// Print one upload of a running server.
    Status(StatusArgs),
    /// List the newest uploads of a running server.
    Uploads(UploadsArgs),
    /// Run the carrier simulator (tests and demos of CARRIER_STATUS actions) until ctrl-c;
    /// it listens on `--listen` when given, else on 127.0.0.1:9400.
    CarrierSimulator(CarrierSimulatorArgs),
}

#[derive(Debug, clap::Args)]
pub struct CarrierSimulatorArgs {
    /// Milliseconds from "pending activation" to "active" (at most an hour).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub activation_delay_ms: u64,
    /// The OAuth client the simulator accepts.
    #[arg(long, default_value = "demo-client")]
    pub client_id: String,
    /// That client's secret.
    #[arg(long, default_value = "demo-secret")]
    pub client_secret: SecretString,
    /// A GET or activate of an unknown Luhn-valid ICCID first creates it in "inventory".
    #[arg(long)]
    pub auto_provision: bool,
    /// Device-endpoint requests per second the simulator accepts per client; over it → 429.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,
    /// Seed of the fault dice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    pub upload_id: String,
    #[command(flatten)]
    pub client: crate::client::ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct UploadsArgs {
    /// How many, newest first (1 to 500).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub first: u32,
    #[command(flatten)]
    pub client: crate::client::ClientArgs,
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

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.settings;
    let listen_given = cli.listen_given;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Upload(args) => {
            return Ok(client_command(&settings, &args.client, async |c| {
                crate::client::upload(&c, &args).await
            })
            .await);
        }
        Command::Status(args) => {
            let (tenant, id) = (&args.client.tenant, &args.upload_id);
            return Ok(client_command(&settings, &args.client, async |c| {
                crate::client::status(&c, tenant, id)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            })
            .await);
        }
        Command::Uploads(args) => {
            let (tenant, first) = (&args.client.tenant, args.first);
            return Ok(client_command(&settings, &args.client, async |c| {
                crate::client::uploads(&c, tenant, first)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            })
            .await);
        }
        Command::Serve => {
            let _telemetry = telemetry::init(settings.log_json);
            Application::build(settings).await?.run_until_stopped().await?;
        }
        Command::Worker => {
            let _telemetry = telemetry::init(settings.log_json);
            crate::startup::run_worker(settings, None).await?;
        }
        Command::Migrate => {
            let _telemetry = telemetry::init(settings.log_json);
            let db = db::connect(&settings).await?;
            db::migrate(&db).await?;
            tracing::info!("database is up to date");
            // Printed, not logged: the operator who ran `migrate --demo-data` (the README's
            // tour on PostgreSQL) sees what exists now, whatever the log filter.
            match demo::seed_if_wanted(&db, &settings).await? {
                Some(seeded) => println!("{seeded}"),
                None => println!("migrations applied; no demo data seeded (add --demo-data to seed it)"),
            }
        }
        Command::CarrierSimulator(args) => {
            let _telemetry = telemetry::init(settings.log_json);
            let listen = if listen_given {
                settings.listen
            } else {
                SocketAddr::from(([127, 0, 0, 1], 9400))
            };
            run_carrier_simulator(listen, args).await?;
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
    Ok(ExitCode::SUCCESS)
}

async fn run_carrier_simulator(listen: SocketAddr, args: CarrierSimulatorArgs) -> anyhow::Result<()> {
    let config = SimConfig {
        listen,
        clients: vec![(args.client_id, args.client_secret.expose_secret().to_owned())],
        activation_delay: Duration::from_millis(args.activation_delay_ms),
        rate_limit_per_sec: args.rate_limit,
        seed: args.seed,
        auto_provision: args.auto_provision,
        ..SimConfig::default()
    };
    let sim = CarrierSim::start(config).await?;
    tracing::info!(
        url = sim.url(),
        auto_provision = args.auto_provision,
        "carrier simulator serving"
    );
    // Printed, not logged: the URL is what the operator pastes into a carrier account.
    println!(
        "carrier simulator at {} (admin: {}/_sim/stats)",
        sim.url(),
        sim.url()
    );
    crate::startup::shutdown_signal().await;
    sim.shutdown().await
}

/// Runs a client command; any error is printed with its code and exits with 1.
async fn client_command(
    settings: &Settings,
    args: &crate::client::ClientArgs,
    command: impl AsyncFnOnce(crate::client::Client) -> Result<ExitCode, crate::client::ClientError>,
) -> ExitCode {
    let client = match crate::client::Client::new(settings, args) {
        Ok(client) => client,
        Err(err) => return crate::client::report_error(&err),
    };
    command(client)
        .await
        .unwrap_or_else(|err| crate::client::report_error(&err))
}
