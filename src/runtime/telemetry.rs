//! Logs and traces: a tracing Registry with an EnvFilter (`RUST_LOG`), a
//! text or JSON log layer, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an
//! OpenTelemetry layer exporting spans over OTLP/gRPC (Jaeger ≥ 1.35 takes
//! it natively). Without the variable nothing is exported and nothing fails.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::ffi::OsStr;
use std::io::IsTerminal;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
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

/// Whether text log lines may carry ANSI colour codes. Only a terminal
/// renders them; in a file, journald or `kubectl logs` they are noise. A
/// `NO_COLOR` set to anything but the empty string turns them off
/// (<https://no-color.org>), whatever its value, even one that is not UTF-8.
pub fn log_colours(log_stream_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    log_stream_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The log layer writing to `writer`. JSON is for machines and never
/// coloured; text is coloured only when `colours` says so.
pub fn log_layer<S, W>(
    format: LogFormat,
    writer: W,
    colours: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(colours)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .with_ansi(false)
            .boxed(),
    }
}

pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stdout (the benchmark harness reads them there), so the
    // colour decision asks about stdout: the stream that is written.
    let colours = log_colours(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let fmt = log_layer(format, std::io::stdout, colours);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color_set() {
        let non_utf8 = {
            use std::os::unix::ffi::OsStrExt;
            OsStr::from_bytes(b"\xff")
        };
        for (terminal, no_color, expected) in [
            (true, None, true),
            // https://no-color.org: an empty NO_COLOR counts as unset.
            (true, Some(OsStr::new("")), true),
            (true, Some(OsStr::new("1")), false),
            (true, Some(OsStr::new("0")), false),
            (true, Some(non_utf8), false),
            (false, None, false),
            (false, Some(OsStr::new("")), false),
            (false, Some(OsStr::new("1")), false),
        ] {
            assert_eq!(
                log_colours(terminal, no_color),
                expected,
                "terminal={terminal} NO_COLOR={no_color:?}"
            );
        }
    }

    /// Collects what the log layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    fn one_line(format: LogFormat, colours: bool) -> String {
        let out = Captured::default();
        let subscriber = Registry::default().with(log_layer(format, out.clone(), colours));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(nad = "default/br0", "finalizer added")
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_text_log_not_on_a_terminal_has_no_escape_codes() {
        let line = one_line(LogFormat::Text, log_colours(false, None));
        assert!(line.contains("finalizer added"), "{line:?}");
        assert!(!line.contains('\x1b'), "escape codes in {line:?}");
        // The check can see colour: on a terminal the same line has it.
        let coloured = one_line(LogFormat::Text, log_colours(true, None));
        assert!(coloured.contains('\x1b'), "no colour in {coloured:?}");
    }

    #[test]
    fn a_json_log_is_never_coloured() {
        let line = one_line(LogFormat::Json, true);
        assert!(line.contains(r#""message":"finalizer added""#), "{line:?}");
        assert!(!line.contains('\x1b'), "escape codes in {line:?}");
    }
}
