//! The slots themselves, with no I/O and no clock of its own (`now` is
//! passed in, epoch ms), so its rules are tested directly: per limited
//! provider at most `limit` requests hold a slot; a freed slot is handed
//! on after the cooldown (the caller waits it out, then calls
//! [`Limiter::free`]); waiters go starred workspaces first, then oldest
//! turn; a `429` pauses the provider.

use std::collections::HashMap;

use tokio::sync::watch;

/// How long a `429` pauses a provider.
pub const PAUSE_MS: u64 = 30_000;
/// A slot held longer than this is taken back.
pub const RECLAIM_AFTER_MS: u64 = 5 * 60_000;

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    starred: bool,
    turn_started_at: u64,
    granted: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Lane {
    in_flight: u64,
    waiters: Vec<Waiter>,
    paused_until: Option<u64>,
}

/// What [`Limiter::acquire`] answers.
#[derive(Debug)]
pub enum Grant {
    /// Go ahead.
    Now(u64),
    /// Wait on the receiver until it reads `true`.
    Queued(u64, watch::Receiver<bool>),
}

/// The limiter.
#[derive(Debug, Default)]
pub struct Limiter {
    lanes: HashMap<String, Lane>,
    /// Tickets holding a slot: provider and since when.
    held: HashMap<u64, (String, u64)>,
    next_ticket: u64,
}

impl Limiter {
    /// A slot of `provider` (limited to `limit`) for a request of a turn
    /// that started at `turn_started_at`, of a `starred` workspace or not.
    pub fn acquire(
        &mut self,
        provider: &str,
        limit: u64,
        starred: bool,
        turn_started_at: u64,
        now: u64,
    ) -> Grant {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let lane = self.lanes.entry(provider.to_owned()).or_default();
        let paused = lane.paused_until.is_some_and(|t| t > now);
        if !paused && lane.waiters.is_empty() && lane.in_flight < limit {
            lane.in_flight += 1;
            self.held.insert(ticket, (provider.to_owned(), now));
            return Grant::Now(ticket);
        }
        let (granted, rx) = watch::channel(false);
        lane.waiters.push(Waiter { ticket, starred, turn_started_at, granted });
        Grant::Queued(ticket, rx)
    }

    /// Ticket `ticket` is done: answers its provider while it held a slot
    /// (to be [`Limiter::free`]d after the cooldown); a queued ticket is
    /// withdrawn.
    pub fn release(&mut self, ticket: u64) -> Option<String> {
        if let Some((provider, _)) = self.held.remove(&ticket) {
            return Some(provider);
        }
        for lane in self.lanes.values_mut() {
            lane.waiters.retain(|w| w.ticket != ticket);
        }
        None
    }

    /// A `429` from `provider`: pause it until `now` + [`PAUSE_MS`].
    pub fn pause(&mut self, provider: &str, now: u64) -> u64 {
        let until = now + PAUSE_MS;
        self.lanes.entry(provider.to_owned()).or_default().paused_until = Some(until);
        until
    }

    /// A slot of `provider` is free again (after its cooldown).
    pub fn free(&mut self, provider: &str) {
        if let Some(lane) = self.lanes.get_mut(provider) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
        }
    }

    /// Hand free slots of `provider` (limit `limit`; `None`: unlimited now)
    /// to its waiters, best first. Answers how many were granted.
    pub fn pump(&mut self, provider: &str, limit: Option<u64>, now: u64) -> usize {
        let Some(lane) = self.lanes.get_mut(provider) else { return 0 };
        if lane.paused_until.is_some_and(|t| t > now) {
            return 0;
        }
        lane.paused_until = None;
        let mut granted = 0;
        while !lane.waiters.is_empty() && limit.is_none_or(|l| lane.in_flight < l) {
            // Starred first, then the oldest turn, then first come.
            let best = (0..lane.waiters.len())
                .min_by_key(|&i| {
                    let w = &lane.waiters[i];
                    (!w.starred, w.turn_started_at, w.ticket)
                })
                .unwrap_or(0);
            let w = lane.waiters.remove(best);
            if limit.is_some() {
                lane.in_flight += 1;
                self.held.insert(w.ticket, (provider.to_owned(), now));
            }
            // A waiter that gave up (its receiver gone) still took the
            // slot: its release frees it.
            let _ = w.granted.send(true);
            granted += 1;
        }
        granted
    }

    /// Slots held since before `now` - [`RECLAIM_AFTER_MS`]: their tickets.
    pub fn stale(&self, now: u64) -> Vec<u64> {
        self.held
            .iter()
            .filter(|(_, (_, since))| now.saturating_sub(*since) > RECLAIM_AFTER_MS)
            .map(|(t, _)| *t)
            .collect()
    }

    /// A ticket holding a slot of `provider` (for benchmarks and tests).
    pub fn held_ticket(&self, provider: &str) -> Option<u64> {
        self.held.iter().find(|(_, (p, _))| p == provider).map(|(t, _)| *t)
    }

    /// `(in flight, queued, paused until)` of `provider`.
    pub fn lane(&self, provider: &str, now: u64) -> (u64, u64, Option<u64>) {
        self.lanes.get(provider).map_or((0, 0, None), |l| {
            (l.in_flight, l.waiters.len() as u64, l.paused_until.filter(|t| *t > now))
        })
    }

    /// Every provider with waiters or slots (to pump after a change).
    pub fn providers(&self) -> Vec<String> {
        self.lanes.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn queued(g: Grant) -> (u64, watch::Receiver<bool>) {
        match g {
            Grant::Queued(t, rx) => (t, rx),
            Grant::Now(t) => panic!("granted {t} at once"),
        }
    }

    #[test]
    fn a_limit_queues_the_rest_starred_first_then_oldest_turn() {
        let mut l = Limiter::default();
        let Grant::Now(first) = l.acquire("p", 1, false, 100, 0) else { panic!() };
        let (_, old) = queued(l.acquire("p", 1, false, 10, 0));
        let (_, starred) = queued(l.acquire("p", 1, true, 500, 0));
        let (_, newest) = queued(l.acquire("p", 1, false, 50, 0));
        assert_eq!(l.lane("p", 0), (1, 3, None));
        assert_eq!(l.release(first).as_deref(), Some("p"));
        assert_eq!(l.pump("p", Some(1), 1), 0, "the slot is still cooling down");
        l.free("p");
        assert_eq!(l.pump("p", Some(1), 2), 1);
        assert!(*starred.borrow() && !*old.borrow() && !*newest.borrow(), "starred first");
        l.free("p");
        l.pump("p", Some(1), 3);
        assert!(*old.borrow() && !*newest.borrow(), "then the oldest turn");
        assert_eq!(l.lane("p", 3), (1, 1, None), "one slot, handed on twice; one still waiting");
    }

    #[test]
    fn a_pause_holds_everything_until_it_ends_and_no_limit_releases_all() {
        let mut l = Limiter::default();
        let until = l.pause("p", 1000);
        let (_, rx) = queued(l.acquire("p", 5, false, 0, 1001));
        assert_eq!(l.pump("p", Some(5), until - 1), 0);
        assert_eq!(l.pump("p", Some(5), until), 1);
        assert!(*rx.borrow());
        // Limit 1 and two waiting, then the limit is removed: both go.
        let mut l = Limiter::default();
        let Grant::Now(_) = l.acquire("q", 1, false, 0, 0) else { panic!() };
        let (_, a) = queued(l.acquire("q", 1, false, 0, 0));
        let (_, b) = queued(l.acquire("q", 1, false, 0, 0));
        assert_eq!(l.pump("q", None, 0), 2);
        assert!(*a.borrow() && *b.borrow());
    }

    #[test]
    fn a_withdrawn_waiter_leaves_the_queue_and_old_slots_are_found() {
        let mut l = Limiter::default();
        let Grant::Now(held) = l.acquire("p", 1, false, 0, 0) else { panic!() };
        let (t, _) = queued(l.acquire("p", 1, false, 0, 0));
        assert_eq!(l.release(t), None);
        assert_eq!(l.lane("p", 0), (1, 0, None));
        assert!(l.stale(RECLAIM_AFTER_MS).is_empty());
        assert_eq!(l.stale(RECLAIM_AFTER_MS + 1), vec![held]);
    }
}
