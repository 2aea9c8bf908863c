//! Seats of one license: a small state machine folded from seat records.
//!
//! A seat is *live* at `now` if it has no lease end (node-locked) or its
//! lease ends after `now`. A lapsed lease no longer counts, even before the
//! writer has logged its `SeatLeaseExpired` (which it does on the next
//! checkout for that license and on its periodic sweep), so reads never
//! depend on when the sweep ran.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{SeatMode, SeatPolicy};
use crate::id::SeatId;

pub const FINGERPRINT_CHARS_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    pub seat_id: SeatId,
    pub fingerprint: String,
    pub checked_out_ms: i64,
    pub heartbeat_ms: i64,
    /// End of the lease; `None` for node-locked seats.
    pub expires_ms: Option<i64>,
}

impl Seat {
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatTable {
    /// By seat id.
    seats: BTreeMap<SeatId, Seat>,
}

/// What a checkout should do, decided from the table at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutPlan {
    /// The fingerprint holds a live seat; renew its lease to `renew_to`
    /// (floating) or leave it (node-locked: `None`).
    Existing {
        seat_id: SeatId,
        renew_to: Option<i64>,
    },
    /// A free seat: take it, with this lease end.
    New { expires_ms: Option<i64> },
    /// Every seat is taken by another fingerprint.
    Full,
}

pub fn check_fingerprint(fp: &str) -> Result<(), String> {
    if fp.is_empty()
        || fp.chars().count() > FINGERPRINT_CHARS_MAX
        || fp.chars().any(char::is_control)
    {
        return Err(format!(
            "fingerprint must be 1 to {FINGERPRINT_CHARS_MAX} characters without control characters"
        ));
    }
    Ok(())
}

/// `ms` plus `s` seconds, saturating (the policy bounds `s`, so this never
/// saturates for a validated license).
pub fn after_seconds(ms: i64, s: u64) -> i64 {
    i64::try_from(s)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .map_or(i64::MAX, |d| ms.saturating_add(d))
}

fn lease_end(policy: &SeatPolicy, now_ms: i64) -> Option<i64> {
    match policy.mode {
        SeatMode::NodeLocked => None,
        SeatMode::Floating => Some(after_seconds(now_ms, policy.lease_ttl_s)),
    }
}

impl SeatTable {
    pub fn live(&self, now_ms: i64) -> impl Iterator<Item = &Seat> {
        self.seats.values().filter(move |s| s.is_live(now_ms))
    }

    pub fn used(&self, now_ms: i64) -> u32 {
        self.live(now_ms).count() as u32
    }

    pub fn get(&self, seat_id: &str) -> Option<&Seat> {
        self.seats.get(seat_id)
    }

    /// The live seat held by `fingerprint`, if any.
    pub fn held_by(&self, fingerprint: &str, now_ms: i64) -> Option<&Seat> {
        self.live(now_ms).find(|s| s.fingerprint == fingerprint)
    }

    /// Seats whose lease has lapsed at `now` (to be logged as expired).
    pub fn lapsed(&self, now_ms: i64) -> Vec<SeatId> {
        self.seats
            .values()
            .filter(|s| !s.is_live(now_ms))
            .map(|s| s.seat_id.clone())
            .collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Seat> {
        self.seats.values()
    }

    pub fn is_empty(&self) -> bool {
        self.seats.is_empty()
    }

    /// Decides a checkout for `fingerprint` at `now`. Lapsed seats must have
    /// been removed first (they count as free either way).
    pub fn plan_checkout(
        &self,
        policy: &SeatPolicy,
        fingerprint: &str,
        now_ms: i64,
    ) -> CheckoutPlan {
        if let Some(seat) = self.held_by(fingerprint, now_ms) {
            return CheckoutPlan::Existing {
                seat_id: seat.seat_id.clone(),
                renew_to: lease_end(policy, now_ms),
            };
        }
        if self.used(now_ms) >= policy.max {
            return CheckoutPlan::Full;
        }
        CheckoutPlan::New {
            expires_ms: lease_end(policy, now_ms),
        }
    }

    /// The lease end a heartbeat at `now` gives.
    pub fn renewal(policy: &SeatPolicy, now_ms: i64) -> Option<i64> {
        lease_end(policy, now_ms)
    }

    // The fold: one method per seat record.

    pub fn checked_out(&mut self, seat: Seat) {
        self.seats.insert(seat.seat_id.clone(), seat);
    }

    pub fn heartbeat(&mut self, seat_id: &str, at_ms: i64, expires_ms: Option<i64>) {
        if let Some(s) = self.seats.get_mut(seat_id) {
            s.heartbeat_ms = at_ms;
            s.expires_ms = expires_ms;
        }
    }

    pub fn remove(&mut self, seat_id: &str) {
        self.seats.remove(seat_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floating(max: u32) -> SeatPolicy {
        SeatPolicy {
            max,
            mode: SeatMode::Floating,
            lease_ttl_s: 60,
        }
    }

    fn take(t: &mut SeatTable, p: &SeatPolicy, fp: &str, now: i64) -> CheckoutPlan {
        let plan = t.plan_checkout(p, fp, now);
        match &plan {
            CheckoutPlan::New { expires_ms } => t.checked_out(Seat {
                seat_id: format!("s-{fp}").into(),
                fingerprint: fp.into(),
                checked_out_ms: now,
                heartbeat_ms: now,
                expires_ms: *expires_ms,
            }),
            CheckoutPlan::Existing { seat_id, renew_to } => t.heartbeat(seat_id, now, *renew_to),
            CheckoutPlan::Full => {}
        }
        plan
    }

    #[test]
    fn same_fingerprint_gets_its_seat_back_and_the_limit_holds() {
        let p = floating(2);
        let mut t = SeatTable::default();
        assert!(matches!(take(&mut t, &p, "a", 0), CheckoutPlan::New { .. }));
        assert!(matches!(
            take(&mut t, &p, "a", 1),
            CheckoutPlan::Existing { .. }
        ));
        assert!(matches!(take(&mut t, &p, "b", 2), CheckoutPlan::New { .. }));
        assert_eq!(take(&mut t, &p, "c", 3), CheckoutPlan::Full);
        assert_eq!(t.used(3), 2);
    }

    #[test]
    fn a_lapsed_lease_frees_its_seat_exactly_at_its_end() {
        let p = floating(1);
        let mut t = SeatTable::default();
        take(&mut t, &p, "a", 0);
        assert_eq!(take(&mut t, &p, "b", 59_999), CheckoutPlan::Full);
        assert!(t.lapsed(59_999).is_empty());
        assert_eq!(t.lapsed(60_000), vec![SeatId::from("s-a")]);
        assert!(matches!(
            take(&mut t, &p, "b", 60_000),
            CheckoutPlan::New { .. }
        ));
    }

    #[test]
    fn heartbeat_extends_the_lease_and_node_locked_seats_never_lapse() {
        let p = floating(1);
        let mut t = SeatTable::default();
        take(&mut t, &p, "a", 0);
        t.heartbeat("s-a", 50_000, SeatTable::renewal(&p, 50_000));
        assert_eq!(t.used(100_000), 1);
        let nl = SeatPolicy {
            max: 1,
            mode: SeatMode::NodeLocked,
            lease_ttl_s: 60,
        };
        let mut t = SeatTable::default();
        take(&mut t, &nl, "m1", 0);
        assert_eq!(t.used(i64::MAX), 1);
        assert_eq!(take(&mut t, &nl, "m2", 10), CheckoutPlan::Full);
    }
}
