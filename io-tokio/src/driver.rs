//! The one driver loop of every machine (a queue's producer, a worker's shards): it moves
//! the machine's commands to Redis and the replies back, runs its timer, and hands the
//! application's inputs and the machine's events to the [`Side`] that knows what they
//! mean. The loop decides nothing; the machine does (see `datalayer_core::machine`).

use std::future::Future;

use datalayer_core::command::{Command, OpId, Reply};
use datalayer_core::machine::Machine;

use crate::blocking::Reads;
use crate::clock::{now, sleep_until};
use crate::pipelines::Pipelines;

/// Where a machine's commands go: pipelines on the shared connection, and blocking reads
/// on the blocking one.
pub(crate) struct Engine {
    pub(crate) pipes: Pipelines,
    pub(crate) reads: Reads,
}

/// The application's side of a driver: its inputs, and what the machine's events mean to
/// it.
pub(crate) trait Side: Send {
    /// The machine driven.
    type M: Machine + Send;
    /// One input of the application.
    type Input: Send;

    /// The machine.
    fn machine(&mut self) -> &mut Self::M;

    /// The next input of the application; `None` when the application has gone. Cancel
    /// safe: the driver waits on it beside the replies and the timer.
    fn input(&mut self) -> impl Future<Output = Option<Self::Input>> + Send;

    /// After an input, the inputs already waiting (they go out in the same pipeline).
    fn more(&mut self) -> impl Future<Output = Vec<Self::Input>> + Send;

    /// One input, handed to the machine.
    fn on_input(&mut self, input: Self::Input, engine: &mut Engine);

    /// The application has gone (no more inputs): whether the driver stops at once;
    /// otherwise it runs until [`Side::done`] (what the machine still has to send goes).
    fn gone(&mut self, _engine: &mut Engine) -> bool {
        true
    }

    /// Drains the machine's events (called after every input, as the machine requires).
    fn on_events(&mut self);

    /// Whether the driver is done (`engine`: whether pipelines are still out).
    fn done(&self, engine: &Engine) -> bool;

    /// The span a pipeline of `cmds` runs in, if any.
    fn span(&self, _cmds: &[Command]) -> Option<tracing::Span> {
        None
    }

    /// The driver ended.
    fn finish(&mut self);
}

/// Runs `side`'s machine until the side is done or its application has gone.
pub(crate) async fn drive<S: Side>(mut engine: Engine, mut side: S) {
    let mut inputs = true;
    loop {
        send(&mut engine, &mut side);
        side.on_events();
        if side.done(&engine) {
            break;
        }
        let sleep = sleep_until(side.machine().poll_timeout());
        tokio::select! {
            (ops, replies) = engine.pipes.next() => {
                for (op, reply) in ops.into_iter().zip(replies) {
                    handle_reply(&mut side, op, reply);
                }
            }
            input = side.input(), if inputs => {
                let Some(input) = input else {
                    inputs = false;
                    if side.gone(&mut engine) {
                        break;
                    }
                    side.on_events();
                    continue;
                };
                side.on_input(input, &mut engine);
                side.on_events();
                for input in side.more().await {
                    side.on_input(input, &mut engine);
                    side.on_events();
                }
            }
            (op, reply) = engine.reads.recv() => handle_reply(&mut side, op, reply),
            () = sleep => {
                if let Err(e) = side.machine().handle_timeout(now()) {
                    tracing::error!(error = %e, "the engine refused a timeout");
                }
            }
        }
    }
    side.finish();
}

/// One reply (of a pipeline or a blocking read) to the machine, then its events drained.
fn handle_reply<S: Side>(side: &mut S, op: OpId, reply: Reply) {
    if let Err(e) = side.machine().handle_reply(now(), op, reply) {
        tracing::error!(error = %e, "the engine refused a reply");
    }
    side.on_events();
}

/// Sends what the machine has to say: blocking reads to the blocker, the rest as pipelines
/// while fewer than the most are in flight (meanwhile the rest batches up in the machine).
fn send<S: Side>(engine: &mut Engine, side: &mut S) {
    while engine.pipes.can_send() {
        let cmds: Vec<Command> = std::iter::from_fn(|| side.machine().poll_command()).collect();
        if cmds.is_empty() {
            return;
        }
        let cmds = engine.reads.take_blocking(cmds);
        let span = side.span(&cmds);
        engine.pipes.send_in(cmds, span);
    }
}
