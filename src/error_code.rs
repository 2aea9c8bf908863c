//! Every error code keymeter can send, with the HTTP status it is sent with
//! and what it means.
//!
//! The codes reach clients as `{"code": "...", "message": "..."}` bodies and
//! as `rejected[].code`, and are kept in quarantine records, Kafka
//! dead-letter headers and metrics labels. [`ErrorCode::as_str`] is that wire
//! string and never changes for an existing code; stored records keep the
//! string, not the enum. `README.md` documents the same table, and
//! `tests/error_codes.rs` checks that it lists exactly [`ErrorCode::ALL`].
//!
//! Validation verdicts (`VALID`, `IN_GRACE`, `QUOTA_EXCEEDED`, …) are a
//! separate set, [`crate::license::Code`]: they are answers sent with `200`,
//! not errors. The verdicts that also refuse seat and admin operations map to
//! the error code with the same string ([`crate::license::Code::error_code`]).

use std::fmt;

use axum::http::StatusCode;

/// Declares [`ErrorCode`] from one row per code: variant, wire string, HTTP
/// status and description, so the list, the strings, the statuses and
/// [`ErrorCode::ALL`] cannot drift apart.
macro_rules! error_codes {
    ($($variant:ident = $wire:literal, $status:ident, $description:literal;)+) => {
        /// A machine-readable error code; see the module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $(
                #[doc = $description]
                $variant,
            )+
        }

        impl ErrorCode {
            /// Every code, in the order of the README table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The wire string, e.g. `MALFORMED_JSON`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)+
                }
            }

            /// The HTTP status an error body with this code is sent with.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)+
                }
            }

            /// One line on what the code means (the README's "Meaning").
            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $description,)+
                }
            }
        }
    };
}

error_codes! {
    MalformedJson = "MALFORMED_JSON", BAD_REQUEST,
        "Body (or a Kafka message value) is not JSON, not UTF-8, or empty";
    InvalidBody = "INVALID_BODY", BAD_REQUEST,
        "Body framed wrongly for its content type, an empty batch, or a body that could not be read";
    InvalidEvent = "INVALID_EVENT", BAD_REQUEST,
        "An event is not a JSON object, or its `data` nests too deeply";
    MissingField = "MISSING_FIELD", BAD_REQUEST,
        "A required attribute (`id`, `source`, `specversion`, `type`, `subject`) is absent";
    InvalidField = "INVALID_FIELD", BAD_REQUEST,
        "An attribute is empty, not a string, too long (> 1024 bytes) or contains NUL, or a Kafka `ce_` header is not UTF-8";
    UnsupportedSpecversion = "UNSUPPORTED_SPECVERSION", BAD_REQUEST,
        "`specversion` is not `\"1.0\"`";
    InvalidTime = "INVALID_TIME", BAD_REQUEST,
        "`time` is not an RFC 3339 timestamp";
    EventTimeOutOfRange = "EVENT_TIME_OUT_OF_RANGE", BAD_REQUEST,
        "`time` is outside the accepted window (`event_time_back`, `event_time_ahead`)";
    ValuePropertyMissing = "VALUE_PROPERTY_MISSING", BAD_REQUEST,
        "A meter of this event type needs `valueProperty`, and `data` lacks it";
    ValueNotNumeric = "VALUE_NOT_NUMERIC", BAD_REQUEST,
        "The value is not a number or numeric string";
    ValueOutOfRange = "VALUE_OUT_OF_RANGE", BAD_REQUEST,
        "The value's magnitude exceeds 10^20";
    ValueNotScalar = "VALUE_NOT_SCALAR", BAD_REQUEST,
        "A `UNIQUE_COUNT` value is null, an object or an array";
    ValueNegative = "VALUE_NEGATIVE", BAD_REQUEST,
        "The value is negative and the meter does not set `allowNegative`";
    SubjectNotOwned = "SUBJECT_NOT_OWNED", FORBIDDEN,
        "The event's subject is a license of another product than the one the API key is bound to";
    InvalidEvents = "INVALID_EVENTS", BAD_REQUEST,
        "Some events of a batch were rejected (see `rejected`); the others were recorded";
    InvalidMeter = "INVALID_METER", BAD_REQUEST,
        "Meter definition invalid (the message names the field)";
    InvalidQuery = "INVALID_QUERY", BAD_REQUEST,
        "Bad query parameter, or `from`/`to` not aligned to the meter's window";
    InvalidWindowSize = "INVALID_WINDOW_SIZE", BAD_REQUEST,
        "Query `windowSize` finer than the meter's";
    InvalidGroupBy = "INVALID_GROUP_BY", BAD_REQUEST,
        "`groupBy` names a key the meter does not have";
    InvalidApiKey = "INVALID_API_KEY", BAD_REQUEST,
        "Bad API-key request (name, scopes, unknown product)";
    InvalidProduct = "INVALID_PRODUCT", BAD_REQUEST,
        "Bad product request (id, name)";
    InvalidLicense = "INVALID_LICENSE", BAD_REQUEST,
        "Bad license or seat-checkout request (body, fields, policy, expiry, license-file `ttl` or fingerprint)";
    InvalidSeat = "INVALID_SEAT", BAD_REQUEST,
        "Seat checkout with an empty or overlong fingerprint, or one with control characters";
    InvalidValidation = "INVALID_VALIDATION", BAD_REQUEST,
        "Bad validation request: not the expected JSON, or a field over 256 bytes";
    Unauthenticated = "UNAUTHENTICATED", UNAUTHORIZED,
        "No `Authorization: Bearer` key, or unknown/revoked key";
    ClientCertRequired = "CLIENT_CERT_REQUIRED", UNAUTHORIZED,
        "Ingest without a verified TLS client certificate while `tls_client_ca` is set";
    SignatureRequired = "SIGNATURE_REQUIRED", UNAUTHORIZED,
        "The API key's product requires signed calls and the call has no `Keymeter-Signature`";
    SignatureMalformed = "SIGNATURE_MALFORMED", UNAUTHORIZED,
        "`Keymeter-Signature` is not `k=…, t=…, n=…, v1=…` (the message names the part)";
    SignatureKeyUnknown = "SIGNATURE_KEY_UNKNOWN", UNAUTHORIZED,
        "The signing secret is unknown, revoked, or another product's";
    SignatureExpired = "SIGNATURE_EXPIRED", UNAUTHORIZED,
        "The signature's `t` is outside `signature_tolerance`, or from before the server's start";
    SignatureInvalid = "SIGNATURE_INVALID", UNAUTHORIZED,
        "The HMAC does not match the request";
    RequestReplayed = "REQUEST_REPLAYED", UNAUTHORIZED,
        "The nonce was already used: a replayed call";
    Forbidden = "FORBIDDEN", FORBIDDEN,
        "The key lacks the route's scope";
    LeaseTokenInvalid = "LEASE_TOKEN_INVALID", FORBIDDEN,
        "The seat's lease token is missing or wrong (heartbeat, release, or checkout for a fingerprint that holds a seat)";
    NotFound = "NOT_FOUND", NOT_FOUND,
        "No such route, API key, product, signing secret or license, or (on delete) meter";
    MeterNotFound = "METER_NOT_FOUND", NOT_FOUND,
        "No such meter (read or query)";
    NoSeat = "NO_SEAT", NOT_FOUND,
        "No such seat, or its lease lapsed (check out again)";
    Conflict = "CONFLICT", CONFLICT,
        "Already exists (meter, key, product, license), changed meanwhile, or the license is already in that status";
    TooManySecrets = "TOO_MANY_SECRETS", CONFLICT,
        "A product already has 5 live signing secrets";
    Revoked = "REVOKED", CONFLICT,
        "The license is revoked: it cannot change, be renewed, hold seats or get a license file";
    Suspended = "SUSPENDED", CONFLICT,
        "The license is suspended: no seats and no license file until it is reinstated";
    NotYetValid = "NOT_YET_VALID", CONFLICT,
        "Seat operation before the license's `starts_at`";
    Expired = "EXPIRED", CONFLICT,
        "Seat operation after the license's expiry and grace period";
    SeatLimitExceeded = "SEAT_LIMIT_EXCEEDED", CONFLICT,
        "All seats of the license are taken";
    NoSeatPolicy = "NO_SEAT_POLICY", CONFLICT,
        "Seat operation on a license without a seat policy";
    PayloadTooLarge = "PAYLOAD_TOO_LARGE", PAYLOAD_TOO_LARGE,
        "Body over `body_bytes_max`";
    BatchTooLarge = "BATCH_TOO_LARGE", PAYLOAD_TOO_LARGE,
        "More events than `request_events_max`";
    UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE", UNSUPPORTED_MEDIA_TYPE,
        "Not one of the three ingest content types";
    QueryTooLarge = "QUERY_TOO_LARGE", UNPROCESSABLE_ENTITY,
        "A meter query's answer would hold more rows than `query_rows_max`, or one subject more than a page's `limit`; the message says how to page or narrow it";
    RateLimited = "RATE_LIMITED", TOO_MANY_REQUESTS,
        "Over a rate limit (validation or seat checkout, per API key or per license); `Retry-After` says when to retry";
    CorruptState = "CORRUPT_STATE", INTERNAL_SERVER_ERROR,
        "A stored counter does not fit its meter (the message names it)";
    Internal = "INTERNAL", INTERNAL_SERVER_ERROR,
        "Unexpected server error; the server log has details";
    DedupCapacity = "DEDUP_CAPACITY", SERVICE_UNAVAILABLE,
        "The dedup index is at `dedup_keys_max`, or the sender's product (or unbound key) holds its `dedup_tenant_share_pct`; nothing was recorded";
    NonceCapacity = "NONCE_CAPACITY", SERVICE_UNAVAILABLE,
        "More signed calls in one tolerance window than `signature_nonces_max`; nothing was recorded";
    EngineUnavailable = "ENGINE_UNAVAILABLE", SERVICE_UNAVAILABLE,
        "The engine has stopped after an error (a failed log write or fsync); the request may or may not have been recorded: resend it after the restart (events are deduplicated by id)";
    EngineFailed = "ENGINE_FAILED", SERVICE_UNAVAILABLE,
        "`/readyz`: the engine has stopped after an error";
    MeterBackfilling = "METER_BACKFILLING", SERVICE_UNAVAILABLE,
        "The meter is still counting the events logged before its creation; `Retry-After` says when to retry";
    PeriodClosed = "PERIOD_CLOSED", UNPROCESSABLE_ENTITY,
        "The event's billing period is closed and older than `billing.restatement_horizon`; it is quarantined, not counted";
    StatementNotFound = "STATEMENT_NOT_FOUND", NOT_FOUND,
        "No billing statement (or version, line or event of it) with that id";
    PeriodNotFound = "PERIOD_NOT_FOUND", NOT_FOUND,
        "Not a billing period of this data directory's cycle (`2026-11` for months, `2026-11-05` for days)";
    InvalidCursor = "INVALID_CURSOR", BAD_REQUEST,
        "A billing feed cursor that is malformed or ahead of every statement issued";
    ValueTooPrecise = "VALUE_TOO_PRECISE", BAD_REQUEST,
        "The value has a non-zero digit past the 9th decimal, which the engine does not keep, and the meter does not set `roundValues`";
    MethodNotAllowed = "METHOD_NOT_ALLOWED", METHOD_NOT_ALLOWED,
        "The route exists but not with this method; `Allow` lists the methods it takes";
    InvalidRequest = "INVALID_REQUEST", BAD_REQUEST,
        "The request could not be read as the route needs it (a path or header the route cannot parse); the message says what";
    InvalidPlan = "INVALID_PLAN", BAD_REQUEST,
        "A plan that is not valid: its name, policy, entitlements or grace, or a plan reference that is not `name` or `name@version`";
    InvalidMigration = "INVALID_MIGRATION", BAD_REQUEST,
        "A migration document that is not valid (selection, target plan, conversion rules), or a step that is not a percentage or count";
}

/// A refusal: a stable code and a message for humans. An event rejected
/// ([`crate::event::Rejection`]) and a license or seat operation refused
/// ([`crate::license::Refusal`]) are both this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coded {
    pub code: ErrorCode,
    pub message: String,
}

impl Coded {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Coded {
        Coded {
            code,
            message: message.into(),
        }
    }
}

/// A metrics label for an outcome: `ok`, or the refusal's code.
pub fn outcome_label<T>(outcome: &Result<T, Coded>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(r) => r.code.as_str(),
    }
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ErrorCode {
    /// The code with this wire string, if there is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metrics labels take the wire string.
impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Compares with the wire string (handy where a test checks what is sent).
impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn wire_strings_are_unique_screaming_snake_case_and_parse_back() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} is listed twice");
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{s}"
            );
            assert_eq!(ErrorCode::parse(s), Some(code));
            assert_eq!(code.to_string(), s);
            assert_eq!(serde_json::to_value(code).unwrap(), s);
        }
        assert_eq!(ErrorCode::parse("NO_SUCH_CODE"), None);
    }

    #[test]
    fn every_code_is_an_error_status_with_a_one_line_description() {
        for &code in ErrorCode::ALL {
            let status = code.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code}: {status}"
            );
            let d = code.description();
            assert!(!d.is_empty() && !d.contains(['\n', '|']), "{code}: {d:?}");
        }
    }

    /// A verdict maps to an error code exactly when one has its string.
    #[test]
    fn verdicts_map_to_the_error_code_with_the_same_string() {
        for verdict in crate::license::Code::ALL {
            assert_eq!(
                verdict.error_code(),
                ErrorCode::parse(verdict.as_str()),
                "{verdict:?}"
            );
        }
    }

    /// Codes whose status is part of a documented contract elsewhere (the
    /// quarantine table, signed calls, `Retry-After`).
    #[test]
    fn statuses_clients_rely_on() {
        use ErrorCode as E;
        let expect = [
            (E::MalformedJson, 400),
            (E::InvalidEvents, 400),
            (E::Unauthenticated, 401),
            (E::RequestReplayed, 401),
            (E::Forbidden, 403),
            (E::LeaseTokenInvalid, 403),
            (E::NoSeat, 404),
            (E::Revoked, 409),
            (E::PayloadTooLarge, 413),
            (E::BatchTooLarge, 413),
            (E::UnsupportedMediaType, 415),
            (E::QueryTooLarge, 422),
            (E::RateLimited, 429),
            (E::NonceCapacity, 503),
            (E::DedupCapacity, 503),
        ];
        for (code, status) in expect {
            assert_eq!(code.status().as_u16(), status, "{code}");
        }
    }
}
