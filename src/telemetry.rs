//! Logging: `tracing` to stderr, filtered by `CONVEYOR_LOG`, as text or JSON.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `format` is `text` or `json`.
pub fn init(filter: &str, format: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
