//! One configuration: defaults that run embedded, overridden by a TOML file,
//! overridden by `KEYMETER_*` environment variables and command-line flags
//! (clap reads both; a flag beats its variable). [`ConfigArgs`] declares
//! those flags and variables and turns them into a [`Config`]; offline
//! commands take only [`DataArgs`] or [`KeyedDataArgs`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::event::TimeWindow;
use crate::log::{LogDir, Storage};

mod args;
mod billing;

pub use args::{scrub_secret_variables, ConfigArgs, DataArgs, KeyedDataArgs};
pub use billing::BillingConfig;

/// The largest `query_rows_max`: an answer of ten million rows is already
/// gigabytes of JSON.
pub const QUERY_ROWS_MAX_LIMIT: usize = 10_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the log (`log/`) and projections (`state/`) live.
    pub data_dir: PathBuf,
    /// HTTP API address.
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) for HTTPS on `listen`. Set together
    /// with `tls_key`; without both the API is plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): client certificates signed by them are
    /// verified in the handshake, and ingest then requires one.
    pub tls_client_ca: Option<PathBuf>,
    /// Longest a client may take to complete its TLS handshake after
    /// connecting; then the connection is closed. Other clients are never
    /// held up by a slow one.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Longest a client may take to send a request's headers; then its
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body; then the
    /// request fails.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most connections served at once; accepting waits for one to close.
    pub connections_max: usize,
    /// At shutdown, how long open requests may still finish before their
    /// connections are closed and the engine drains.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// When set, `/metrics` is served here without authentication and removed
    /// from the API listener. Otherwise it is on the API listener and needs
    /// the `read` scope.
    pub metrics_listen: Option<SocketAddr>,
    /// Key to create as the first admin key when none exists yet.
    pub bootstrap_admin_key: Option<crate::crypto::SecretString>,
    /// Create an admin key (the bootstrap key, or a generated one) even
    /// though the log held keys that were all revoked. A command-line flag
    /// only, so a setting left in place cannot bring a revoked admin back.
    #[serde(skip)]
    pub recover_admin_key: bool,
    /// How far before its receive time an event may be.
    #[serde(with = "humantime_serde")]
    pub event_time_back: Duration,
    /// How far after its receive time an event may be.
    #[serde(with = "humantime_serde")]
    pub event_time_ahead: Duration,
    /// Largest accepted request body.
    pub body_bytes_max: usize,
    /// Most events in one ingest request.
    pub request_events_max: usize,
    /// Most rows in one meter query answer (or page): a query past it is
    /// refused before its rows fill memory, and a page's `limit` may not
    /// exceed it.
    pub query_rows_max: usize,
    /// Memory for sled's page cache of the projection store, in MiB. The
    /// counters of live subjects live there, not in the process's own
    /// maps, so this (not the number of subjects) bounds most of the
    /// store's resident memory.
    pub store_cache_mb: usize,
    /// Most records in one log batch (group commit).
    pub batch_records_max: usize,
    /// Requests queued for the writer before callers wait (backpressure).
    pub writer_queue_max: usize,
    /// Size at which the log rolls to a new segment.
    pub segment_bytes_max: u64,
    /// Most event identities the dedup index holds (24–35 bytes each);
    /// at the limit ingest is refused with 503 rather than forgetting
    /// identities early.
    pub dedup_keys_max: usize,
    /// The most of `dedup_keys_max` one tenant (the product an API key is
    /// bound to, or an unbound key) may hold, in percent: so that one key
    /// cannot fill the index and stop everyone's ingest. Kafka sources are
    /// bounded by the whole index only.
    pub dedup_tenant_share_pct: u8,
    /// File holding the master key (base64 text or 32 raw bytes) that seals
    /// license keys and derives the signing key. Default:
    /// `<data_dir>.master-key`, generated on first start. Never inside the
    /// data directory.
    pub master_key_file: Option<PathBuf>,
    /// The master key itself (base64), from `KEYMETER_MASTER_KEY` only (never
    /// from the file or a flag); wins over `master_key_file`.
    #[serde(skip)]
    pub master_key: Option<crate::crypto::SecretString>,
    /// Lifetime of a signed validation verdict (`exp - iat` of the token).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// TTL of an offline license file when the request names none.
    #[serde(with = "humantime_serde")]
    pub license_file_ttl: Duration,
    /// Longest TTL a license file may be issued with.
    #[serde(with = "humantime_serde")]
    pub license_file_ttl_max: Duration,
    /// How far a signed call's timestamp may be from the server clock.
    #[serde(with = "humantime_serde")]
    pub signature_tolerance: Duration,
    /// Most nonces of signed calls remembered within one tolerance window,
    /// per product;
    /// beyond it signed calls get 503 rather than an unchecked pass.
    pub signature_nonces_max: usize,
    /// Per-API-key and per-license request rates for validation and seat
    /// checkout.
    pub rate_limits: RateLimits,
    /// The `[billing]` section.
    pub billing: BillingConfig,
    /// Consume usage events from Kafka as well (off when absent).
    pub kafka: Option<KafkaConfig>,
    /// A signed checkpoint is appended to the log once this many records
    /// are not covered by one (see [`crate::audit`]).
    pub audit_checkpoint_records: u64,
    /// ... or once the oldest uncovered record is this old.
    #[serde(with = "humantime_serde")]
    pub audit_checkpoint_interval: Duration,
    /// Every checkpoint is also appended here as a JSON line (fsynced).
    /// Never inside the data directory.
    pub audit_anchor_file: Option<PathBuf>,
    /// The storage `log/` lives on; `None` is the real file system. Not a
    /// setting: crash tests put a simulated disk here.
    #[serde(skip)]
    pub log_storage: Option<Arc<dyn Storage>>,
}

/// A token bucket: `per_second` sustained, up to `burst` at once.
/// `per_second = 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const fn new(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    pub const OFF: RateLimit = RateLimit::new(0, 0);
}

/// The `[rate_limits]` section. Refusals are `429` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// `POST /api/v1/licenses/validate`, per API key.
    pub validate_per_api_key: RateLimit,
    /// `POST /api/v1/licenses/validate`, per license key presented.
    pub validate_per_license: RateLimit,
    /// Seat checkout and heartbeat, per API key.
    pub checkout_per_api_key: RateLimit,
    /// Seat checkout and heartbeat, per license.
    pub checkout_per_license: RateLimit,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            validate_per_api_key: RateLimit::new(5_000, 20_000),
            validate_per_license: RateLimit::new(200, 1_000),
            checkout_per_api_key: RateLimit::new(1_000, 5_000),
            checkout_per_license: RateLimit::new(50, 2_000),
        }
    }
}

impl RateLimits {
    pub const OFF: RateLimits = RateLimits {
        validate_per_api_key: RateLimit::OFF,
        validate_per_license: RateLimit::OFF,
        checkout_per_api_key: RateLimit::OFF,
        checkout_per_license: RateLimit::OFF,
    };

    fn validate(&self) -> anyhow::Result<()> {
        for (name, l) in [
            ("validate_per_api_key", self.validate_per_api_key),
            ("validate_per_license", self.validate_per_license),
            ("checkout_per_api_key", self.checkout_per_api_key),
            ("checkout_per_license", self.checkout_per_license),
        ] {
            anyhow::ensure!(
                l.per_second == 0 || l.burst >= 1,
                "rate_limits.{name}.burst must be >= 1 when per_second is set"
            );
        }
        Ok(())
    }
}

/// The `[kafka]` section: where to consume CloudEvents from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `"broker1:9092,broker2:9092"`.
    pub brokers: String,
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group: String,
    /// Where messages that are quarantined are also produced (same key and
    /// value, plus `keymeter-*` headers). None: quarantine only.
    pub dead_letter_topic: Option<String>,
    /// Any librdkafka property (`security.protocol`, `sasl.mechanisms`, …),
    /// passed through to the consumer and the dead-letter producer.
    pub properties: KafkaProperties,
    /// Most messages of one partition written in one log batch.
    pub batch_messages_max: usize,
    /// Longest a consumed message waits for its partition's batch to fill.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
}

/// librdkafka properties. `Debug` shows the names and hides the values of
/// those that can hold credentials (`sasl.password`, `sasl.jaas.config`,
/// `ssl.key.password`, OAuth client secrets, …).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub std::collections::BTreeMap<String, String>);

impl KafkaProperties {
    fn may_hold_a_secret(name: &str) -> bool {
        ["password", "secret", "jaas", "token", "key", "credential"]
            .iter()
            .any(|w| name.contains(w))
    }
}

impl std::ops::Deref for KafkaProperties {
    type Target = std::collections::BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaProperties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.0 {
            if KafkaProperties::may_hold_a_secret(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topics: Vec::new(),
            group: "keymeter".into(),
            dead_letter_topic: None,
            properties: Default::default(),
            batch_messages_max: 5_000,
            batch_wait: Duration::from_millis(20),
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.brokers.trim().is_empty(), "kafka.brokers is empty");
        anyhow::ensure!(!self.topics.is_empty(), "kafka.topics is empty");
        anyhow::ensure!(
            self.topics.iter().all(|t| !t.is_empty()),
            "kafka.topics has an empty name"
        );
        anyhow::ensure!(!self.group.is_empty(), "kafka.group is empty");
        anyhow::ensure!(
            self.batch_messages_max >= 1,
            "kafka.batch_messages_max must be >= 1"
        );
        // Offsets live in the event log; Kafka must not move them on its own.
        for key in ["enable.auto.commit", "enable.auto.offset.store"] {
            if let Some(v) = self.properties.get(key) {
                anyhow::ensure!(
                    v == "false",
                    "kafka.properties.\"{key}\" must stay false: keymeter stores offsets in its log"
                );
            }
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("keymeter-data"),
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            connections_max: 10_000,
            shutdown_grace: Duration::from_secs(10),
            metrics_listen: None,
            bootstrap_admin_key: None,
            recover_admin_key: false,
            event_time_back: Duration::from_secs(35 * 24 * 3600),
            event_time_ahead: Duration::from_secs(5 * 60),
            body_bytes_max: 8 * 1024 * 1024,
            request_events_max: 10_000,
            query_rows_max: 100_000,
            store_cache_mb: 128,
            batch_records_max: 20_000,
            writer_queue_max: 256,
            segment_bytes_max: 64 * 1024 * 1024,
            dedup_keys_max: 20_000_000,
            dedup_tenant_share_pct: 50,
            master_key_file: None,
            master_key: None,
            token_ttl: Duration::from_secs(5 * 60),
            license_file_ttl: Duration::from_secs(30 * 24 * 3600),
            license_file_ttl_max: Duration::from_secs(366 * 24 * 3600),
            signature_tolerance: Duration::from_secs(5 * 60),
            signature_nonces_max: 1_000_000,
            rate_limits: RateLimits::default(),
            billing: BillingConfig::default(),
            kafka: None,
            audit_checkpoint_records: 10_000,
            audit_checkpoint_interval: Duration::from_secs(60),
            audit_anchor_file: None,
            log_storage: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {} is invalid: {e}", path.display()))
    }

    pub fn time_window(&self) -> TimeWindow {
        TimeWindow {
            back_ms: self.event_time_back.as_millis() as i64,
            ahead_ms: self.event_time_ahead.as_millis() as i64,
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    /// `log/` on its storage.
    pub fn log(&self) -> LogDir {
        match &self.log_storage {
            Some(storage) => LogDir::on(storage.clone(), self.log_dir()),
            None => LogDir::disk(self.log_dir()),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }

    /// The nonces of signed calls dated ahead of the server clock (see
    /// [`crate::signing_journal`]). Not in `state/`: it is not a projection
    /// and cannot be rebuilt from the log.
    pub fn signature_nonces_path(&self) -> PathBuf {
        self.data_dir.join("signature-nonces")
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.request_events_max >= 1,
            "request_events_max must be >= 1"
        );
        anyhow::ensure!(
            self.batch_records_max >= self.request_events_max,
            "batch_records_max must be >= request_events_max"
        );
        anyhow::ensure!(self.writer_queue_max >= 1, "writer_queue_max must be >= 1");
        anyhow::ensure!(
            (1..=100).contains(&self.dedup_tenant_share_pct),
            "dedup_tenant_share_pct must be between 1 and 100"
        );
        anyhow::ensure!(
            (1..=QUERY_ROWS_MAX_LIMIT).contains(&self.query_rows_max),
            "query_rows_max must be between 1 and {QUERY_ROWS_MAX_LIMIT}"
        );
        anyhow::ensure!(
            (8..=1 << 20).contains(&self.store_cache_mb),
            "store_cache_mb must be between 8 and 1048576"
        );
        anyhow::ensure!(
            self.body_bytes_max >= 1024,
            "body_bytes_max must be >= 1024"
        );
        anyhow::ensure!(
            self.segment_bytes_max >= 4096,
            "segment_bytes_max must be >= 4096"
        );
        if let Some(kafka) = &self.kafka {
            kafka.validate()?;
        }
        anyhow::ensure!(
            self.token_ttl >= Duration::from_secs(1),
            "token_ttl must be at least 1s"
        );
        anyhow::ensure!(
            Duration::from_secs(60) <= self.license_file_ttl
                && self.license_file_ttl <= self.license_file_ttl_max,
            "license_file_ttl must be between 1m and license_file_ttl_max"
        );
        anyhow::ensure!(
            Duration::from_secs(1) <= self.signature_tolerance
                && self.signature_tolerance <= Duration::from_secs(24 * 3600),
            "signature_tolerance must be between 1s and 24h"
        );
        anyhow::ensure!(
            self.signature_nonces_max >= 1000,
            "signature_nonces_max must be >= 1000"
        );
        self.rate_limits.validate()?;
        self.billing.validate()?;
        self.validate_tls()?;
        anyhow::ensure!(
            self.audit_checkpoint_records >= 1,
            "audit_checkpoint_records must be >= 1"
        );
        anyhow::ensure!(
            self.audit_checkpoint_interval >= Duration::from_millis(100),
            "audit_checkpoint_interval must be at least 100ms"
        );
        if let Some(path) = &self.audit_anchor_file {
            // A copy or rewrite of the data directory must not carry its own evidence.
            anyhow::ensure!(
                !crate::crypto::is_inside(path, &self.data_dir),
                "the audit anchor file {} is inside the data directory {}; keep it elsewhere",
                path.display(),
                self.data_dir.display()
            );
        }
        if let Some(key) = &self.bootstrap_admin_key {
            anyhow::ensure!(
                key.expose().len() >= crate::api_keys::SUPPLIED_KEY_CHARS_MIN,
                "bootstrap admin key must be at least {} characters",
                crate::api_keys::SUPPLIED_KEY_CHARS_MIN
            );
        }
        Ok(())
    }

    /// True when the API is served over HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Certificate and key come as a pair; client authentication needs both.
    fn validate_tls(&self) -> anyhow::Result<()> {
        const HOW: &str = "set both tls_cert and tls_key (--tls-cert/--tls-key, \
                           KEYMETER_TLS_CERT/KEYMETER_TLS_KEY), or neither for plain HTTP";
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => anyhow::bail!("tls_cert is set but tls_key is missing: {HOW}"),
            (None, Some(_)) => anyhow::bail!("tls_key is set but tls_cert is missing: {HOW}"),
            _ => {}
        }
        anyhow::ensure!(
            Duration::from_millis(100) <= self.tls_handshake_timeout
                && self.tls_handshake_timeout <= Duration::from_secs(600),
            "tls_handshake_timeout must be between 100ms and 10m"
        );
        for (name, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("shutdown_grace", self.shutdown_grace),
        ] {
            anyhow::ensure!(
                Duration::from_millis(100) <= d && d <= Duration::from_secs(3600),
                "{name} must be between 100ms and 1h"
            );
        }
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.connections_max),
            "connections_max must be between 1 and 1000000"
        );
        anyhow::ensure!(
            self.tls_client_ca.is_none() || self.tls_enabled(),
            "tls_client_ca is set but tls_cert and tls_key are missing: client \
             certificates need HTTPS"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
