//! Tracing across processes: the producer's `send` span, sealed in the job's envelope,
//! is the parent of the worker's `process` span in another process, whose context, sealed
//! with the result, is the parent of the producer's `receive` span; and no trace id is
//! visible in Redis. (A file of its own: it installs the process' global subscriber.)

use std::process::{Command, Stdio};
use std::time::Duration;

use datalayer_tests::otel::{Span, parse};
use datalayer_tests::{
    Persistence, RedisServer, contains, every_key_and_value, layer, raw, secrets,
};
use datalayer_tokio::{Outcome, QueueOptions};
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const QUEUE: &str = "traced";

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span {name:?} in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_s_trace_runs_from_producer_to_worker_process_and_back() {
    let (exporter, provider) = datalayer_tests::otel::install();
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = dl
        .queue(QUEUE, &secrets(), QueueOptions::default())
        .expect("queue");

    // The application's own span (a request it serves) around the add.
    let request = tracing::info_span!("request");
    let job = queue
        .add("session-1", &serde_json::json!({ "text": "hello" }))
        .instrument(request.clone())
        .await
        .expect("add");
    let job_id = job.id.clone();
    let trace_id = request.context().span().span_context().trace_id();
    assert_ne!(trace_id, opentelemetry::trace::TraceId::INVALID);

    // Sealed: neither the trace id's bytes nor its hex is anywhere in Redis.
    let mut conn = raw(&server).await;
    let everything = every_key_and_value(&mut conn).await;
    assert!(
        contains(&everything, b"traced"),
        "the dump reads the queue's keys"
    );
    assert!(!contains(&everything, &trace_id.to_bytes()));
    assert!(!contains(&everything, trace_id.to_string().as_bytes()));

    // The worker: another process, with its own tracer.
    let child = Command::new(env!("CARGO_BIN_EXE_dl-traced-worker"))
        .args([&server.url(), QUEUE, "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the worker process");
    let outcome = tokio::time::timeout(Duration::from_secs(30), job.result())
        .await
        .expect("the result within 30 s")
        .expect("an outcome");
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("the worker's output");
    assert!(output.status.success(), "the worker process failed");
    let worker_spans: Vec<Span> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(parse)
        .collect();

    drop(request);
    let _ = provider.force_flush();
    let ours: Vec<Span> = exporter
        .get_finished_spans()
        .expect("spans")
        .iter()
        .map(|s| parse(&datalayer_tests::otel::line(s)).expect("a span line"))
        .collect();
    let trace = trace_id.to_string();
    let root = ours
        .iter()
        .find(|s| s.name == "request")
        .expect("the request span");
    let send = named(&ours, "send traced");
    assert_eq!((&send.trace, &send.parent), (&trace, &root.id));
    assert!(send.attributes.contains("messaging.system=datalayer"));
    assert!(
        send.attributes
            .contains(&format!("messaging.message.id={job_id}"))
    );

    // In the other process: the attempt continues the producer's trace from its send span.
    let process = named(&worker_spans, "process traced");
    assert_eq!((&process.trace, &process.parent), (&trace, &send.id));
    assert!(
        process
            .attributes
            .contains("messaging.consumer.group.name=workers")
    );
    assert!(process.attributes.contains("datalayer.job.attempt=1"));
    let settle = named(&worker_spans, "settle traced");
    assert!(
        settle
            .attributes
            .contains("messaging.batch.message_count=1")
    );
    assert!(settle.attributes.contains("messaging.operation.name=ack"));

    // Back in the producer: the outcome continues from the worker's attempt.
    let receive = named(&ours, "receive traced");
    assert_eq!((&receive.trace, &receive.parent), (&trace, &process.id));

    // No span carries the payload or the session.
    for span in ours.iter().chain(&worker_spans) {
        assert!(!span.attributes.contains("hello"), "{span:?}");
        assert!(!span.attributes.contains("session-1"), "{span:?}");
    }
    queue.shutdown().await;
}
