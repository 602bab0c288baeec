//! What every machine keeps the same way: its commands in flight under the op ids it gave
//! them ([`Ops`]), and the bound on the events it holds undrained ([`undrained`]). The
//! resend backoff they share is [`crate::retry::ResendBackoff`].

use std::collections::HashMap;

use crate::command::OpId;

/// A machine's commands in flight: each op id (unique within the machine, never reused)
/// with what the machine remembers of it until its reply.
#[derive(Debug)]
pub(crate) struct Ops<F> {
    last: u64,
    table: HashMap<OpId, F>,
}

impl<F> Default for Ops<F> {
    fn default() -> Self {
        Self {
            last: 0,
            table: HashMap::new(),
        }
    }
}

impl<F> Ops<F> {
    /// A new command whose reply `state` waits for: its op id.
    pub(crate) fn start(&mut self, state: F) -> OpId {
        self.last += 1;
        let op = OpId(self.last);
        self.table.insert(op, state);
        op
    }

    /// The reply to `op` came: what waited for it (`None`: no such command in flight, a
    /// driver's mistake).
    pub(crate) fn finish(&mut self, op: OpId) -> Option<F> {
        self.table.remove(&op)
    }

    /// What every command in flight waits for.
    pub(crate) fn values(&self) -> impl Iterator<Item = &F> {
        self.table.values()
    }

    /// Whether a command in flight matches `f`.
    pub(crate) fn any(&self, f: impl FnMut(&F) -> bool) -> bool {
        self.table.values().any(f)
    }
}

/// The machine's events are undrained past `bound` (a driver that stopped calling
/// `poll_event`): `Err(len)`, for the machine's `Undrained` error.
pub(crate) fn undrained(len: usize, bound: usize) -> Result<(), usize> {
    if len > bound { Err(len) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_are_never_reused_and_a_reply_finds_its_state_once() {
        let mut ops = Ops::default();
        let a = ops.start("a");
        let b = ops.start("b");
        assert_ne!(a, b);
        assert!(ops.any(|s| *s == "b"));
        assert_eq!(ops.finish(a), Some("a"));
        assert_eq!(ops.finish(a), None);
        let c = ops.start("c");
        assert!(c != a && c != b);
        assert_eq!(ops.values().count(), 2);
        assert_eq!(undrained(3, 3), Ok(()));
        assert_eq!(undrained(4, 3), Err(4));
    }
}
