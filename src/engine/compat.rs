//! Named shorthands over [`EngineHandle::send`] for callers not yet moved to it.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::protocol::*;
use crate::event::{Decoded, Rejection};
use crate::license::model::{LicenseUpdate, StatusAction};
use crate::license::{License, Refusal};
use crate::log::Seq;
use crate::meter::MeterDef;
use crate::record::{ApiKeyRecord, Audit, LicenseSecret, OffsetDelta};

impl EngineHandle {
    pub async fn ingest(
        &self,
        items: Vec<Decoded>,
        received_ms: i64,
        _origin: &'static str,
    ) -> Result<IngestOutcome, EngineError> {
        self.send(Ingest {
            items,
            received_ms,
            origin: Origin::Http,
        })
        .await
    }
    pub async fn reject_body(
        &self,
        rejection: Rejection,
        raw: Vec<u8>,
        received_ms: i64,
        origin: &'static str,
    ) -> Result<Seq, EngineError> {
        self.send(RejectBody {
            rejection,
            raw,
            received_ms,
            origin,
        })
        .await
    }
    pub async fn create_meter(&self, def: MeterDef, audit: Audit) -> Result<MeterDef, EngineError> {
        self.send(CreateMeter { def, audit }).await
    }
    pub async fn delete_meter(&self, slug: String, audit: Audit) -> Result<(), EngineError> {
        self.send(DeleteMeter { slug, audit }).await
    }
    pub async fn create_api_key(
        &self,
        key: ApiKeyRecord,
        audit: Audit,
    ) -> Result<ApiKeyRecord, EngineError> {
        self.send(CreateApiKey { key, audit }).await
    }
    pub async fn ingest_source(
        &self,
        items: Vec<Decoded>,
        offsets: Vec<i64>,
        delta: OffsetDelta,
        received_ms: i64,
    ) -> Result<IngestOutcome, EngineError> {
        self.send(Ingest {
            items,
            received_ms,
            origin: Origin::Kafka { delta, offsets },
        })
        .await
    }
    pub async fn submit_source(
        &self,
        items: Vec<Decoded>,
        offsets: Vec<i64>,
        delta: OffsetDelta,
        received_ms: i64,
    ) -> Result<oneshot::Receiver<Result<IngestOutcome, EngineError>>, EngineError> {
        self.submit(Ingest {
            items,
            received_ms,
            origin: Origin::Kafka { delta, offsets },
        })
        .await
    }
    pub async fn source_positions(&self) -> Result<HashMap<(String, i32), i64>, EngineError> {
        self.send(SourcePositions).await
    }
    pub async fn record_license_file(
        &self,
        issue: crate::record::LicenseFileIssue,
        audit: Audit,
    ) -> Result<(), EngineError> {
        self.send(RecordLicenseFile { issue, audit }).await
    }
    pub async fn save_product(
        &self,
        product: crate::product::Product,
        audit: Audit,
    ) -> Result<crate::product::Product, EngineError> {
        self.send(SaveProduct {
            product: Box::new(product),
            audit,
        })
        .await
    }
    pub async fn revoke_api_key(&self, id: String, audit: Audit) -> Result<(), EngineError> {
        self.send(RevokeApiKey { id, audit }).await
    }
    pub async fn create_license(
        &self,
        license: License,
        secret: LicenseSecret,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.send(CreateLicense {
            license: Box::new(license),
            secret,
            audit,
        })
        .await
    }
    pub async fn update_license(
        &self,
        id: String,
        update: LicenseUpdate,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.send(UpdateLicense {
            id,
            update: Box::new(update),
            audit,
        })
        .await
    }
    pub async fn change_license_status(
        &self,
        id: String,
        action: StatusAction,
        reason: Option<String>,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.send(ChangeLicenseStatus {
            id,
            action,
            reason,
            audit,
        })
        .await
    }
    pub async fn renew_license(
        &self,
        id: String,
        renewal: Renewal,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.send(RenewLicense { id, renewal, audit }).await
    }
    pub async fn checkout_seat(
        &self,
        license_id: String,
        fingerprint: String,
        audit: Audit,
    ) -> Result<Result<SeatLease, Refusal>, EngineError> {
        let new_seat_id = format!("seat_{}", crate::auth::generate_id());
        self.send(CheckoutSeat {
            license_id,
            fingerprint,
            new_seat_id,
            audit,
        })
        .await
    }
    pub async fn heartbeat_seat(
        &self,
        license_id: String,
        seat_id: String,
    ) -> Result<Result<SeatLease, Refusal>, EngineError> {
        self.send(HeartbeatSeat {
            license_id,
            seat_id,
        })
        .await
    }
    pub async fn release_seat(
        &self,
        license_id: String,
        seat_id: String,
        audit: Audit,
    ) -> Result<Result<(), Refusal>, EngineError> {
        self.send(ReleaseSeat {
            license_id,
            seat_id,
            audit,
        })
        .await
    }
}
