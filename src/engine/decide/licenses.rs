//! License and seat decisions.
//! Each checks the request against the writer's state, turns it into one or
//! more records, and applies them to the state before the next request.

use super::{stamped, Request, WriterState, LEASE_SWEEP_RECORDS_MAX};
use crate::engine::batch::Batch;
use crate::engine::protocol::{
    ChangeLicenseStatus, CheckoutSeat, CreateLicense, CreatePlan, EngineError, HeartbeatSeat,
    RecordLicenseFile, ReleaseSeat, RenewLicense, SeatLease, SeatReleaser, SweepLeases,
    UpdateLicense,
};
use crate::error_code::{outcome_label, ErrorCode};
use crate::id::LicenseId;
use crate::license::model::StatusAction;
use crate::license::plan::{Plan, PLAN_VERSIONS_MAX};
use crate::license::seats::CheckoutPlan;
use crate::license::{License, Refusal, SeatPolicy, SeatTable};
use crate::metrics::metrics;
use crate::record::{AsJson, Record, SeatRecord};

/// The answer of a license or seat request: refusals are answers too.
type Decided<T> = Result<Result<T, Refusal>, EngineError>;

impl Request for CreateLicense {
    type Output = Result<License, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<License> {
        let license = match state.on_plan(*self.license, None) {
            Ok(l) => l,
            Err(r) => return Ok(Err(r)),
        };
        if let Err(r) = license
            .validate()
            .and_then(|()| state.quota_meters(&license))
        {
            return Ok(Err(r));
        }
        let exists = state.licenses.get(&license.id).is_some()
            || state.licenses.contains_digest(&self.secret.lookup);
        if exists {
            let msg = format!("license `{}` already exists", license.id);
            return Ok(Err(Refusal::new(ErrorCode::Conflict, msg)));
        }
        let record = Record::LicenseCreated {
            license: AsJson::new(license.clone()),
            secret: self.secret,
            audit: stamped(self.audit, now_ms),
        };
        state.push_license_record(record, batch);
        Ok(Ok(license))
    }
}

impl Request for UpdateLicense {
    type Output = Result<License, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<License> {
        let now = crate::license::utc_ms(now_ms);
        let new_plan = self.update.plan.is_some();
        let license = match state.license(&self.id).and_then(|before| {
            let after = before.updated(*self.update, now)?;
            let after = match new_plan {
                true => state.on_plan(after, before.plan.as_deref())?,
                false => after,
            };
            after.validate()?;
            state.quota_meters(&after).map(|()| after)
        }) {
            Ok(l) => l,
            Err(r) => return Ok(Err(r)),
        };
        let record = Record::LicenseChanged {
            license: AsJson::new(license.clone()),
            audit: stamped(self.audit, now_ms),
        };
        state.push_license_record(record, batch);
        Ok(Ok(license))
    }
}

impl Request for CreatePlan {
    type Output = Result<Plan, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<Plan> {
        let now = crate::license::utc_ms(now_ms);
        let version = state.plans.next_version(&self.plan.name);
        if version > PLAN_VERSIONS_MAX {
            let msg = format!("plan `{}` has {PLAN_VERSIONS_MAX} versions", self.plan.name);
            return Ok(Err(Refusal::new(ErrorCode::InvalidPlan, msg)));
        }
        let plan = match Plan::create(*self.plan, version, now) {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        };
        if let Some(q) = plan
            .policy
            .quotas()
            .iter()
            .find(|q| state.meters.get(&q.meter).is_none())
        {
            let msg = format!("quota names meter `{}`, which does not exist", q.meter);
            return Ok(Err(Refusal::new(ErrorCode::InvalidPlan, msg)));
        }
        let record = Record::PlanSaved {
            plan: AsJson::new(plan.clone()),
            audit: stamped(self.audit, now_ms),
        };
        state.plans.apply(&record);
        batch.push(record, None);
        Ok(Ok(plan))
    }
}

impl Request for ChangeLicenseStatus {
    type Output = Result<License, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<License> {
        let allowed = state
            .license(&self.id)
            .and_then(|l| crate::license::model::transition(l.status, self.action));
        if let Err(r) = allowed {
            return Ok(Err(r));
        }
        let audit = stamped(self.audit, now_ms);
        let id = self.id;
        let record = match self.action {
            StatusAction::Suspend => Record::LicenseSuspended {
                id: id.clone(),
                reason: self.reason,
                audit,
            },
            StatusAction::Reinstate => Record::LicenseReinstated {
                id: id.clone(),
                audit,
            },
            StatusAction::Revoke => Record::LicenseRevoked {
                id: id.clone(),
                reason: self.reason,
                audit,
            },
        };
        state.push_license_record(record, batch);
        Ok(Ok(state.current(&id)))
    }
}

impl Request for RenewLicense {
    type Output = Result<License, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<License> {
        let expires_at_ms = match state.license(&self.id) {
            Ok(license) => license.renewed_expiry(self.renewal, now_ms),
            Err(r) => Err(r),
        };
        let expires_at_ms = match expires_at_ms {
            Ok(e) => e,
            Err(r) => return Ok(Err(r)),
        };
        let record = Record::LicenseRenewed {
            id: self.id.clone(),
            expires_at_ms,
            audit: stamped(self.audit, now_ms),
        };
        state.push_license_record(record, batch);
        Ok(Ok(state.current(&self.id)))
    }
}

impl Request for CheckoutSeat {
    type Output = Result<SeatLease, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<SeatLease> {
        let outcome = state.checkout_seat(self, now_ms, batch);
        seat_metric("checkout", &outcome);
        Ok(outcome)
    }
}

impl Request for HeartbeatSeat {
    type Output = Result<SeatLease, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<SeatLease> {
        let outcome = state.heartbeat_seat(self, now_ms, batch);
        seat_metric("heartbeat", &outcome);
        Ok(outcome)
    }
}

impl Request for ReleaseSeat {
    type Output = Result<(), Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<()> {
        let held = state.license(&self.license_id).and_then(|_| {
            let seat = state.seat(&self.license_id, &self.seat_id)?;
            match &self.by {
                SeatReleaser::Admin => Ok(()),
                SeatReleaser::Holder { token_sha256 } => opened(seat, token_sha256.as_ref()),
            }
        });
        let outcome = held.map(|()| {
            let record = Record::SeatReleased {
                license_id: self.license_id,
                seat_id: self.seat_id,
                audit: stamped(self.audit, now_ms),
            };
            state.push_license_record(record, batch);
        });
        seat_metric("release", &outcome);
        Ok(outcome)
    }
}

impl Request for SweepLeases {
    type Output = usize;

    fn records_max(&self) -> usize {
        LEASE_SWEEP_RECORDS_MAX
    }

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<usize, EngineError> {
        let lapsed = state.licenses.lapsed_leases(now_ms);
        // The sweep walks every seat anyway: the gauge costs one more pass
        // every few seconds, nothing per request.
        let in_use = state.licenses.seats_in_use(now_ms);
        metrics()
            .seats_in_use
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
        let n = lapsed.len().min(LEASE_SWEEP_RECORDS_MAX);
        for (license_id, seat_id) in lapsed.into_iter().take(LEASE_SWEEP_RECORDS_MAX) {
            let record = Record::SeatLeaseExpired {
                license_id,
                seat_id,
                at_ms: now_ms,
            };
            state.push_license_record(record, batch);
        }
        Ok(n)
    }
}

impl Request for RecordLicenseFile {
    type Output = ();

    fn decide(
        self,
        _: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<(), EngineError> {
        let audit = stamped(self.audit, now_ms);
        batch.push(
            Record::LicenseFileIssued {
                issue: self.issue,
                audit,
            },
            None,
        );
        Ok(())
    }
}

impl WriterState {
    /// Logs a license or seat record and applies it to the writer's book, so
    /// later requests of the same batch see it.
    fn push_license_record(&mut self, record: Record, batch: &mut Batch) {
        if let Record::SeatLeaseExpired { .. } = record {
            metrics()
                .seat_operations_total
                .with_label_values(&["lease_expired", "ok"])
                .inc();
        }
        self.licenses.apply(&record);
        batch.push(record, None);
    }

    /// `license` with the terms of the plan it names (as a request gave it:
    /// `pro` or `pro@2`), `previous` being the plan it was on before.
    fn on_plan(&self, license: License, previous: Option<&str>) -> Result<License, Refusal> {
        let Some(reference) = license.plan.as_deref() else {
            return Ok(license);
        };
        let plan = self.plans.resolve(reference)?;
        let previous = previous.and_then(|p| self.plans.resolve(p).ok());
        Ok(crate::license::plan::attach(&license, previous, plan))
    }

    /// Every quota must name a meter that exists now.
    fn quota_meters(&self, license: &License) -> Result<(), Refusal> {
        match license
            .policy
            .quotas()
            .iter()
            .find(|q| self.meters.get(&q.meter).is_none())
        {
            Some(q) => Err(Refusal::new(
                ErrorCode::InvalidLicense,
                format!("quota names meter `{}`, which does not exist", q.meter),
            )),
            None => Ok(()),
        }
    }

    fn license(&self, id: &str) -> Result<&License, Refusal> {
        self.licenses.get(id).map(|s| &s.license).ok_or_else(|| {
            Refusal::new(
                ErrorCode::NotFound,
                format!("license `{id}` does not exist"),
            )
        })
    }

    /// A license as the records just pushed left it.
    fn current(&self, id: &str) -> License {
        self.licenses.get(id).expect("just changed").license.clone()
    }

    fn seat(&self, license_id: &str, seat_id: &str) -> Result<&crate::license::Seat, Refusal> {
        self.licenses
            .get(license_id)
            .and_then(|s| s.seats.get(seat_id))
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NoSeat,
                    format!("seat `{seat_id}` does not exist"),
                )
            })
    }

    /// The license must be usable now for seat operations.
    fn seat_policy(&self, id: &str, now_ms: i64) -> Result<SeatPolicy, Refusal> {
        let license = self.license(id)?;
        let now = crate::license::utc_ms(now_ms);
        if let Err((code, detail)) = crate::license::decide::availability(license, now) {
            // Status and time refusals (REVOKED, SUSPENDED, NOT_YET_VALID,
            // EXPIRED) are error codes too.
            let code = code.error_code().unwrap_or(ErrorCode::Conflict);
            return Err(Refusal::new(code, detail));
        }
        license.policy.seats.clone().ok_or_else(|| {
            Refusal::new(
                ErrorCode::NoSeatPolicy,
                format!("license `{id}` has no seat policy"),
            )
        })
    }

    fn reclaim_lapsed(&mut self, license_id: &LicenseId, now_ms: i64, batch: &mut Batch) {
        let lapsed = self
            .licenses
            .get(license_id)
            .map(|s| s.seats.lapsed(now_ms))
            .unwrap_or_default();
        for seat_id in lapsed {
            let record = Record::SeatLeaseExpired {
                license_id: license_id.clone(),
                seat_id,
                at_ms: now_ms,
            };
            self.push_license_record(record, batch);
        }
    }

    fn checkout_seat(
        &mut self,
        req: CheckoutSeat,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<SeatLease, Refusal> {
        let license_id = &req.license_id;
        let policy = self.seat_policy(license_id, now_ms)?;
        self.reclaim_lapsed(license_id, now_ms, batch);
        let seats = &self.licenses.get(license_id).expect("checked").seats;
        match seats.plan_checkout(&policy, &req.fingerprint, &req.token_sha256, now_ms) {
            CheckoutPlan::Full => Err(Refusal::new(
                ErrorCode::SeatLimitExceeded,
                format!("all {} seats are taken", policy.max),
            )),
            CheckoutPlan::Held => Err(Refusal::new(
                ErrorCode::LeaseTokenInvalid,
                "this fingerprint holds a seat under another lease token: send that seat's \
                 `lease_token`, or wait for its lease to end",
            )),
            CheckoutPlan::Existing { seat_id, renew_to } => {
                if renew_to.is_some() {
                    let record = Record::SeatHeartbeat {
                        license_id: license_id.clone(),
                        seat_id: seat_id.clone(),
                        at_ms: now_ms,
                        expires_ms: renew_to,
                    };
                    self.push_license_record(record, batch);
                }
                let seat = self.seat(license_id, &seat_id).ok();
                Ok(SeatLease {
                    seat_id,
                    fingerprint: req.fingerprint,
                    expires_ms: seat.and_then(|s| s.expires_ms),
                    new: false,
                    tokened: seat.is_some_and(|s| s.token_sha256.is_some()),
                })
            }
            CheckoutPlan::New { expires_ms } => {
                let record = Record::SeatLeased {
                    license_id: license_id.clone(),
                    seat: SeatRecord {
                        seat_id: req.new_seat_id.clone(),
                        fingerprint: req.fingerprint.clone(),
                        at_ms: now_ms,
                        expires_ms,
                    },
                    token_sha256: req.token_sha256,
                    audit: stamped(req.audit, now_ms),
                };
                self.push_license_record(record, batch);
                Ok(SeatLease {
                    seat_id: req.new_seat_id,
                    fingerprint: req.fingerprint,
                    expires_ms,
                    new: true,
                    tokened: true,
                })
            }
        }
    }

    fn heartbeat_seat(
        &mut self,
        req: HeartbeatSeat,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<SeatLease, Refusal> {
        let (license_id, seat_id) = (&req.license_id, &req.seat_id);
        let policy = self.seat_policy(license_id, now_ms)?;
        let seat = self.seat(license_id, seat_id)?.clone();
        opened(&seat, req.token_sha256.as_ref())?;
        if !seat.is_live(now_ms) {
            self.reclaim_lapsed(license_id, now_ms, batch);
            return Err(Refusal::new(
                ErrorCode::NoSeat,
                format!("the lease of seat `{seat_id}` lapsed; check out again"),
            ));
        }
        let expires_ms = SeatTable::renewal(&policy, now_ms);
        let record = Record::SeatHeartbeat {
            license_id: license_id.clone(),
            seat_id: seat_id.clone(),
            at_ms: now_ms,
            expires_ms,
        };
        self.push_license_record(record, batch);
        Ok(SeatLease {
            seat_id: seat.seat_id,
            fingerprint: seat.fingerprint,
            expires_ms,
            new: false,
            tokened: seat.token_sha256.is_some(),
        })
    }
}

/// `LEASE_TOKEN_INVALID` unless `presented` opens `seat`: knowing a seat's
/// id or its machine's fingerprint is not enough to renew or free it.
fn opened(seat: &crate::license::Seat, presented: Option<&[u8; 32]>) -> Result<(), Refusal> {
    if seat.opens_with(presented) {
        return Ok(());
    }
    let missing = match presented {
        None => "missing",
        Some(_) => "wrong",
    };
    Err(Refusal::new(
        ErrorCode::LeaseTokenInvalid,
        format!(
            "the lease token of seat `{}` is {missing}: send the `lease_token` its checkout \
             answered as the `Lease-Token` header",
            seat.seat_id
        ),
    ))
}

fn seat_metric<T>(op: &str, outcome: &Result<T, Refusal>) {
    metrics()
        .seat_operations_total
        .with_label_values(&[op, outcome_label(outcome)])
        .inc();
}
