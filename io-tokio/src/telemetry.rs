//! Metrics through the `metrics` facade (feature `metrics`; without it every function here
//! is empty). Recorded by the drivers when the event happened (an add when Redis confirmed
//! it, an outcome when the producer read it), never by asking Redis: rendering them sends
//! no command. Labels are the queue's name and fixed words, nothing of a job (no payload,
//! id, session, result or reason). Gauges of Redis state come from
//! [`crate::JobQueue::sample_metrics`], one stats script per tick.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `datalayer_jobs_added_total` | counter | queue |
//! | `datalayer_add_errors_total` | counter | queue |
//! | `datalayer_jobs_ended_total` | counter | queue, outcome = completed, failed (will retry), dead, withdrawn |
//! | `datalayer_job_end_to_end_seconds` | histogram | queue: add called → outcome read |
//! | `datalayer_bad_events_total` | counter | queue (outcomes that did not open) |
//! | `datalayer_jobs_started_total` | counter | queue |
//! | `datalayer_job_wait_seconds` | histogram | queue: created → first attempt started |
//! | `datalayer_handler_seconds` | histogram | queue, result = ok, error |
//! | `datalayer_leases_lost_total` | counter | queue |
//! | `datalayer_worker_settled_total` | counter | queue, outcome = completed, retried, dead (settles Redis confirmed) |
//! | `datalayer_reclaimed_total` | counter | queue (entries taken over from workers that missed their lease) |
//! | `datalayer_pipeline_commands` | histogram | (commands per pipeline) |
//! | `datalayer_unknown_outcomes_total` | counter | (commands whose outcome was unknown) |
//! | `datalayer_reconnects_total` | counter | (command connections made after the first) |
//! | `datalayer_queue_jobs`, `_running`, `_delayed`, `_dead`, `_workers`, `_oldest_waiting_seconds` | gauge | queue |

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    use metrics::{counter, gauge, histogram};

    pub(crate) fn added(queue: &str) {
        counter!("datalayer_jobs_added_total", "queue" => queue.to_owned()).increment(1);
    }
    pub(crate) fn add_error(queue: &str) {
        counter!("datalayer_add_errors_total", "queue" => queue.to_owned()).increment(1);
    }
    pub(crate) fn ended(queue: &str, outcome: &'static str, since_add: Option<Duration>) {
        counter!("datalayer_jobs_ended_total", "queue" => queue.to_owned(), "outcome" => outcome)
            .increment(1);
        if let Some(d) = since_add {
            histogram!("datalayer_job_end_to_end_seconds", "queue" => queue.to_owned())
                .record(d.as_secs_f64());
        }
    }
    pub(crate) fn bad_event(queue: &str) {
        counter!("datalayer_bad_events_total", "queue" => queue.to_owned()).increment(1);
    }
    pub(crate) fn started(queue: &str, waited: Option<Duration>) {
        counter!("datalayer_jobs_started_total", "queue" => queue.to_owned()).increment(1);
        if let Some(w) = waited {
            histogram!("datalayer_job_wait_seconds", "queue" => queue.to_owned())
                .record(w.as_secs_f64());
        }
    }
    pub(crate) fn handled(queue: &str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        histogram!("datalayer_handler_seconds", "queue" => queue.to_owned(), "result" => result)
            .record(took.as_secs_f64());
    }
    pub(crate) fn lease_lost(queue: &str) {
        counter!("datalayer_leases_lost_total", "queue" => queue.to_owned()).increment(1);
    }
    pub(crate) fn settled(queue: &str, outcome: &'static str, count: usize) {
        counter!("datalayer_worker_settled_total", "queue" => queue.to_owned(), "outcome" => outcome)
            .increment(count as u64);
    }
    pub(crate) fn reclaimed(queue: &str, count: usize) {
        counter!("datalayer_reclaimed_total", "queue" => queue.to_owned()).increment(count as u64);
    }
    pub(crate) fn pipeline(commands: usize, unknown: usize) {
        histogram!("datalayer_pipeline_commands").record(commands as f64);
        if unknown > 0 {
            counter!("datalayer_unknown_outcomes_total").increment(unknown as u64);
        }
    }
    pub(crate) fn reconnect() {
        counter!("datalayer_reconnects_total").increment(1);
    }
    pub(crate) fn queue_state(
        queue: &str,
        s: &datalayer_core::producer::QueueStats,
        now: datalayer_core::time::Instant,
    ) {
        let q = || queue.to_owned();
        gauge!("datalayer_queue_jobs", "queue" => q()).set(s.jobs as f64);
        gauge!("datalayer_queue_running", "queue" => q()).set(s.pending as f64);
        gauge!("datalayer_queue_delayed", "queue" => q()).set(s.delayed as f64);
        gauge!("datalayer_queue_dead", "queue" => q()).set(s.dead as f64);
        gauge!("datalayer_queue_workers", "queue" => q()).set(s.workers as f64);
        let oldest = s.oldest_waiting_age(now);
        gauge!("datalayer_queue_oldest_waiting_seconds", "queue" => q()).set(oldest.as_secs_f64());
        let paused = f64::from(u8::from(s.paused_at.is_some()));
        gauge!("datalayer_queue_paused", "queue" => q()).set(paused);
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use std::time::Duration;

    pub(crate) fn added(_: &str) {}
    pub(crate) fn add_error(_: &str) {}
    pub(crate) fn ended(_: &str, _: &'static str, _: Option<Duration>) {}
    pub(crate) fn bad_event(_: &str) {}
    pub(crate) fn started(_: &str, _: Option<Duration>) {}
    pub(crate) fn handled(_: &str, _: bool, _: Duration) {}
    pub(crate) fn lease_lost(_: &str) {}
    pub(crate) fn settled(_: &str, _: &'static str, _: usize) {}
    pub(crate) fn reclaimed(_: &str, _: usize) {}
    pub(crate) fn pipeline(_: usize, _: usize) {}
    pub(crate) fn reconnect() {}
    pub(crate) fn queue_state(
        _: &str,
        _: &datalayer_core::producer::QueueStats,
        _: datalayer_core::time::Instant,
    ) {
    }
}

pub(crate) use on::*;
