use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use fleetload::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // A usage error exits with 1, not clap's 2: `fleetload upload` gives 2 a meaning
    // (COMPLETED_WITH_ERRORS).
    let parsed = Cli::command().try_get_matches().and_then(|matches| {
        let mut cli = Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut Cli::command()))?;
        cli.listen_given = matches.value_source("listen") != Some(ValueSource::DefaultValue);
        Ok(cli)
    });
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return Ok(std::process::ExitCode::from(u8::from(err.use_stderr())));
        }
    };
    fleetload::cli::run(cli).await
}
