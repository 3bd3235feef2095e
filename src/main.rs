//! The `conveyor` binary: parses the command line, sets up logs and traces and runs the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = conveyor::cli::Cli::parse();
    let otlp = conveyor::telemetry::Otlp {
        endpoint: cli.otlp_endpoint.clone().filter(|e| !e.is_empty()),
        traces_endpoint: std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty()),
        service_name: std::env::var("OTEL_SERVICE_NAME").ok(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let result = runtime.block_on(async {
        let telemetry =
            conveyor::telemetry::init(&cli.log_filter(), &cli.log_format, cli.role(), &otlp)?;
        let result = conveyor::cli::run(cli).await;
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conveyor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
