//! The license document (`schemas/license/v1.json`), the requests that create
//! and change one, and status transitions. The secret key is not part of the
//! document: it lives (sealed) beside it, see [`crate::license::book`].

use crate::id::LicenseId;
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::period::Period;
use super::Refusal;
use crate::error_code::ErrorCode;

pub const TEXT_CHARS_MAX: usize = 256;
pub const ENTITLEMENTS_MAX: usize = 256;
pub const QUOTAS_MAX: usize = 16;
pub const METADATA_BYTES_MAX: usize = 16 * 1024;
pub const SEATS_MAX: u32 = 100_000;
pub const LEASE_TTL_S_MIN: u64 = 10;
pub const LEASE_TTL_S_DEFAULT: u64 = 900;
/// Longest grace period, floating-seat lease, or renewal extension: ten
/// years. Every duration in a license document is bounded, so no sum of
/// them with a date can overflow.
pub const DURATION_S_MAX: u64 = 10 * 365 * 86_400;
/// Latest `starts_at` or `expires_at` (and renewal result): the end of year
/// 9999, far inside the range of dates and of milliseconds in an `i64`.
pub const DATE_MS_MAX: i64 = 253_402_300_799_999;
/// Earliest `starts_at` or `expires_at`: the start of year 1.
pub const DATE_MS_MIN: i64 = -62_135_596_800_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "active" => Some(Status::Active),
            "suspended" => Some(Status::Suspended),
            "revoked" => Some(Status::Revoked),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatMode {
    /// A seat is bound to a machine fingerprint until released.
    NodeLocked,
    /// A seat is a lease that lapses unless renewed by heartbeat.
    Floating,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatPolicy {
    pub max: u32,
    pub mode: SeatMode,
    /// Lease length for floating seats; a heartbeat renews it to now + this.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_s: u64,
}

fn default_lease_ttl() -> u64 {
    LEASE_TTL_S_DEFAULT
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overage {
    /// At the limit, validation answers `QUOTA_EXCEEDED`.
    Block,
    /// Validation stays valid and reports the overage (billed later).
    Allow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Meter slug; usage is that meter's value for subject = license id.
    pub meter: String,
    pub limit: f64,
    pub period: Period,
    pub overage: Overage,
    /// Percentages of the limit reported as crossed (e.g. 80, 100).
    #[serde(default)]
    pub alert_thresholds_pct: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsagePolicy {
    pub quotas: Vec<Quota>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyType {
    /// No seat or usage terms: validity, status and entitlements only.
    None,
    Seat,
    Usage,
    Hybrid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(rename = "type")]
    pub ty: PolicyType,
    #[serde(default)]
    pub seats: Option<SeatPolicy>,
    #[serde(default)]
    pub usage: Option<UsagePolicy>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            ty: PolicyType::None,
            seats: None,
            usage: None,
        }
    }
}

impl Policy {
    pub fn quotas(&self) -> &[Quota] {
        self.usage
            .as_ref()
            .map(|u| u.quotas.as_slice())
            .unwrap_or(&[])
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let (needs_seats, needs_usage) = match self.ty {
            PolicyType::None => (false, false),
            PolicyType::Seat => (true, false),
            PolicyType::Usage => (false, true),
            PolicyType::Hybrid => (true, true),
        };
        if needs_seats != self.seats.is_some() {
            return Err(format!(
                "policy.seats must be {} for policy type {:?}",
                if needs_seats { "set" } else { "absent" },
                self.ty
            ));
        }
        if needs_usage != self.usage.is_some() {
            return Err(format!(
                "policy.usage must be {} for policy type {:?}",
                if needs_usage { "set" } else { "absent" },
                self.ty
            ));
        }
        if let Some(s) = &self.seats {
            if !(1..=SEATS_MAX).contains(&s.max) {
                return Err(format!("policy.seats.max must be 1 to {SEATS_MAX}"));
            }
            if s.mode == SeatMode::Floating && s.lease_ttl_s < LEASE_TTL_S_MIN {
                return Err(format!(
                    "policy.seats.lease_ttl_s must be at least {LEASE_TTL_S_MIN}"
                ));
            }
            if s.lease_ttl_s > DURATION_S_MAX {
                return Err(format!(
                    "policy.seats.lease_ttl_s must be at most {DURATION_S_MAX} (10 years)"
                ));
            }
        }
        if let Some(u) = &self.usage {
            if u.quotas.is_empty() || u.quotas.len() > QUOTAS_MAX {
                return Err(format!(
                    "policy.usage.quotas must hold 1 to {QUOTAS_MAX} quotas"
                ));
            }
            let mut meters = BTreeSet::new();
            for q in &u.quotas {
                if !meters.insert(q.meter.as_str()) {
                    return Err(format!("two quotas name meter `{}`", q.meter));
                }
                check_text("quota meter", &q.meter)?;
                if !q.limit.is_finite() || q.limit < 0.0 {
                    return Err(format!("quota `{}`: limit must be a number >= 0", q.meter));
                }
                if q.alert_thresholds_pct.iter().any(|&p| p == 0 || p > 1000) {
                    return Err(format!(
                        "quota `{}`: alert thresholds are percentages from 1 to 1000",
                        q.meter
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A license as created and returned (never with its key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct License {
    pub id: LicenseId,
    pub product: String,
    pub customer: String,
    pub status: Status,
    /// Why it was suspended or revoked.
    #[serde(default)]
    pub status_reason: Option<String>,
    pub starts_at: DateTime<Utc>,
    /// `None`: perpetual.
    pub expires_at: Option<DateTime<Utc>>,
    /// After `expires_at`, valid with code `IN_GRACE` for this long; 0 denies
    /// at `expires_at`.
    pub grace_period_s: u64,
    pub trial: bool,
    /// Feature codes, sorted and unique.
    pub entitlements: Vec<String>,
    pub metadata: Map<String, Value>,
    pub policy: Policy,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The plan version (`pro@2`) whose terms `policy`, `entitlements` and
    /// `grace_period_s` hold; absent for an inline policy (and in documents
    /// written before plans, which therefore keep their bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// `POST /api/v1/licenses`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLicense {
    pub product: String,
    pub customer: String,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// `None`: 0, or the plan's when `plan` is given.
    #[serde(default)]
    pub grace_period_s: Option<u64>,
    #[serde(default)]
    pub trial: bool,
    #[serde(default)]
    pub entitlements: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub policy: Option<Policy>,
    /// A plan version (`pro@2`, or `pro` for its latest) whose terms the
    /// license takes instead of an inline `policy`; the writer resolves it.
    #[serde(default)]
    pub plan: Option<String>,
}

/// `PATCH /api/v1/licenses/{id}`: absent fields stay as they are;
/// `expires_at: null` makes the license perpetual.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseUpdate {
    pub product: Option<String>,
    pub customer: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "double_option")]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub grace_period_s: Option<u64>,
    pub trial: Option<bool>,
    pub entitlements: Option<Vec<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub policy: Option<Policy>,
    /// Move the license onto this plan version (the writer resolves it); an
    /// inline `policy` instead detaches it from its plan.
    pub plan: Option<String>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub(crate) fn check_text(field: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() || v.chars().count() > TEXT_CHARS_MAX || v.chars().any(char::is_control)
    {
        return Err(format!(
            "{field} must be 1 to {TEXT_CHARS_MAX} characters without control characters"
        ));
    }
    Ok(())
}

pub(crate) fn normalise_entitlements(mut e: Vec<String>) -> Result<Vec<String>, String> {
    if e.len() > ENTITLEMENTS_MAX {
        return Err(format!("at most {ENTITLEMENTS_MAX} entitlements"));
    }
    for x in &e {
        check_text("an entitlement", x)?;
    }
    e.sort();
    e.dedup();
    Ok(e)
}

fn invalid(message: String) -> Refusal {
    Refusal::new(ErrorCode::InvalidLicense, message)
}

impl License {
    /// Checks the parts that must hold together.
    pub fn validate(&self) -> Result<(), Refusal> {
        check_text("product", &self.product).map_err(invalid)?;
        check_text("customer", &self.customer).map_err(invalid)?;
        for (name, t) in [
            ("starts_at", Some(self.starts_at)),
            ("expires_at", self.expires_at),
        ] {
            let ms = t.map_or(0, |t| t.timestamp_millis());
            if !(DATE_MS_MIN..=DATE_MS_MAX).contains(&ms) {
                return Err(invalid(format!("{name} must be in the years 1 to 9999")));
            }
        }
        if let Some(e) = self.expires_at {
            if e <= self.starts_at {
                return Err(invalid("expires_at must be after starts_at".into()));
            }
        }
        if self.grace_period_s > DURATION_S_MAX {
            return Err(invalid("grace_period_s must be at most 10 years".into()));
        }
        let meta = serde_json::to_vec(&self.metadata).expect("metadata serializes");
        if meta.len() > METADATA_BYTES_MAX {
            return Err(invalid(format!(
                "metadata must be at most {METADATA_BYTES_MAX} bytes of JSON"
            )));
        }
        self.policy.validate().map_err(invalid)
    }

    /// A new, active license from a create request.
    pub fn create(id: LicenseId, new: NewLicense, now: DateTime<Utc>) -> Result<License, Refusal> {
        if new.plan.is_some() && new.policy.is_some() {
            return Err(invalid("give a `plan` or a `policy`, not both".into()));
        }
        let license = License {
            id,
            product: new.product,
            customer: new.customer,
            status: Status::Active,
            status_reason: None,
            starts_at: new.starts_at.unwrap_or(now),
            expires_at: new.expires_at,
            grace_period_s: new.grace_period_s.unwrap_or(0),
            trial: new.trial,
            entitlements: normalise_entitlements(new.entitlements).map_err(invalid)?,
            metadata: new.metadata,
            policy: new.policy.unwrap_or_default(),
            created_at: now,
            updated_at: now,
            plan: new.plan,
        };
        license.validate()?;
        Ok(license)
    }

    /// This license with `update` applied. A revoked license cannot change.
    pub fn updated(&self, update: LicenseUpdate, now: DateTime<Utc>) -> Result<License, Refusal> {
        if self.status == Status::Revoked {
            return Err(Refusal::new(
                ErrorCode::Revoked,
                "a revoked license cannot change",
            ));
        }
        let mut l = self.clone();
        if let Some(v) = update.product {
            l.product = v;
        }
        if let Some(v) = update.customer {
            l.customer = v;
        }
        if let Some(v) = update.starts_at {
            l.starts_at = v;
        }
        if let Some(v) = update.expires_at {
            l.expires_at = v;
        }
        if let Some(v) = update.grace_period_s {
            l.grace_period_s = v;
        }
        if let Some(v) = update.trial {
            l.trial = v;
        }
        if let Some(v) = update.entitlements {
            l.entitlements = normalise_entitlements(v).map_err(invalid)?;
        }
        if let Some(v) = update.metadata {
            l.metadata = v;
        }
        if update.plan.is_some() && update.policy.is_some() {
            return Err(invalid("give a `plan` or a `policy`, not both".into()));
        }
        if let Some(v) = update.policy {
            l.policy = v;
            l.plan = None;
        }
        if let Some(v) = update.plan {
            l.plan = Some(v);
        }
        l.updated_at = now;
        l.validate()?;
        Ok(l)
    }
}

/// An admin status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    Suspend,
    Reinstate,
    Revoke,
}

/// Whether `action` may apply to a license in `from`: suspend only an active
/// license, reinstate only a suspended one, revoke anything not yet revoked
/// (revocation is final).
pub fn transition(from: Status, action: StatusAction) -> Result<Status, Refusal> {
    match (from, action) {
        (Status::Revoked, _) => Err(Refusal::new(ErrorCode::Revoked, "the license is revoked")),
        (Status::Active, StatusAction::Suspend) => Ok(Status::Suspended),
        (Status::Suspended, StatusAction::Reinstate) => Ok(Status::Active),
        (_, StatusAction::Revoke) => Ok(Status::Revoked),
        (Status::Suspended, StatusAction::Suspend) => Err(Refusal::new(
            ErrorCode::Conflict,
            "the license is already suspended",
        )),
        (Status::Active, StatusAction::Reinstate) => Err(Refusal::new(
            ErrorCode::Conflict,
            "the license is not suspended",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new(v: Value) -> Result<License, Refusal> {
        let n: NewLicense = serde_json::from_value(v).unwrap();
        License::create("lic_1".into(), n, Utc::now())
    }

    #[test]
    fn policy_type_must_match_its_parts() {
        assert!(new(json!({"product": "p", "customer": "c"})).is_ok());
        let seats = json!({"max": 3, "mode": "floating"});
        let usage =
            json!({"quotas": [{"meter": "m", "limit": 5, "period": "month", "overage": "block"}]});
        assert!(new(
            json!({"product": "p", "customer": "c", "policy": {"type": "seat", "seats": seats}})
        )
        .is_ok());
        assert!(new(
            json!({"product": "p", "customer": "c", "policy": {"type": "hybrid", "seats": seats}})
        )
        .is_err());
        assert!(new(json!({"product": "p", "customer": "c", "policy": {"type": "hybrid", "seats": seats, "usage": usage}})).is_ok());
        assert!(new(json!({"product": "p", "customer": "c", "policy": {"type": "usage", "seats": seats, "usage": usage}})).is_err());
        let l = new(
            json!({"product": "p", "customer": "c", "policy": {"type": "seat", "seats": seats}}),
        )
        .unwrap();
        assert_eq!(l.policy.seats.unwrap().lease_ttl_s, LEASE_TTL_S_DEFAULT);
    }

    #[test]
    fn expiry_must_follow_start_and_entitlements_are_normalised() {
        assert!(new(json!({"product": "p", "customer": "c", "starts_at": "2026-01-02T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"})).is_err());
        let l =
            new(json!({"product": "p", "customer": "c", "entitlements": ["b", "a", "b"]})).unwrap();
        assert_eq!(l.entitlements, vec!["a", "b"]);
        assert!(new(json!({"product": " ", "customer": "c"})).is_err());
    }

    #[test]
    fn status_transitions_end_at_revoked() {
        use StatusAction::*;
        assert_eq!(
            transition(Status::Active, Suspend).unwrap(),
            Status::Suspended
        );
        assert_eq!(
            transition(Status::Suspended, Reinstate).unwrap(),
            Status::Active
        );
        assert_eq!(
            transition(Status::Suspended, Revoke).unwrap(),
            Status::Revoked
        );
        assert!(transition(Status::Active, Reinstate).is_err());
        for a in [Suspend, Reinstate, Revoke] {
            assert_eq!(transition(Status::Revoked, a).unwrap_err().code, "REVOKED");
        }
    }

    #[test]
    fn update_keeps_absent_fields_and_null_expiry_means_perpetual() {
        let l = new(json!({"product": "p", "customer": "c", "expires_at": "2099-01-01T00:00:00Z"}))
            .unwrap();
        let u: LicenseUpdate = serde_json::from_value(json!({"customer": "d"})).unwrap();
        let l2 = l.updated(u, Utc::now()).unwrap();
        assert_eq!((l2.product.as_str(), l2.customer.as_str()), ("p", "d"));
        assert!(l2.expires_at.is_some());
        let u: LicenseUpdate = serde_json::from_value(json!({"expires_at": null})).unwrap();
        assert!(l2.updated(u, Utc::now()).unwrap().expires_at.is_none());
    }
}
