//! Logs and traces.
//!
//! Logs: `tracing` to stderr, filtered by `CONVEYOR_LOG`, as text or, with
//! `CONVEYOR_LOG_FORMAT=json`, one JSON object per line carrying the current span's fields
//! (`trace_id`, `tenant`, `job_id`, …).
//!
//! Traces: when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans are exported over OTLP/HTTP (protobuf, or JSON
//! with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) as service `conveyor-<role>` (or
//! `OTEL_SERVICE_NAME`). The trace context travels in every CloudEvent, so one trace covers a
//! job from its submission to its webhook (see `bus::trace`).

use anyhow::Context as _;
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Where and as whom spans are exported.
#[derive(Debug, Clone, Default)]
pub struct Otlp {
    /// Base endpoint (`http://collector:4318`); `/v1/traces` is appended.
    pub endpoint: Option<String>,
    /// A full traces endpoint, used as given.
    pub traces_endpoint: Option<String>,
    /// The service name, if configured (`OTEL_SERVICE_NAME`).
    pub service_name: Option<String>,
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Blocks until the exporter thread has sent what it holds; its requests run on
            // this runtime, so wait on a blocking thread.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber. `format` is `text` or `json`; `role` names the service in
/// exported traces. Must run inside the tokio runtime (the exporter sends from it).
pub fn init(filter: &str, format: &str, role: &str, otlp: &Otlp) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        fmt.boxed()
    };
    let provider = if otlp.endpoint.is_some() || otlp.traces_endpoint.is_some() {
        Some(tracer_provider(role, otlp)?)
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("conveyor"))
            .with_tracked_inactivity(false)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

fn tracer_provider(role: &str, otlp: &Otlp) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpHttp {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .context("OTLP HTTP client")?,
            runtime: tokio::runtime::Handle::current(),
        });
    if otlp.traces_endpoint.is_none() {
        if let Some(base) = &otlp.endpoint {
            exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
        }
    }
    let exporter = exporter
        .build()
        .context("OTLP trace exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let name = otlp
        .service_name
        .clone()
        .unwrap_or_else(|| format!("conveyor-{role}"));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build())
}

/// The OTLP exporter's HTTP client: reqwest on this process's runtime. (The exporter sends
/// from its own thread; the request runs on the runtime and the thread waits for it.)
#[derive(Debug, Clone)]
struct OtlpHttp {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let mut req = client
                .request(parts.method, parts.uri.to_string())
                .body(body);
            for (name, value) in &parts.headers {
                req = req.header(name, value);
            }
            let res = req.send().await?;
            let status = res.status();
            let body = res.bytes().await?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            Ok::<_, reqwest::Error>(out)
        });
        let response = sent.await.map_err(Box::new)?;
        Ok(response.map_err(Box::new)?)
    }
}
