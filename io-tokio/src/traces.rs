//! Spans after the OpenTelemetry messaging conventions (`send`, `process`, `settle`,
//! `receive`, each named `<operation> <queue>`), and the trace context they seal in the
//! envelopes so that a trace follows a job from its producer to its worker and back.
//!
//! The spans are `tracing` spans at INFO: without a subscriber they cost a branch. Their
//! `otel.name` and `otel.kind` fields name them for `tracing-opentelemetry`. No span carries
//! a payload, a title, a session id, a result or a reason: only the queue, the job id, the
//! consumer, counts and attempts.
//!
//! With the `otel` feature the context of the span that adds a job is sealed in the job's
//! envelope (`AddJob::trace`, unless the caller set one), the worker's `process` span takes
//! it as its parent (semconv allows this for single messages), and the `process` span's
//! context is sealed with the result, which the producer's `receive` span continues.

use datalayer_core::command::Settlements;
use datalayer_core::job::JobId;
use datalayer_core::trace::TraceContext;
use tracing::Span;
use tracing::field::Empty;

/// `send <queue>` (PRODUCER): one add, or one `add_many` batch.
pub(crate) fn send(queue: &str, job: Option<&JobId>, count: usize) -> Span {
    let span = tracing::info_span!(
        "send",
        otel.name = format_args!("send {queue}").to_string(),
        otel.kind = "producer",
        messaging.system = "datalayer",
        messaging.operation.type = "send",
        messaging.operation.name = "add",
        messaging.destination.name = queue,
        messaging.message.id = Empty,
        messaging.batch.message_count = Empty,
    );
    match job {
        Some(job) => span.record("messaging.message.id", job.0.as_str()),
        None => span.record("messaging.batch.message_count", count),
    };
    span
}

/// `process <queue>` (CONSUMER): one attempt, around the handler; the child of the span
/// that added the job when its envelope carries one.
pub(crate) fn process(
    queue: &str,
    consumer: &str,
    job: &JobId,
    attempt: u32,
    deliveries: u64,
    parent: Option<&TraceContext>,
) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = format_args!("process {queue}").to_string(),
        otel.kind = "consumer",
        messaging.system = "datalayer",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = queue,
        messaging.consumer.group.name = "workers",
        messaging.client.id = consumer,
        messaging.message.id = job.0.as_str(),
        datalayer.job.attempt = attempt,
        datalayer.job.deliveries = deliveries,
        error.type = Empty,
    );
    if let Some(parent) = parent {
        set_parent(&span, parent);
    }
    span
}

/// `settle <queue>` (CLIENT): one pipeline's settle commands, by kind.
pub(crate) fn settle(queue: &str, s: &Settlements) -> Span {
    tracing::info_span!(
        parent: None,
        "settle",
        otel.name = format_args!("settle {queue}").to_string(),
        otel.kind = "client",
        messaging.system = "datalayer",
        messaging.operation.type = "settle",
        messaging.operation.name = s.operation(),
        messaging.destination.name = queue,
        messaging.batch.message_count = s.total(),
        datalayer.settle.completed = s.completed,
        datalayer.settle.retried = s.retried,
        datalayer.settle.buried = s.buried,
    )
}

/// `receive <queue>` (CLIENT): the producer read one outcome of its job; the child of the
/// worker's `process` span when the outcome carries its context.
pub(crate) fn receive(queue: &str, job: &JobId, outcome: &'static str, parent: &TraceContext) {
    let span = tracing::info_span!(
        parent: None,
        "receive",
        otel.name = format_args!("receive {queue}").to_string(),
        otel.kind = "client",
        messaging.system = "datalayer",
        messaging.operation.type = "receive",
        messaging.operation.name = "outcome",
        messaging.destination.name = queue,
        messaging.message.id = job.0.as_str(),
        datalayer.outcome = outcome,
    );
    set_parent(&span, parent);
    drop(span);
}

/// The trace context of `span` (to seal), or `None` without the `otel` feature, without an
/// OpenTelemetry layer, or for a span that is not recorded.
#[cfg(feature = "otel")]
pub(crate) fn context_of(span: &Span) -> Option<TraceContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let tc = TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
        state: sc.trace_state().header(),
    };
    tc.is_valid().then_some(tc)
}

/// Without the `otel` feature no span has a context to seal.
#[cfg(not(feature = "otel"))]
pub(crate) fn context_of(_span: &Span) -> Option<TraceContext> {
    None
}

/// Makes `parent` (a context read from an envelope) the parent of `span`.
#[cfg(feature = "otel")]
fn set_parent(span: &Span, parent: &TraceContext) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let state = parent.state.parse::<TraceState>().unwrap_or_default();
    let sc = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::new(parent.flags),
        true,
        state,
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(sc);
    // Refused only when the span is not recorded by an OpenTelemetry layer.
    let _ = span.set_parent(cx);
}

#[cfg(not(feature = "otel"))]
fn set_parent(_span: &Span, _parent: &TraceContext) {}
