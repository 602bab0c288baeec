//! The in-process backend (feature `memory`): the core's model of Redis Streams
//! ([`datalayer_core::sim::Sim`], the one the differential tests prove equal to
//! redis-server on every command datalayer sends) behind a mutex, on the wall clock.
//!
//! Pipelines run at once, in one critical section each (as Redis runs one command at a
//! time). Blocking reads are merged by the same [`datalayer_core::mux::ReadMux`] as on
//! Redis; a merged read runs whenever a pipeline has changed the keyspace, until it finds
//! something, its `BLOCK` has passed, or the mux interrupts it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use datalayer_core::command::{Command, CommandKind, Reply};
use datalayer_core::scripts::Invocation;
use datalayer_core::sim::Sim;
use datalayer_core::value::Value;
use tokio::sync::watch;

use crate::clock::now;

/// The model, and a counter of the pipelines that ran on it (blocking reads wait on it).
pub(crate) struct Memory {
    sim: Mutex<Sim>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory").finish_non_exhaustive()
    }
}

impl Memory {
    pub(crate) fn new() -> Self {
        Self {
            sim: Mutex::new(Sim::new(now())),
            changes: watch::Sender::new(0),
        }
    }

    /// The model, its clock set to now (a panic elsewhere while it was held left it as
    /// whole as after any command: commands run to the end or not at all).
    fn sim(&self) -> MutexGuard<'_, Sim> {
        let mut sim = self.sim.lock().unwrap_or_else(PoisonError::into_inner);
        sim.set_time(now());
        sim
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs a pipeline of the machines' commands (a blocking read runs without blocking).
    pub(crate) fn execute(&self, commands: &[Command]) -> Vec<Reply> {
        let replies = {
            let mut sim = self.sim();
            commands
                .iter()
                .map(|c| Reply::Value(sim.execute(&c.kind)))
                .collect()
        };
        self.changed();
        replies
    }

    /// Runs the credentials store's invocations.
    pub(crate) fn invoke(&self, invocations: &[Invocation<'_>]) -> Vec<Value> {
        let replies = {
            let mut sim = self.sim();
            invocations.iter().map(|i| sim.invoke(i)).collect()
        };
        self.changed();
        replies
    }

    /// Runs a merged read of blocking readers now, without blocking (which changes nothing
    /// another reader waits for: reads deliver entries, they do not add any).
    pub(crate) fn read_merged(&self, reads: &[CommandKind]) -> Value {
        self.sim().execute_merged(reads)
    }

    /// The pause check of workers' reads ([`datalayer_core::scripts::pause_check`]).
    pub(crate) fn pause_check(&self, reads: &[CommandKind]) -> Value {
        self.sim().execute_pause_check(reads)
    }

    /// News of every pipeline that runs from now on.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The key names in the model, sorted.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.sim().keys().into_iter().map(str::to_owned).collect()
    }
}

/// Shares one model between clones.
pub(crate) fn new() -> Arc<Memory> {
    Arc::new(Memory::new())
}
