//! Admin decisions on products, API keys and meters. Each checks the request
//! against the writer's state, turns it into records, and applies them to
//! the state before the next request.

use super::{stamped, Request, WriterState};
use crate::engine::batch::Batch;
use crate::engine::protocol::{
    ChangeProduct, CreateApiKey, CreateMeter, DeleteMeter, EngineError, ProductChange,
    RevokeApiKey, SaveProduct, UpdateMeter,
};
use crate::error_code::ErrorCode;
use crate::event::{fmt_ms, Rejection};
use crate::meter::MeterDef;
use crate::product::{Product, LIVE_SECRETS_MAX};
use crate::record::{ApiKeyRecord, AsJson, Audit, Record};

impl Request for SaveProduct {
    type Output = Product;

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<Product, EngineError> {
        let mut product = *self.product;
        let stored = state.products.get(product.id.as_str()).map(|p| p.version);
        if product.version != stored.unwrap_or(0) + 1 {
            return Err(match stored {
                None => EngineError::NotFound(format!("product `{}` does not exist", product.id)),
                Some(_) if product.version == 1 => {
                    EngineError::Conflict(format!("product `{}` already exists", product.id))
                }
                Some(v) => EngineError::Conflict(format!(
                    "product `{}` changed meanwhile (version {v}); read it and retry",
                    product.id
                )),
            });
        }
        if product.version == 1 {
            product.created_ms = now_ms;
        }
        Ok(state.save_product(product, stamped(self.audit, now_ms), batch))
    }
}

impl Request for ChangeProduct {
    type Output = Product;

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<Product, EngineError> {
        let id = &self.id;
        let Some(stored) = state.products.get(id.as_str()) else {
            return Err(EngineError::NotFound(format!(
                "product `{id}` does not exist"
            )));
        };
        let mut product = stored.clone();
        match self.change {
            ProductChange::Edit {
                name,
                require_signatures,
            } => {
                product.name = name.or(product.name);
                product.require_signatures =
                    require_signatures.unwrap_or(product.require_signatures);
            }
            ProductChange::AddSecret(secret) => {
                if product.live_secrets().count() >= LIVE_SECRETS_MAX {
                    let msg = format!(
                        "product `{id}` has {LIVE_SECRETS_MAX} live signing secrets; revoke one first"
                    );
                    return Err(EngineError::Invalid(Rejection::new(
                        ErrorCode::TooManySecrets,
                        msg,
                    )));
                }
                product.signing_secrets.push(secret);
            }
            ProductChange::RevokeSecret { secret_id } => {
                let Some(secret) = product
                    .signing_secrets
                    .iter_mut()
                    .find(|s| s.id == secret_id && s.revoked_ms.is_none())
                else {
                    let msg = format!("product `{id}` has no live signing secret `{secret_id}`");
                    return Err(EngineError::Invalid(Rejection::new(
                        ErrorCode::NotFound,
                        msg,
                    )));
                };
                secret.revoked_ms = Some(now_ms);
            }
        }
        product.version += 1;
        Ok(state.save_product(product, stamped(self.audit, now_ms), batch))
    }
}

impl Request for CreateApiKey {
    type Output = ApiKeyRecord;

    fn records_max(&self) -> usize {
        2
    }

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<ApiKeyRecord, EngineError> {
        if state.key_ids.contains(self.key.id.as_str()) {
            let msg = format!("API key id `{}` already exists", self.key.id);
            return Err(EngineError::Conflict(msg));
        }
        // Bound in the same batch: a key never exists unbound while its
        // product expects it to be bound.
        if let Some(product_id) = &self.product {
            let Some(product) = state.products.get(product_id.as_str()) else {
                let msg = format!("product `{product_id}` does not exist");
                return Err(EngineError::Invalid(Rejection::new(
                    ErrorCode::InvalidApiKey,
                    msg,
                )));
            };
            let mut product = product.clone();
            product.api_keys.push(self.key.id.to_string());
            product.version += 1;
            state.save_product(product, stamped(self.audit.clone(), now_ms), batch);
        }
        state.key_ids.insert(self.key.id.clone());
        let record = Record::ApiKeyCreated {
            key: self.key.clone(),
            audit: stamped(self.audit, now_ms),
        };
        batch.push(record, None);
        Ok(self.key)
    }
}

impl Request for RevokeApiKey {
    type Output = ();

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<(), EngineError> {
        if !state.key_ids.remove(&self.id) {
            let msg = format!("API key `{}` does not exist", self.id);
            return Err(EngineError::NotFound(msg));
        }
        let audit = stamped(self.audit, now_ms);
        batch.push(Record::ApiKeyRevoked { id: self.id, audit }, None);
        Ok(())
    }
}

impl Request for CreateMeter {
    type Output = MeterDef;

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<MeterDef, EngineError> {
        let mut def = self.def;
        def.created_at = Some(fmt_ms(now_ms));
        def.updated_at = def.created_at.clone();
        if state.meters.get(&def.slug).is_some() {
            let msg = format!("meter `{}` already exists", def.slug);
            return Err(EngineError::Conflict(msg));
        }
        let compiled = def
            .validate()
            .map_err(|e| EngineError::Invalid(Rejection::new(e.code(), e.to_string())))?;
        state.meters.insert(compiled);
        let record = Record::MeterCreated {
            meter: AsJson::new(def.clone()),
            audit: stamped(self.audit, now_ms),
        };
        batch.push(record, None);
        Ok(def)
    }
}

impl Request for UpdateMeter {
    type Output = MeterDef;

    /// Only the descriptive fields change, so the meter's counters and
    /// everything folded stay as they are.
    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<MeterDef, EngineError> {
        let Some(current) = state.meters.get(&self.slug) else {
            let msg = format!("meter `{}` does not exist", self.slug);
            return Err(EngineError::NotFound(msg));
        };
        let mut def = current.def().clone();
        def.name = self.name.or(def.name);
        def.description = self.description.or(def.description);
        def.metadata = self.metadata.unwrap_or(def.metadata);
        def.updated_at = Some(fmt_ms(now_ms));
        let compiled = def
            .validate()
            .map_err(|e| EngineError::Invalid(Rejection::new(e.code(), e.to_string())))?;
        state.meters.insert(compiled);
        let record = Record::MeterUpdated {
            meter: AsJson::new(def.clone()),
            audit: stamped(self.audit, now_ms),
        };
        batch.push(record, None);
        Ok(def)
    }
}

impl Request for DeleteMeter {
    type Output = ();

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<(), EngineError> {
        if state.meters.remove(&self.slug).is_none() {
            let msg = format!("meter `{}` does not exist", self.slug);
            return Err(EngineError::NotFound(msg));
        }
        let audit = stamped(self.audit, now_ms);
        batch.push(
            Record::MeterDeleted {
                slug: self.slug,
                audit,
            },
            None,
        );
        Ok(())
    }
}

impl WriterState {
    /// Logs a product document and keeps it as the writer's current one.
    fn save_product(&mut self, mut product: Product, audit: Audit, batch: &mut Batch) -> Product {
        product.updated_ms = audit.at_ms;
        self.products.insert(product.id.clone(), product.clone());
        let record = Record::ProductSaved {
            product: AsJson::new(product.clone()),
            audit,
        };
        batch.push(record, None);
        product
    }
}
