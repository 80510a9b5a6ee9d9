use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // A usage error exits with 1, not clap's 2: `fleetload upload` gives 2 a meaning
    // (COMPLETED_WITH_ERRORS).
    let cli = match fleetload::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return Ok(std::process::ExitCode::from(u8::from(err.use_stderr())));
        }
    };
    fleetload::cli::run(cli).await
}
