//! Every license's state, as a fold of the log's license and seat records.
//! The writer holds one (authoritative for decisions: seat allocation is
//! linearizable because only the writer allocates), the projector holds one
//! (persisted in sled and published to readers); both apply the same
//! records in the same order, so they agree at every sequence number.

use crate::id::{LicenseId, SeatId};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::model::{License, Status};
use super::seats::{Seat, SeatTable};
use super::utc_ms;
use crate::record::{LicenseSecret, Record, SeatRecord};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseState {
    pub license: License,
    pub secret: LicenseSecret,
    pub seats: SeatTable,
}

#[derive(Debug, Clone, Default)]
pub struct LicenseBook {
    by_id: HashMap<LicenseId, LicenseState>,
    by_digest: HashMap<[u8; 32], LicenseId>,
}

impl LicenseBook {
    pub fn from_states(states: impl IntoIterator<Item = LicenseState>) -> LicenseBook {
        let mut book = LicenseBook::default();
        for s in states {
            book.insert(s);
        }
        book
    }

    fn insert(&mut self, state: LicenseState) {
        self.by_digest
            .insert(state.secret.lookup, state.license.id.clone());
        self.by_id.insert(state.license.id.clone(), state);
    }

    pub fn get(&self, id: &str) -> Option<&LicenseState> {
        self.by_id.get(id)
    }

    pub fn contains_digest(&self, digest: &[u8; 32]) -> bool {
        self.by_digest.contains_key(digest)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &LicenseState> {
        self.by_id.values()
    }

    /// Applies one record; returns the id of the license it changed, if any.
    pub fn apply(&mut self, record: &Record) -> Option<LicenseId> {
        match record {
            Record::LicenseCreated {
                license, secret, ..
            } => {
                self.insert(LicenseState {
                    license: (*license.0).clone(),
                    secret: secret.clone(),
                    seats: SeatTable::default(),
                });
                Some(license.id.clone())
            }
            Record::LicenseMigrated { after: license, .. }
            | Record::LicenseChanged { license, .. } => {
                let state = self.by_id.get_mut(&license.id)?;
                state.license = (*license.0).clone();
                Some(license.id.clone())
            }
            Record::LicenseSuspended { id, reason, audit } => {
                self.set_status(id, Status::Suspended, reason.clone(), audit.at_ms)
            }
            Record::LicenseReinstated { id, audit } => {
                self.set_status(id, Status::Active, None, audit.at_ms)
            }
            Record::LicenseRevoked { id, reason, audit } => {
                self.set_status(id, Status::Revoked, reason.clone(), audit.at_ms)
            }
            Record::LicenseRenewed {
                id,
                expires_at_ms,
                audit,
            } => {
                let state = self.by_id.get_mut(id)?;
                state.license.expires_at = expires_at_ms.map(utc_ms);
                state.license.updated_at = utc_ms(audit.at_ms);
                Some(id.clone())
            }
            Record::SeatCheckedOut {
                license_id, seat, ..
            } => self.seat_taken(license_id, seat, None),
            Record::SeatLeased {
                license_id,
                seat,
                token_sha256,
                ..
            } => self.seat_taken(license_id, seat, Some(*token_sha256)),
            Record::SeatHeartbeat {
                license_id,
                seat_id,
                at_ms,
                expires_ms,
            } => {
                let state = self.by_id.get_mut(license_id)?;
                state.seats.heartbeat(seat_id, *at_ms, *expires_ms);
                Some(license_id.clone())
            }
            Record::SeatReleased {
                license_id,
                seat_id,
                ..
            }
            | Record::SeatLeaseExpired {
                license_id,
                seat_id,
                ..
            } => {
                let state = self.by_id.get_mut(license_id)?;
                state.seats.remove(seat_id);
                Some(license_id.clone())
            }
            _ => None,
        }
    }

    fn seat_taken(
        &mut self,
        license_id: &LicenseId,
        seat: &SeatRecord,
        token_sha256: Option<[u8; 32]>,
    ) -> Option<LicenseId> {
        let state = self.by_id.get_mut(license_id)?;
        state.seats.checked_out(Seat {
            seat_id: seat.seat_id.clone(),
            fingerprint: seat.fingerprint.clone(),
            checked_out_ms: seat.at_ms,
            heartbeat_ms: seat.at_ms,
            expires_ms: seat.expires_ms,
            token_sha256,
        });
        Some(license_id.clone())
    }

    fn set_status(
        &mut self,
        id: &LicenseId,
        status: Status,
        reason: Option<String>,
        at_ms: i64,
    ) -> Option<LicenseId> {
        let state = self.by_id.get_mut(id)?;
        state.license.status = status;
        state.license.status_reason = reason;
        state.license.updated_at = utc_ms(at_ms);
        Some(id.clone())
    }

    /// Live seats of every license at `now` (one pass over all licenses).
    pub fn seats_in_use(&self, now_ms: i64) -> u64 {
        self.by_id
            .values()
            .map(|s| u64::from(s.seats.used(now_ms)))
            .sum()
    }

    /// `(license id, seat id)` of every lapsed lease at `now`.
    pub fn lapsed_leases(&self, now_ms: i64) -> Vec<(LicenseId, SeatId)> {
        let mut out = Vec::new();
        for state in self.by_id.values() {
            for seat_id in state.seats.lapsed(now_ms) {
                out.push((state.license.id.clone(), seat_id));
            }
        }
        out.sort();
        out
    }
}
