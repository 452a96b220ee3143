//! Logs and traces: a tracing Registry with an EnvFilter (`RUST_LOG`), a
//! text or JSON log layer, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an
//! OpenTelemetry layer exporting spans over OTLP/gRPC (Jaeger ≥ 1.35 takes
//! it natively). Without the variable nothing is exported and nothing fails.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Holds the tracer provider so that spans are flushed at shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter; call once, at exit.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

pub const SERVICE_NAME: &str = "k8s-net-attach-def-controller";

/// A tracer provider exporting over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn otlp_provider_from_env() -> anyhow::Result<Option<SdkTracerProvider>> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none_or(|v| v.is_empty()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(SERVICE_NAME)
                    .build(),
            )
            .build(),
    ))
}

/// The OpenTelemetry layer over a provider (also used by tests with an
/// in-memory exporter).
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME))
}

pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
    };
    let provider = otlp_provider_from_env()?;
    let otel = provider.as_ref().map(otel_layer);
    Registry::default()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(Telemetry { provider })
}

/// The trace id of the current span, when one is being recorded.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Records the trace id on the current span (declared with a `trace_id`
/// field), so every log line inside it carries the id; returns it.
pub fn record_trace_id() -> Option<String> {
    let id = current_trace_id();
    if let Some(id) = &id {
        tracing::Span::current().record("trace_id", tracing::field::display(id));
    }
    id
}
