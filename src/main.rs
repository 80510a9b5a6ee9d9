use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fleetload::cli::run(fleetload::cli::Cli::parse()).await
}
