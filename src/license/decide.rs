//! The validation decision: license state + request + usage + now → verdict,
//! and the claims of the signed token that carries it. Pure. (One idea at
//! about 600 lines: the last third is the unit tests that pin each check.)
//!
//! Checks run in this order; the first that fails gives the code:
//! status (`REVOKED`, `SUSPENDED`), time (`NOT_YET_VALID`, `EXPIRED`),
//! `ENTITLEMENT_MISSING`, seats (`NO_SEAT`, `SEAT_LIMIT_EXCEEDED`,
//! `FINGERPRINT_MISMATCH`), `QUOTA_EXCEEDED`. If all pass the code is `VALID`,
//! or `IN_GRACE` between `expires_at` and the end of the grace period.

use chrono::{DateTime, Duration, Utc};
use serde::{Serialize, Serializer};

use super::model::{License, Overage, SeatMode, Status};
use super::period::{current_period, PeriodBounds};
use super::seats::SeatTable;
use crate::error_code::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Valid,
    InGrace,
    NotFound,
    Suspended,
    Revoked,
    NotYetValid,
    Expired,
    SeatLimitExceeded,
    NoSeat,
    FingerprintMismatch,
    QuotaExceeded,
    EntitlementMissing,
}

impl Code {
    pub const ALL: [Code; 12] = [
        Code::Valid,
        Code::InGrace,
        Code::NotFound,
        Code::Suspended,
        Code::Revoked,
        Code::NotYetValid,
        Code::Expired,
        Code::SeatLimitExceeded,
        Code::NoSeat,
        Code::FingerprintMismatch,
        Code::QuotaExceeded,
        Code::EntitlementMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::InGrace => "IN_GRACE",
            Code::NotFound => "NOT_FOUND",
            Code::Suspended => "SUSPENDED",
            Code::Revoked => "REVOKED",
            Code::NotYetValid => "NOT_YET_VALID",
            Code::Expired => "EXPIRED",
            Code::SeatLimitExceeded => "SEAT_LIMIT_EXCEEDED",
            Code::NoSeat => "NO_SEAT",
            Code::FingerprintMismatch => "FINGERPRINT_MISMATCH",
            Code::QuotaExceeded => "QUOTA_EXCEEDED",
            Code::EntitlementMissing => "ENTITLEMENT_MISSING",
        }
    }

    pub fn is_valid(self) -> bool {
        matches!(self, Code::Valid | Code::InGrace)
    }

    /// The error code, with the same wire string, that refuses a seat or
    /// admin operation for this reason; `None` for verdicts that only
    /// validation answers with.
    pub fn error_code(self) -> Option<ErrorCode> {
        match self {
            Code::NotFound => Some(ErrorCode::NotFound),
            Code::Suspended => Some(ErrorCode::Suspended),
            Code::Revoked => Some(ErrorCode::Revoked),
            Code::NotYetValid => Some(ErrorCode::NotYetValid),
            Code::Expired => Some(ErrorCode::Expired),
            Code::SeatLimitExceeded => Some(ErrorCode::SeatLimitExceeded),
            Code::NoSeat => Some(ErrorCode::NoSeat),
            Code::Valid
            | Code::InGrace
            | Code::FingerprintMismatch
            | Code::QuotaExceeded
            | Code::EntitlementMissing => None,
        }
    }
}

/// What the product asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub fingerprint: Option<&'a str>,
    pub entitlements: &'a [String],
    /// The quota to report; without it every quota is checked and the first
    /// exceeded one (else the first) is reported.
    pub meter: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeatReport {
    pub used: u32,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuotaReport {
    pub meter: String,
    pub used: f64,
    pub limit: f64,
    pub period: PeriodBounds,
    /// `used - limit` when positive.
    pub overage: f64,
    pub overage_policy: Overage,
    /// Usage is at or over the limit.
    pub exhausted: bool,
    pub thresholds_crossed_pct: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub code: Code,
    pub detail: String,
    pub seats: Option<SeatReport>,
    pub quota: Option<QuotaReport>,
}

impl Verdict {
    pub fn not_found() -> Verdict {
        Verdict {
            code: Code::NotFound,
            detail: "no license has this key".into(),
            seats: None,
            quota: None,
        }
    }
}

/// When the grace period after `expires_at` ends (the latest date there is,
/// rather than an overflow, for a date near the end of time).
fn grace_end(license: &License, expires_at: DateTime<Utc>) -> DateTime<Utc> {
    Duration::try_seconds(license.grace_period_s.min(i64::MAX as u64) as i64)
        .and_then(|d| expires_at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whether the license may be used at `now` as far as status and time go:
/// `Ok(in_grace)` or the refusing code with its detail.
pub fn availability(license: &License, now: DateTime<Utc>) -> Result<bool, (Code, String)> {
    match license.status {
        Status::Revoked => return Err((Code::Revoked, "the license is revoked".into())),
        Status::Suspended => return Err((Code::Suspended, "the license is suspended".into())),
        Status::Active => {}
    }
    if now < license.starts_at {
        return Err((
            Code::NotYetValid,
            format!("the license starts at {}", license.starts_at.to_rfc3339()),
        ));
    }
    let Some(expires_at) = license.expires_at else {
        return Ok(false);
    };
    if now < expires_at {
        return Ok(false);
    }
    if now < grace_end(license, expires_at) {
        return Ok(true);
    }
    Err((
        Code::Expired,
        format!("the license expired at {}", expires_at.to_rfc3339()),
    ))
}

/// The current period of every quota of `license` at `now` (for the caller
/// to look usage up), in policy order.
pub fn quota_periods(license: &License, now: DateTime<Utc>) -> Vec<PeriodBounds> {
    license
        .policy
        .quotas()
        .iter()
        .map(|q| current_period(q.period, license.starts_at, now))
        .collect()
}

fn quota_report(license: &License, i: usize, used: f64, period: PeriodBounds) -> QuotaReport {
    let q = &license.policy.quotas()[i];
    let mut crossed: Vec<u32> = q
        .alert_thresholds_pct
        .iter()
        .copied()
        .filter(|&pct| used >= q.limit * pct as f64 / 100.0)
        .collect();
    crossed.sort_unstable();
    crossed.dedup();
    QuotaReport {
        meter: q.meter.clone(),
        used,
        limit: q.limit,
        period,
        overage: (used - q.limit).max(0.0),
        overage_policy: q.overage,
        exhausted: used >= q.limit,
        thresholds_crossed_pct: crossed,
    }
}

/// The verdict for `request` against `state` at `now`. `usage[i]` is the
/// usage of quota `i` in its period `periods[i]` (see [`quota_periods`]).
pub fn decide(
    license: &License,
    seats: &SeatTable,
    request: &Request<'_>,
    periods: &[PeriodBounds],
    usage: &[f64],
    now: DateTime<Utc>,
) -> Verdict {
    let now_ms = now.timestamp_millis();
    let seat_report = license.policy.seats.as_ref().map(|p| SeatReport {
        used: seats.used(now_ms),
        max: p.max,
    });
    let quotas = license.policy.quotas();
    debug_assert_eq!(quotas.len(), usage.len());
    debug_assert_eq!(quotas.len(), periods.len());
    let reports: Vec<QuotaReport> = (0..quotas.len().min(usage.len()).min(periods.len()))
        // A meter that allows negative values (credits) can net a period
        // below zero; quota usage is never less than nothing.
        .map(|i| quota_report(license, i, usage[i].max(0.0), periods[i]))
        .collect();
    let blocking = reports
        .iter()
        .position(|r| r.exhausted && r.overage_policy == Overage::Block);
    let shown = match request.meter {
        Some(m) => reports.iter().position(|r| r.meter == m),
        None => blocking.or(if reports.is_empty() { None } else { Some(0) }),
    };
    let mut verdict = Verdict {
        code: Code::Valid,
        detail: String::new(),
        seats: seat_report,
        quota: shown.map(|i| reports[i].clone()),
    };
    let fail = |mut v: Verdict, code: Code, detail: String| {
        v.code = code;
        v.detail = detail;
        v
    };
    let in_grace = match availability(license, now) {
        Ok(g) => g,
        Err((code, detail)) => return fail(verdict, code, detail),
    };
    if let Some((code, detail)) = entitlement_refusal(license, request) {
        return fail(verdict, code, detail);
    }
    if let Some((code, detail)) = seat_refusal(license, seats, request, now_ms) {
        return fail(verdict, code, detail);
    }
    let blocked = match request.meter {
        Some(_) => {
            shown.filter(|&i| reports[i].exhausted && reports[i].overage_policy == Overage::Block)
        }
        None => blocking,
    };
    if let Some(i) = blocked {
        let r = &reports[i];
        let detail = format!(
            "quota of meter `{}` is used up: {} of {}",
            r.meter, r.used, r.limit
        );
        return fail(verdict, Code::QuotaExceeded, detail);
    }
    if in_grace {
        let grace_end = grace_end(
            license,
            license.expires_at.expect("in grace implies an expiry"),
        );
        verdict.code = Code::InGrace;
        verdict.detail = format!(
            "the license expired; grace period until {}",
            grace_end.to_rfc3339()
        );
    } else {
        verdict.detail = "the license is valid".into();
    }
    verdict
}

/// Refuses a request naming entitlements the license lacks.
fn entitlement_refusal(license: &License, request: &Request<'_>) -> Option<(Code, String)> {
    let missing: Vec<&str> = request
        .entitlements
        .iter()
        .filter(|e| license.entitlements.binary_search(e).is_err())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let detail = format!("the license lacks entitlements: {}", missing.join(", "));
    Some((Code::EntitlementMissing, detail))
}

/// On a seat-based license, refuses a request whose fingerprint holds no
/// seat, saying why it cannot have one.
fn seat_refusal(
    license: &License,
    seats: &SeatTable,
    request: &Request<'_>,
    now_ms: i64,
) -> Option<(Code, String)> {
    let policy = license.policy.seats.as_ref()?;
    let Some(fp) = request.fingerprint else {
        let detail = "this license is seat-based: send the machine fingerprint".into();
        return Some((Code::NoSeat, detail));
    };
    if seats.held_by(fp, now_ms).is_some() {
        return None;
    }
    let full = seats.used(now_ms) >= policy.max;
    let (code, detail) = match (full, policy.mode) {
        (false, _) => (
            Code::NoSeat,
            "this fingerprint holds no seat: check one out first",
        ),
        (true, SeatMode::Floating) => (
            Code::SeatLimitExceeded,
            "every seat is taken by other machines",
        ),
        (true, SeatMode::NodeLocked) => (
            Code::FingerprintMismatch,
            "every seat is bound to another machine fingerprint",
        ),
    };
    Some((code, detail.into()))
}

/// A number as JSON: an integer when it is one (so `5`, not `5.0`).
fn number<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

#[derive(Serialize)]
pub struct QuotaClaim<'a> {
    pub meter: &'a str,
    #[serde(serialize_with = "number")]
    pub used: f64,
    #[serde(serialize_with = "number")]
    pub limit: f64,
    pub period_end: Option<String>,
}

/// The claims of a verdict token (see README, "Verdict tokens").
#[derive(Serialize)]
pub struct Claims<'a> {
    pub iss: &'static str,
    pub sub: &'a str,
    pub iat: i64,
    pub exp: i64,
    pub nonce: Option<&'a str>,
    pub valid: bool,
    pub code: &'static str,
    pub entitlements: &'a [String],
    pub quota: Option<QuotaClaim<'a>>,
    pub seats: Option<SeatReport>,
    pub expires_at: Option<String>,
    /// The license's product, so a client checks the verdict is about its
    /// own product's license.
    pub product: Option<&'a str>,
    /// The machine fingerprint the validation asked about.
    pub fingerprint: Option<&'a str>,
    /// The plan version (`pro@2`) whose terms decided the verdict; absent
    /// for a license with an inline policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<&'a str>,
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

impl<'a> Claims<'a> {
    pub fn new(
        license: Option<&'a License>,
        verdict: &'a Verdict,
        asked: (Option<&'a str>, Option<&'a str>),
        now: DateTime<Utc>,
        ttl_s: i64,
    ) -> Claims<'a> {
        let (nonce, fingerprint) = asked;
        let iat = now.timestamp();
        Claims {
            iss: "keymeter",
            sub: license.map(|l| l.id.as_str()).unwrap_or(""),
            iat,
            exp: iat + ttl_s,
            nonce,
            valid: verdict.code.is_valid(),
            code: verdict.code.as_str(),
            entitlements: license.map(|l| l.entitlements.as_slice()).unwrap_or(&[]),
            quota: verdict.quota.as_ref().map(|q| QuotaClaim {
                meter: &q.meter,
                used: q.used,
                limit: q.limit,
                period_end: q.period.end.map(rfc3339),
            }),
            seats: verdict.seats,
            expires_at: license.and_then(|l| l.expires_at).map(rfc3339),
            product: license.map(|l| l.product.as_str()),
            fingerprint,
            plan: license.and_then(|l| l.plan.as_deref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::NewLicense;
    use crate::license::seats::Seat;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn license(v: serde_json::Value) -> License {
        let n: NewLicense = serde_json::from_value(v).unwrap();
        License::create("lic_1".into(), n, t("2026-01-01T00:00:00Z")).unwrap()
    }

    fn at(l: &License, seats: &SeatTable, req: &Request<'_>, usage: &[f64], now: &str) -> Verdict {
        let now = t(now);
        decide(l, seats, req, &quota_periods(l, now), usage, now)
    }

    fn code(l: &License, now: &str) -> Code {
        at(l, &SeatTable::default(), &Request::default(), &[], now).code
    }

    #[test]
    fn expiry_without_grace_denies_exactly_at_expires_at() {
        let l = license(json!({"product": "p", "customer": "c",
            "starts_at": "2026-01-01T00:00:00Z", "expires_at": "2026-02-01T00:00:00Z"}));
        assert_eq!(code(&l, "2026-01-31T23:59:59.999Z"), Code::Valid);
        assert_eq!(code(&l, "2026-02-01T00:00:00Z"), Code::Expired);
    }

    #[test]
    fn grace_keeps_it_valid_until_exactly_the_grace_end() {
        let l = license(json!({"product": "p", "customer": "c",
            "starts_at": "2026-01-01T00:00:00Z", "expires_at": "2026-02-01T00:00:00Z",
            "grace_period_s": 86400}));
        assert_eq!(code(&l, "2026-02-01T00:00:00Z"), Code::InGrace);
        assert!(Code::InGrace.is_valid());
        assert_eq!(code(&l, "2026-02-01T23:59:59.999Z"), Code::InGrace);
        assert_eq!(code(&l, "2026-02-02T00:00:00Z"), Code::Expired);
    }

    #[test]
    fn a_future_start_is_not_yet_valid_until_exactly_the_start() {
        let l =
            license(json!({"product": "p", "customer": "c", "starts_at": "2026-06-01T00:00:00Z"}));
        assert_eq!(code(&l, "2026-05-31T23:59:59.999Z"), Code::NotYetValid);
        assert_eq!(code(&l, "2026-06-01T00:00:00Z"), Code::Valid);
    }

    #[test]
    fn status_wins_over_time_and_entitlements_are_checked() {
        let mut l = license(json!({"product": "p", "customer": "c", "entitlements": ["pro"]}));
        let want = vec!["pro".to_owned(), "sso".to_owned()];
        let req = Request {
            entitlements: &want,
            ..Request::default()
        };
        let v = at(&l, &SeatTable::default(), &req, &[], "2026-03-01T00:00:00Z");
        assert_eq!(v.code, Code::EntitlementMissing);
        assert!(v.detail.contains("sso"));
        l.status = Status::Suspended;
        assert_eq!(code(&l, "2026-03-01T00:00:00Z"), Code::Suspended);
        l.status = Status::Revoked;
        assert_eq!(code(&l, "2026-03-01T00:00:00Z"), Code::Revoked);
    }

    #[test]
    fn seats_need_a_checked_out_fingerprint() {
        let seats_json = |mode: &str| {
            json!({"product": "p", "customer": "c",
            "policy": {"type": "seat", "seats": {"max": 1, "mode": mode, "lease_ttl_s": 60}}})
        };
        for (mode, full_code) in [
            ("floating", Code::SeatLimitExceeded),
            ("node_locked", Code::FingerprintMismatch),
        ] {
            let l = license(seats_json(mode));
            let mut table = SeatTable::default();
            let now = "2026-03-01T00:00:00Z";
            let none = Request::default();
            assert_eq!(at(&l, &table, &none, &[], now).code, Code::NoSeat);
            let a = Request {
                fingerprint: Some("a"),
                ..Request::default()
            };
            assert_eq!(at(&l, &table, &a, &[], now).code, Code::NoSeat);
            table.checked_out(Seat {
                seat_id: "s1".into(),
                fingerprint: "a".into(),
                checked_out_ms: t(now).timestamp_millis(),
                heartbeat_ms: t(now).timestamp_millis(),
                expires_ms: (mode == "floating").then(|| t(now).timestamp_millis() + 60_000),
                token_sha256: None,
            });
            let v = at(&l, &table, &a, &[], now);
            assert_eq!(
                (v.code, v.seats),
                (Code::Valid, Some(SeatReport { used: 1, max: 1 }))
            );
            let b = Request {
                fingerprint: Some("b"),
                ..Request::default()
            };
            assert_eq!(at(&l, &table, &b, &[], now).code, full_code);
        }
    }

    #[test]
    fn quota_blocks_at_the_limit_or_reports_the_overage() {
        let q = |overage: &str| {
            license(json!({"product": "p", "customer": "c",
            "policy": {"type": "usage", "usage": {"quotas": [
                {"meter": "calls", "limit": 100, "period": "month", "overage": overage, "alert_thresholds_pct": [80, 100]}]}}}))
        };
        let none = Request::default();
        let now = "2026-03-05T00:00:00Z";
        let block = q("block");
        let v = at(&block, &SeatTable::default(), &none, &[79.0], now);
        assert_eq!(v.code, Code::Valid);
        assert!(v.quota.as_ref().unwrap().thresholds_crossed_pct.is_empty());
        let v = at(&block, &SeatTable::default(), &none, &[99.5], now);
        assert_eq!(
            (v.code, v.quota.unwrap().thresholds_crossed_pct),
            (Code::Valid, vec![80])
        );
        let v = at(&block, &SeatTable::default(), &none, &[100.0], now);
        assert_eq!(v.code, Code::QuotaExceeded);
        let allow = q("allow");
        let v = at(&allow, &SeatTable::default(), &none, &[130.0], now);
        assert_eq!(v.code, Code::Valid);
        let quota = v.quota.unwrap();
        assert_eq!(
            (quota.overage, quota.thresholds_crossed_pct),
            (30.0, vec![80, 100])
        );
        assert_eq!(quota.period.start, t("2026-03-01T00:00:00Z"));
        assert_eq!(quota.period.end, Some(t("2026-04-01T00:00:00Z")));
    }

    #[test]
    fn claims_carry_the_verdict_with_integral_numbers_as_integers() {
        let l = license(
            json!({"product": "p", "customer": "c", "entitlements": ["pro"],
            "policy": {"type": "usage", "usage": {"quotas": [
                {"meter": "calls", "limit": 100, "period": "lifetime", "overage": "allow"}]}}}),
        );
        let now = t("2026-03-05T00:00:00Z");
        let v = decide(
            &l,
            &SeatTable::default(),
            &Request::default(),
            &quota_periods(&l, now),
            &[12.0],
            now,
        );
        let c = serde_json::to_value(Claims::new(
            Some(&l),
            &v,
            (Some("n1"), Some("m1")),
            now,
            300,
        ))
        .unwrap();
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
        assert_eq!(
            c["quota"],
            json!({"meter": "calls", "used": 12, "limit": 100, "period_end": null})
        );
        assert_eq!(
            (
                c["code"].as_str(),
                c["valid"].as_bool(),
                c["nonce"].as_str()
            ),
            (Some("VALID"), Some(true), Some("n1"))
        );
        assert_eq!(c["entitlements"], json!(["pro"]));
        assert_eq!(
            (c["product"].as_str(), c["fingerprint"].as_str()),
            (Some("p"), Some("m1"))
        );
    }
}
