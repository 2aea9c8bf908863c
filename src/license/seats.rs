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
    /// SHA-256 of the seat's lease token, which heartbeat, release and a
    /// repeated checkout must present. `None` for a seat taken before
    /// lease tokens existed (`SeatCheckedOut`), which opens without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<[u8; 32]>,
}

impl Seat {
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// Whether `presented` (the SHA-256 of a lease token) opens this seat.
    /// Digests of random tokens are compared, so an early exit tells a
    /// caller nothing about the token.
    pub fn opens_with(&self, presented: Option<&[u8; 32]>) -> bool {
        match &self.token_sha256 {
            None => true,
            Some(held) => presented == Some(held),
        }
    }
}

/// A lease token a client proposes: 22 to 128 characters (at least 128
/// bits of entropy when random) from the URL-safe set, so it fits a header
/// unchanged.
pub fn check_lease_token(token: &str) -> Result<(), String> {
    let ok = (LEASE_TOKEN_CHARS_MIN..=LEASE_TOKEN_CHARS_MAX).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lease_token must be {LEASE_TOKEN_CHARS_MIN} to {LEASE_TOKEN_CHARS_MAX} characters \
             from A-Z a-z 0-9 - _ . ~ (random, at least 128 bits)"
        ))
    }
}

pub const LEASE_TOKEN_CHARS_MIN: usize = 22;
pub const LEASE_TOKEN_CHARS_MAX: usize = 128;

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
    /// The fingerprint holds a live seat whose lease token is not the one
    /// presented: the seat stays with its holder.
    Held,
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
        token_sha256: &[u8; 32],
        now_ms: i64,
    ) -> CheckoutPlan {
        if let Some(seat) = self.held_by(fingerprint, now_ms) {
            if !seat.opens_with(Some(token_sha256)) {
                return CheckoutPlan::Held;
            }
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

    /// Each fingerprint's holder presents its own token.
    fn token(fp: &str) -> [u8; 32] {
        let mut t = [0u8; 32];
        t[..fp.len()].copy_from_slice(fp.as_bytes());
        t
    }

    fn take_with(
        t: &mut SeatTable,
        p: &SeatPolicy,
        fp: &str,
        token: [u8; 32],
        now: i64,
    ) -> CheckoutPlan {
        let plan = t.plan_checkout(p, fp, &token, now);
        match &plan {
            CheckoutPlan::New { expires_ms } => t.checked_out(Seat {
                seat_id: format!("s-{fp}").into(),
                fingerprint: fp.into(),
                checked_out_ms: now,
                heartbeat_ms: now,
                expires_ms: *expires_ms,
                token_sha256: Some(token),
            }),
            CheckoutPlan::Existing { seat_id, renew_to } => t.heartbeat(seat_id, now, *renew_to),
            CheckoutPlan::Full | CheckoutPlan::Held => {}
        }
        plan
    }

    fn take(t: &mut SeatTable, p: &SeatPolicy, fp: &str, now: i64) -> CheckoutPlan {
        take_with(t, p, fp, token(fp), now)
    }

    #[test]
    fn only_the_seats_lease_token_gets_it_back_and_a_seat_from_before_tokens_opens_without() {
        let p = floating(2);
        let mut t = SeatTable::default();
        take(&mut t, &p, "a", 0);
        assert_eq!(
            take_with(&mut t, &p, "a", token("x"), 1),
            CheckoutPlan::Held
        );
        assert!(matches!(
            take(&mut t, &p, "a", 2),
            CheckoutPlan::Existing { .. }
        ));
        let seat = t.get("s-a").unwrap();
        assert!(seat.opens_with(Some(&token("a"))));
        assert!(!seat.opens_with(Some(&token("b"))));
        assert!(!seat.opens_with(None));
        t.checked_out(Seat {
            token_sha256: None,
            seat_id: "old".into(),
            fingerprint: "b".into(),
            ..seat.clone()
        });
        assert!(matches!(
            take_with(&mut t, &p, "b", token("y"), 3),
            CheckoutPlan::Existing { .. }
        ));
        assert!(t.get("old").unwrap().opens_with(None));
    }

    #[test]
    fn a_proposed_lease_token_is_long_and_url_safe() {
        assert!(check_lease_token("AbCdEfGhIjKlMnOpQrStUv").is_ok());
        assert!(check_lease_token(&"a".repeat(128)).is_ok());
        for bad in [
            "short",
            &"a".repeat(129),
            "AbCdEfGhIjKlMnOpQrStU v",
            "AbCdEfGhIjKlMnOpQrStU\n",
        ] {
            assert!(check_lease_token(bad).is_err(), "{bad:?}");
        }
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
