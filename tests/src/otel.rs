//! OpenTelemetry in a test process: spans recorded in memory through
//! `tracing-opentelemetry`, and printed one per line for a parent process to read.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// Installs a global subscriber whose OpenTelemetry layer records every span in memory;
/// the exporter reads them back, the provider flushes them.
pub fn install() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("datalayer-tests");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    (exporter, provider)
}

/// One finished span, as a line: `span <name>|<trace id>|<span id>|<parent id>|<attributes>`.
#[must_use]
pub fn line(span: &SpanData) -> String {
    let attributes: Vec<String> = span
        .attributes
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    format!(
        "span {}|{}|{}|{}|{}",
        span.name,
        span.span_context.trace_id(),
        span.span_context.span_id(),
        span.parent_span_id,
        attributes.join(",")
    )
}

/// A span read back from a [`line()`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Its name (`process irc`).
    pub name: String,
    /// Trace id, hex.
    pub trace: String,
    /// Span id, hex.
    pub id: String,
    /// Parent span id, hex (zeros for a root).
    pub parent: String,
    /// `key=value`, comma-separated.
    pub attributes: String,
}

/// Parses a [`line()`]; `None` for any other line.
#[must_use]
pub fn parse(line: &str) -> Option<Span> {
    let rest = line.strip_prefix("span ")?;
    let mut parts = rest.splitn(5, '|');
    Some(Span {
        name: parts.next()?.to_owned(),
        trace: parts.next()?.to_owned(),
        id: parts.next()?.to_owned(),
        parent: parts.next()?.to_owned(),
        attributes: parts.next()?.to_owned(),
    })
}
