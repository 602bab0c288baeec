//! A Redis stream with consumer groups, as the model keeps it.

use std::collections::{BTreeMap, BTreeSet};

use crate::value::{EntryId, Fields};

/// One pending-list entry: who holds it, since when, how often it was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The consumer that owns it.
    pub consumer: String,
    /// When it was last delivered (ms).
    pub delivered_at: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// A consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// The last id delivered by `>` reads.
    pub last_delivered: EntryId,
    /// The pending entries list.
    pub pel: BTreeMap<EntryId, Pending>,
    /// The group's consumers. As Redis 7.0 does it, a consumer comes into being when it is
    /// first given an entry (a read that returns some, a claim that takes some), and stays
    /// until `XGROUP DELCONSUMER`; from Redis 7.2 on, any read of its names it
    /// ([`super::Sim::set_consumers_on_any_read`]).
    pub consumers: BTreeSet<String>,
}

impl Group {
    /// The smallest id not delivered by `>` reads yet.
    #[must_use]
    pub fn undelivered_from(&self) -> EntryId {
        self.last_delivered.next().unwrap_or(self.last_delivered)
    }
}

/// What XAUTOCLAIM did.
#[derive(Debug, Default)]
pub struct AutoClaim {
    /// Where the next call resumes (`0-0`: the scan reached the end).
    pub cursor: EntryId,
    /// Claimed entries with their fields.
    pub claimed: Vec<(EntryId, Fields)>,
    /// Ids that were pending but deleted from the stream (removed from the PEL).
    pub deleted: Vec<EntryId>,
}

/// A stream: entries in id order, the last id ever generated, and the groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    /// Live entries.
    pub entries: BTreeMap<EntryId, Fields>,
    /// The top id ever added (ids never go back, even after deletions).
    pub last_id: EntryId,
    /// Consumer groups by name.
    pub groups: BTreeMap<String, Group>,
}

impl Stream {
    /// XADD with `*`: the id is `max(now, last.ms)`-`seq`, as Redis makes it.
    pub fn add(&mut self, now_ms: u64, fields: Fields) -> EntryId {
        let id = if now_ms > self.last_id.ms {
            EntryId::new(now_ms, 0)
        } else {
            // Same millisecond, or the clock went back: Redis keeps ids increasing.
            self.last_id.next().unwrap_or(self.last_id)
        };
        self.last_id = id;
        self.entries.insert(id, fields);
        id
    }

    /// XTRIM MINID (exact): drops entries below `min`; returns how many.
    pub fn trim_min_id(&mut self, min: EntryId) -> usize {
        let keep = self.entries.split_off(&min);
        let dropped = self.entries.len();
        self.entries = keep;
        dropped
    }

    /// XREADGROUP `>`: up to `count` (0: all) new entries, now pending for `consumer`
    /// (`any_read`: the read makes `consumer` one of the group's even when it gets nothing,
    /// as Redis 7.2 and later do).
    pub fn read_group(
        &mut self,
        group: &str,
        consumer: &str,
        count: usize,
        now_ms: u64,
        any_read: bool,
    ) -> Option<Vec<(EntryId, Fields)>> {
        let g = self.groups.get_mut(group)?;
        let after = g.last_delivered;
        let fresh: Vec<(EntryId, Fields)> = self
            .entries
            .range(after..)
            .filter(|(id, _)| **id > after)
            .take(if count == 0 { usize::MAX } else { count })
            .map(|(id, f)| (*id, f.clone()))
            .collect();
        if any_read || !fresh.is_empty() {
            g.consumers.insert(consumer.to_owned());
        }
        for (id, _) in &fresh {
            g.last_delivered = *id;
            g.pel.insert(
                *id,
                Pending {
                    consumer: consumer.to_owned(),
                    delivered_at: now_ms,
                    deliveries: 1,
                },
            );
        }
        Some(fresh)
    }

    /// XREAD: up to `count` (0: all) entries after `after`.
    #[must_use]
    pub fn read_after(&self, after: EntryId, count: usize) -> Vec<(EntryId, Fields)> {
        self.entries
            .range(after..)
            .filter(|(id, _)| **id > after)
            .take(if count == 0 { usize::MAX } else { count })
            .map(|(id, f)| (*id, f.clone()))
            .collect()
    }

    /// XACK one id: whether it was pending.
    pub fn ack(&mut self, group: &str, id: EntryId) -> bool {
        self.groups
            .get_mut(group)
            .is_some_and(|g| g.pel.remove(&id).is_some())
    }

    /// XAUTOCLAIM, as Redis 7 does it: scans at most `10 * count` pending entries from
    /// `start`; deleted entries leave the PEL (and count against `count`); entries idle at
    /// least `min_idle_ms` move to `consumer` with one more delivery (`any_read`: the call
    /// makes `consumer` one of the group's even when it claims nothing, as Redis 7.2 and
    /// later do).
    #[allow(clippy::too_many_arguments)]
    pub fn autoclaim(
        &mut self,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        start: EntryId,
        count: usize,
        now_ms: u64,
        any_read: bool,
    ) -> Option<AutoClaim> {
        let g = self.groups.get_mut(group)?;
        let mut out = AutoClaim::default();
        let mut attempts = count.saturating_mul(10);
        let mut left = count;
        let ids: Vec<EntryId> = g.pel.range(start..).map(|(id, _)| *id).collect();
        let mut scanned = 0;
        for id in &ids {
            if attempts == 0 || left == 0 {
                break;
            }
            attempts -= 1;
            scanned += 1;
            let Some(fields) = self.entries.get(id) else {
                g.pel.remove(id);
                out.deleted.push(*id);
                left -= 1;
                continue;
            };
            let Some(p) = g.pel.get_mut(id) else { continue };
            if now_ms.saturating_sub(p.delivered_at) < min_idle_ms {
                continue;
            }
            p.consumer = consumer.to_owned();
            p.delivered_at = now_ms;
            p.deliveries += 1;
            out.claimed.push((*id, fields.clone()));
            left -= 1;
        }
        out.cursor = ids.get(scanned).copied().unwrap_or(EntryId::ZERO);
        if any_read || !out.claimed.is_empty() {
            g.consumers.insert(consumer.to_owned());
        }
        Some(out)
    }

    /// XCLAIM `<id>` IDLE JUSTID with min-idle 0: the entry moves to `consumer`, delivered
    /// (for idle-time purposes) at `delivered_at`, its delivery count unchanged. A pending id deleted from the stream leaves the
    /// PEL instead. Whether the entry is now held by `consumer`.
    pub fn claim_justid(
        &mut self,
        group: &str,
        consumer: &str,
        id: EntryId,
        delivered_at: u64,
    ) -> bool {
        let exists = self.entries.contains_key(&id);
        let Some(g) = self.groups.get_mut(group) else {
            return false;
        };
        if !exists {
            g.pel.remove(&id);
            return false;
        }
        match g.pel.get_mut(&id) {
            Some(p) => {
                p.consumer = consumer.to_owned();
                p.delivered_at = delivered_at;
                g.consumers.insert(consumer.to_owned());
                true
            }
            None => false,
        }
    }

    /// The owner and delivery count of a pending entry.
    #[must_use]
    pub fn pending(&self, group: &str, id: EntryId) -> Option<&Pending> {
        self.groups.get(group)?.pel.get(&id)
    }
}
