//! A drain's commands as one pipeline, and its replies back as one per command: what the
//! adapter sends and how it reads what comes back, decided here so that the in-process
//! backend, one server and a cluster agree.
//!
//! Each command becomes its invocation ([`scripts::invocation`]), then its `WAIT` when it
//! asks for replicas, then (on a cluster, or wherever idle readers may wait on doorbells)
//! the `SPUBLISH` of each doorbell it rings ([`crate::cluster::rings`]). An invocation takes
//! one reply, or, as a transaction, one per command plus `MULTI`'s and `EXEC`'s
//! ([`Invocation::replies`]); its reply is [`transaction_reply`]'s. A command's reply is
//! then its own, judged by its `WAIT` ([`Plan::judge`]).

use std::borrow::Cow;

use crate::command::{Command, Replicas, Reply};
use crate::scripts::{self, Invocation};
use crate::value::Value;

/// Where a command's reply sits among its plan's replies: its own, and its `WAIT`'s.
#[derive(Debug, Clone, Copy)]
struct Planned {
    own: usize,
    wait: Option<(usize, Replicas)>,
}

/// The invocations that carry a drain's commands, and where each command's reply will be.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The invocations, in the order they are to be sent.
    pub invocations: Vec<Invocation<'a>>,
    planned: Vec<Planned>,
}

impl<'a> Plan<'a> {
    /// The plan of `commands`; with `bells`, each is followed by the doorbells it rings.
    #[must_use]
    pub fn new(commands: &'a [Command], bells: bool) -> Self {
        let mut invocations = Vec::with_capacity(commands.len());
        let mut planned = Vec::with_capacity(commands.len());
        for c in commands {
            let own = invocations.len();
            invocations.push(scripts::invocation(&c.kind));
            let wait = c.replicas.map(|r| {
                invocations.push(wait_invocation(r));
                (invocations.len() - 1, r)
            });
            planned.push(Planned { own, wait });
            if bells {
                let (jobs, events) = crate::cluster::rings(&c.kind);
                for bell in [jobs, events].into_iter().flatten() {
                    invocations.push(Invocation::Plain(vec![
                        Cow::Borrowed(b"SPUBLISH"),
                        Cow::Borrowed(bell.as_bytes()),
                        Cow::Borrowed(b""),
                    ]));
                }
            }
        }
        Self {
            invocations,
            planned,
        }
    }

    /// One reply per command from one per invocation: its own, judged by its `WAIT` when it
    /// asked for replicas. A reply missing (fewer than invocations) is [`Reply::Unknown`].
    #[must_use]
    pub fn judge(&self, mut replies: Vec<Reply>) -> Vec<Reply> {
        self.planned
            .iter()
            .map(|p| {
                let own = replies
                    .get_mut(p.own)
                    .map_or(Reply::Unknown, |r| std::mem::replace(r, Reply::Unknown));
                match p.wait {
                    Some((w, r)) => match replies.get(w) {
                        Some(wait) => r.judge(own, wait),
                        None => Reply::Unknown,
                    },
                    None => own,
                }
            })
            .collect()
    }
}

/// `WAIT <count> <timeout>`: keyless, so on a cluster it goes with the command before it
/// (the router sends a keyless invocation to the node of the one it follows), on the same
/// connection, where it covers that command's writes.
fn wait_invocation(r: Replicas) -> Invocation<'static> {
    Invocation::Plain(vec![
        Cow::Borrowed(b"WAIT"),
        Cow::Owned(r.count.to_string().into_bytes()),
        Cow::Owned(
            crate::time::millis(r.timeout)
                .max(1)
                .to_string()
                .into_bytes(),
        ),
    ])
}

/// The replies of `invocations` from the pipeline's `values`, one per invocation (each
/// takes [`Invocation::replies`] of them); all [`Reply::Unknown`] when the count is not
/// theirs (what came cannot be matched to what was sent).
#[must_use]
pub fn replies(invocations: &[&Invocation<'_>], values: Vec<Value>) -> Vec<Reply> {
    let expected: usize = invocations.iter().map(|i| i.replies()).sum();
    if values.len() != expected {
        return vec![Reply::Unknown; invocations.len()];
    }
    let mut values = values.into_iter();
    invocations
        .iter()
        .map(|i| transaction_reply(values.by_ref().take(i.replies()).collect()))
        .collect()
}

/// An invocation's reply from its part of the pipeline's replies: a transaction's is EXEC's,
/// its last (MULTI's OK and the QUEUEDs go) — but when Redis refused to queue a command
/// (`LOADING` after a restart, `OOM`, ...), EXEC says only `EXECABORT`, and the refusal
/// itself is the reply: the engine tells a transient one from a final one.
#[must_use]
pub fn transaction_reply(mut values: Vec<Value>) -> Reply {
    let Some(last) = values.pop() else {
        return Reply::Unknown;
    };
    if matches!(&last, Value::Error(e) if e.starts_with("EXECABORT")) {
        let cause = values.into_iter().find(|v| matches!(v, Value::Error(_)));
        if let Some(cause) = cause {
            return Reply::Value(cause);
        }
    }
    Reply::Value(last)
}

/// Whether Redis did not know the script (`NOSCRIPT`: it did not run; load the scripts and
/// send it again).
#[must_use]
pub fn is_noscript(reply: &Reply) -> bool {
    matches!(reply, Reply::Value(Value::Error(e)) if e.starts_with("NOSCRIPT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aborted_transaction_replies_with_its_cause() {
        let ok = Value::Status("OK".into());
        let queued = Value::Status("QUEUED".into());
        let loading = Value::Error("LOADING Redis is loading the dataset in memory".into());
        let abort =
            Value::Error("EXECABORT Transaction discarded because of previous errors.".into());
        assert_eq!(
            transaction_reply(vec![
                ok.clone(),
                loading.clone(),
                queued.clone(),
                abort.clone()
            ]),
            Reply::Value(loading)
        );
        // EXEC's own reply otherwise (an abort without a cause stays as it is).
        assert_eq!(
            transaction_reply(vec![ok.clone(), queued, Value::Array(vec![])]),
            Reply::Value(Value::Array(vec![]))
        );
        assert!(matches!(
            transaction_reply(vec![ok, abort]),
            Reply::Value(Value::Error(e)) if e.starts_with("EXECABORT")
        ));
        assert_eq!(transaction_reply(vec![]), Reply::Unknown);
    }

    #[test]
    fn replies_are_matched_by_count_or_not_at_all() {
        let plain = Invocation::Plain(vec![Cow::Borrowed(&b"PING"[..])]);
        let tx = Invocation::Transaction(vec![vec![Cow::Borrowed(&b"PING"[..])]]);
        let both = [&plain, &tx];
        let ok = || Value::Status("OK".into());
        assert_eq!(
            replies(&both, vec![ok(), ok(), ok(), Value::Int(3)]),
            vec![Reply::Value(ok()), Reply::Value(Value::Int(3))]
        );
        assert_eq!(replies(&both, vec![ok()]), vec![Reply::Unknown; 2]);
        assert!(is_noscript(&Reply::Value(Value::Error(
            "NOSCRIPT No matching".into()
        ))));
        assert!(!is_noscript(&Reply::Unknown));
    }
}
