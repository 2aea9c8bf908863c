//! What callers send the writer and what comes back: one request type per
//! command, each answered through one generic [`EngineHandle::send`].
//! How the writer decides each request lives in [`super::decide`].

use crate::event::{Decoded, Rejection};
use crate::id::{ApiKeyId, LicenseId, MeterSlug, ProductId, SeatId};
use crate::license::model::{LicenseUpdate, StatusAction};
use crate::license::License;
pub use crate::license::Renewal;
use crate::log::Seq;
use crate::meter::MeterDef;
use crate::projection::ProjectionError;
use crate::record::{ApiKeyRecord, Audit, LicenseFileIssue, LicenseSecret, OffsetDelta};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(Rejection),
    /// The engine stopped (a log write or fsync failed, or it is shutting down) before the
    /// request was known to be durable. It may or may not be in the log: after a failed
    /// fsync the written bytes can still reach the disk.
    #[error(
        "the engine has stopped; the request may or may not have been recorded: resend it \
         after the restart (events are deduplicated by id)"
    )]
    Stopped,
    #[error("{0}")]
    Overloaded(String),
}

/// Why the engine could not start, or (through [`StartError::Stage`]) why
/// one of its stages stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("event log: {0}")]
    Log(#[from] crate::log::LogError),
    #[error("projections: {0}")]
    Projection(#[from] ProjectionError),
    #[error("keys: {0}")]
    Keys(String),
    #[error("cannot start the {name} thread: {source}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{0}")]
    Other(String),
}

/// Why a running stage (writer, syncer, projector) stopped; the engine is
/// then failed (`/readyz`, and `serve` exits).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("event log: {0}")]
    Log(#[from] crate::log::LogError),
    #[error("projections: {0}")]
    Projection(#[from] ProjectionError),
    #[error("the {0} stopped")]
    PeerStopped(&'static str),
    #[error("the {0} panicked")]
    Panicked(&'static str),
}

/// What became of each event of one ingest request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: Vec<RejectedItem>,
    /// Highest log sequence number written for this request; for
    /// duplicates, the position every original is logged at or before (0
    /// only when nothing was written or found).
    pub last_seq: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedItem {
    pub index: u32,
    pub code: crate::error_code::ErrorCode,
    pub message: String,
}

/// Where ingested events came from; a Kafka batch carries the offset range
/// it covers (written in the same log batch) and each message's offset (for
/// the quarantine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `tenant`: the product the caller's key is bound to
    /// (`product:<id>`), or the unbound key (`key:<id>`).
    Http { tenant: std::sync::Arc<str> },
    Kafka {
        delta: OffsetDelta,
        /// Per item: its offset in `delta`'s partition.
        offsets: Vec<i64>,
    },
}

impl Origin {
    pub fn label(&self) -> &'static str {
        match self {
            Origin::Http { .. } => "http",
            Origin::Kafka { .. } => "kafka",
        }
    }
}

/// Events to count. A Kafka batch is refused (`Conflict`) unless
/// `delta.from` is where the partition's stored position ends (or the
/// partition has none yet).
pub struct Ingest {
    pub items: Vec<Decoded>,
    pub received_ms: i64,
    pub origin: Origin,
}

/// A whole body that could not be read as events; it is quarantined.
pub struct RejectBody {
    pub rejection: Rejection,
    pub raw: Vec<u8>,
    pub received_ms: i64,
    pub origin: &'static str,
}

pub struct CreateMeter {
    pub def: MeterDef,
    pub audit: Audit,
}

/// Changes a meter's name, description and metadata (OpenMeter's update).
pub struct UpdateMeter {
    pub slug: MeterSlug,
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
    pub audit: Audit,
}

pub struct DeleteMeter {
    pub slug: MeterSlug,
    pub audit: Audit,
}

/// Creates an API key; with `product`, binds it to that product in the
/// same batch.
pub struct CreateApiKey {
    pub key: ApiKeyRecord,
    pub product: Option<ProductId>,
    pub audit: Audit,
}

pub struct RevokeApiKey {
    pub id: ApiKeyId,
    pub audit: Audit,
}

/// The next offset of every source partition, after every request queued
/// before this one.
pub struct SourcePositions;

pub struct CreateLicense {
    pub license: Box<License>,
    pub secret: LicenseSecret,
    pub audit: Audit,
}

pub struct UpdateLicense {
    pub id: LicenseId,
    pub update: Box<LicenseUpdate>,
    pub audit: Audit,
}

/// A new version of a plan (the first if the name is new).
pub struct CreatePlan {
    pub plan: Box<crate::license::plan::NewPlan>,
    pub audit: Audit,
}

/// A new migration, in `draft`.
pub struct CreateMigration {
    pub id: String,
    pub spec: Box<crate::license::migration::MigrationSpec>,
    pub audit: Audit,
}

/// Keeps what a dry run saw of the selection, to compare steps against.
pub struct MarkDryRun {
    pub id: String,
    pub mark: crate::license::migration::SelectionMark,
    pub audit: Audit,
}

/// Migrates the next at most `chunk_max` licenses of a step: a new step
/// of `size` (`step: None`), or the rest of step `step`.
pub struct ApplyChunk {
    pub id: String,
    pub size: crate::license::migration::StepSize,
    pub step: Option<u32>,
    pub chunk_max: usize,
    pub audit: Audit,
}

/// Restores the next at most `chunk_max` licenses migrated in steps
/// `from_step` and later: a new rollback, or (`continuing`) the last one.
pub struct RollbackChunk {
    pub id: String,
    pub from_step: u32,
    pub continuing: bool,
    pub chunk_max: usize,
    pub audit: Audit,
}

/// Freezes a migration: rollback is refused afterwards.
pub struct CompleteMigration {
    pub id: String,
    pub audit: Audit,
}

pub struct ChangeLicenseStatus {
    pub id: LicenseId,
    pub action: StatusAction,
    pub reason: Option<String>,
    pub audit: Audit,
}

pub struct RenewLicense {
    pub id: LicenseId,
    pub renewal: Renewal,
    pub audit: Audit,
}

/// Takes a seat for `fingerprint`, or returns (and renews) the one it
/// holds. Linearizable: only the writer allocates seats. `new_seat_id` names
/// the seat if one is taken (chosen by the caller, so deciding stays pure).
/// `token_sha256` is the SHA-256 of the lease token the caller proposed (or
/// the handler made for it): a new seat keeps it, and a seat the
/// fingerprint already holds is returned only for the same token.
pub struct CheckoutSeat {
    pub license_id: LicenseId,
    pub fingerprint: String,
    pub new_seat_id: SeatId,
    pub token_sha256: [u8; 32],
    pub audit: Audit,
}

/// Refused with `LEASE_TOKEN_INVALID` unless `token_sha256` opens the seat.
pub struct HeartbeatSeat {
    pub license_id: LicenseId,
    pub seat_id: SeatId,
    pub token_sha256: Option<[u8; 32]>,
}

pub struct ReleaseSeat {
    pub license_id: LicenseId,
    pub seat_id: SeatId,
    pub by: SeatReleaser,
    pub audit: Audit,
}

/// Who releases a seat: its holder (with the lease token's SHA-256, if
/// presented), or an admin, who may free any seat (a machine that lost
/// its token, a node-locked seat of a retired machine).
pub enum SeatReleaser {
    Holder { token_sha256: Option<[u8; 32]> },
    Admin,
}

/// Reclaim lapsed seat leases (sent periodically by a ticker).
pub struct SweepLeases;

/// Record that a license file was issued.
pub struct RecordLicenseFile {
    pub issue: LicenseFileIssue,
    pub audit: Audit,
}

/// Create (`version` 1) or change a product; refused unless `version` is one
/// more than the stored one.
pub struct SaveProduct {
    pub product: Box<crate::product::Product>,
    pub audit: Audit,
}

/// Changes a stored product. Decided against the writer's copy, so
/// concurrent changes apply one after the other and none is lost.
pub struct ChangeProduct {
    pub id: ProductId,
    pub change: ProductChange,
    pub audit: Audit,
}

pub enum ProductChange {
    Edit {
        name: Option<String>,
        require_signatures: Option<bool>,
    },
    /// A new signing secret, sealed by the caller (the writer holds no keys).
    AddSecret(crate::product::SigningSecret),
    RevokeSecret {
        secret_id: String,
    },
}

/// A seat as a checkout or heartbeat leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatLease {
    pub seat_id: SeatId,
    pub fingerprint: String,
    /// Lease end; `None` for a node-locked seat.
    pub expires_ms: Option<i64>,
    /// A seat was taken by this checkout (not an existing one returned).
    pub new: bool,
    /// The seat holds a lease token (the one presented); `false` only for
    /// a seat taken before lease tokens existed.
    pub tokened: bool,
}
