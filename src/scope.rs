//! API key scopes: plain data, kept in the log's key records
//! ([`crate::record::ApiKeyRecord`]). What a scope lets a key do is decided
//! in [`crate::api_keys`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send usage events.
    Ingest,
    /// Read meters, usage and quarantine.
    Read,
    /// Everything, including managing meters and API keys.
    Admin,
    /// The client-facing license calls only: validate, and check out,
    /// heartbeat and release seats. What an end-user application holds:
    /// it cannot send usage. (Last, so the stored positions of the others
    /// stay as they are.)
    Validate,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "ingest" => Some(Scope::Ingest),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            "validate" => Some(Scope::Validate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
            Scope::Validate => "validate",
        }
    }
}
