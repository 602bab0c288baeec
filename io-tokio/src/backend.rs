//! Where the core's commands run: a Redis server, over the process's shared connection, or
//! (feature `memory`) the core's model of Redis in this process ([`crate::memory`]).
//!
//! Everything above this module (queues, workers, credentials) is the same for both: a
//! pipeline of commands in, one reply per command out.

use datalayer_core::command::{Command, Reply};
use datalayer_core::scripts::Invocation;
use datalayer_core::value::Value;

use crate::connection::Conn;
use crate::exec;
use crate::options::RedisError;

/// A backend (cheap to clone).
#[derive(Clone)]
pub(crate) enum Backend {
    /// A Redis server: the shared command connection (the blocking-read and subscription
    /// connections are made with its settings).
    Redis {
        conn: Conn,
        /// How this process's idle readers wait. Whichever way, every command that may add
        /// what an idle reader waits for rings its bell, as on a cluster, so that processes
        /// of every kind can share a queue.
        idle_reads: crate::options::IdleReads,
    },
    /// A Redis Cluster: a connection per primary, each pipeline routed by its slot.
    Cluster(std::sync::Arc<crate::cluster::Cluster>),
    /// The in-process model.
    #[cfg(feature = "memory")]
    Memory(std::sync::Arc<crate::memory::Memory>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Redis { .. } => f.write_str("Backend::Redis"),
            Backend::Cluster(_) => f.write_str("Backend::Cluster"),
            #[cfg(feature = "memory")]
            Backend::Memory(_) => f.write_str("Backend::Memory"),
        }
    }
}

impl Backend {
    /// Runs `commands` as one pipeline: one reply per command, in order.
    pub(crate) async fn execute(&self, commands: &[Command]) -> Vec<Reply> {
        match self {
            Backend::Redis { conn, .. } => exec::execute_ringing(conn, commands, true).await,
            Backend::Cluster(cluster) => cluster.execute(commands).await,
            #[cfg(feature = "memory")]
            Backend::Memory(memory) => memory.execute(commands),
        }
    }

    /// Runs `invocations` as one pipeline: one reply per invocation (an error reply is a
    /// [`Value::Error`]); `Err` when the connection failed (the outcomes are unknown).
    pub(crate) async fn run(
        &self,
        invocations: &[Invocation<'_>],
    ) -> Result<Vec<Value>, RedisError> {
        let replies = match self {
            Backend::Redis { conn, .. } => exec::run_invocations(conn, invocations).await,
            Backend::Cluster(cluster) => cluster.run(invocations).await,
            #[cfg(feature = "memory")]
            Backend::Memory(memory) => return Ok(memory.invoke(invocations)),
        };
        replies
            .into_iter()
            .map(|r| exec::value_of(Some(r)))
            .collect()
    }

    /// Runs one invocation on its own.
    pub(crate) async fn run_one(&self, invocation: &Invocation<'_>) -> Result<Value, RedisError> {
        let mut values = self.run(std::slice::from_ref(invocation)).await?;
        exec::value_of(values.pop().map(Reply::Value))
    }
}
