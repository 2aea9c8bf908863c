//! The command-line flags and `KEYMETER_*` variables that override the
//! configuration file, shared by every command that reads the configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Config;
use crate::crypto::SecretString;

/// Where the data is: what every command that reads a data directory
/// takes. A flag beats its `KEYMETER_*` variable, which beats the config
/// file, which beats the built-in default.
#[derive(Args, Clone)]
pub struct DataArgs {
    /// TOML configuration file.
    #[arg(long, env = "KEYMETER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (log and projections) [default: ./keymeter-data].
    #[arg(long, env = "KEYMETER_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// [`DataArgs`] and the master key, for the commands that open the keyring
/// (the key itself may come from `KEYMETER_MASTER_KEY` instead).
#[derive(Args, Clone)]
pub struct KeyedDataArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Master key file (base64, 32 bytes); never inside the data directory
    /// [default: <data-dir>.master-key, created on first start]. The key
    /// itself may come from KEYMETER_MASTER_KEY (base64) instead.
    #[arg(long, env = "KEYMETER_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
}

/// Every setting of `keymeter serve`: the data directory and master key,
/// and the server's own options.
#[derive(Args, Clone)]
pub struct ConfigArgs {
    #[command(flatten)]
    keyed: KeyedDataArgs,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYMETER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve the API over HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "KEYMETER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KEYMETER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): verify client certificates against it and
    /// require one for ingest (needs --tls-cert and --tls-key).
    #[arg(long, env = "KEYMETER_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Serve /metrics on this address without authentication (and not on the API listener).
    #[arg(long, env = "KEYMETER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// API key to create as the first admin key when there is none yet (at least 24 characters).
    #[arg(long, env = "KEYMETER_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    bootstrap_admin_key: Option<String>,
    /// Create an admin key even though every API key of the log was revoked
    /// (the bootstrap key is otherwise created only into a log that never
    /// held one).
    #[arg(long)]
    recover_admin_key: bool,
    /// Oldest accepted event time, before the receive time (e.g. "35d") [default: 35d].
    #[arg(long, env = "KEYMETER_EVENT_TIME_BACK", value_parser = humantime::parse_duration)]
    event_time_back: Option<Duration>,
    /// Newest accepted event time, after the receive time (e.g. "5m") [default: 5m].
    #[arg(long, env = "KEYMETER_EVENT_TIME_AHEAD", value_parser = humantime::parse_duration)]
    event_time_ahead: Option<Duration>,
    /// Largest accepted request body in bytes [default: 8388608].
    #[arg(long, env = "KEYMETER_BODY_BYTES_MAX")]
    body_bytes_max: Option<usize>,
    /// Most events in one ingest request [default: 10000].
    #[arg(long, env = "KEYMETER_REQUEST_EVENTS_MAX")]
    request_events_max: Option<usize>,
    /// Most rows in one meter query answer or page [default: 100000].
    #[arg(long, env = "KEYMETER_QUERY_ROWS_MAX")]
    query_rows_max: Option<usize>,
    /// Memory for the projection store's page cache, in MiB [default: 128].
    #[arg(long, env = "KEYMETER_STORE_CACHE_MB")]
    store_cache_mb: Option<usize>,
    /// Most records in one log batch [default: 20000].
    #[arg(long, env = "KEYMETER_BATCH_RECORDS_MAX")]
    batch_records_max: Option<usize>,
    /// Log segment size at which a new segment starts [default: 67108864].
    #[arg(long, env = "KEYMETER_SEGMENT_BYTES_MAX")]
    segment_bytes_max: Option<u64>,
    /// Lifetime of signed validation verdicts (e.g. "5m") [default: 5m].
    #[arg(long, env = "KEYMETER_TOKEN_TTL", value_parser = humantime::parse_duration)]
    token_ttl: Option<Duration>,
    /// Accepted clock difference of signed calls (e.g. "5m") [default: 5m].
    #[arg(long, env = "KEYMETER_SIGNATURE_TOLERANCE", value_parser = humantime::parse_duration)]
    signature_tolerance: Option<Duration>,
    /// Longest a client may take to send a request's headers (e.g. "10s") [default: 10s].
    #[arg(long, env = "KEYMETER_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    header_read_timeout: Option<Duration>,
    /// Longest a client may take to send a request's body [default: 60s].
    #[arg(long, env = "KEYMETER_BODY_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    body_read_timeout: Option<Duration>,
    /// Most connections served at once [default: 10000].
    #[arg(long, env = "KEYMETER_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// At shutdown, how long open requests may still finish [default: 10s].
    #[arg(long, env = "KEYMETER_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// Kafka bootstrap servers (HOST:PORT[,HOST:PORT…]); enables the Kafka source.
    #[arg(long, env = "KEYMETER_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Kafka topic to consume (repeat the flag, or comma-separate in the variable).
    #[arg(
        long = "kafka-topic",
        env = "KEYMETER_KAFKA_TOPICS",
        value_delimiter = ','
    )]
    kafka_topics: Vec<String>,
    /// Kafka consumer group [default: keymeter].
    #[arg(long, env = "KEYMETER_KAFKA_GROUP")]
    kafka_group: Option<String>,
    /// Topic that receives a copy of every quarantined Kafka message.
    #[arg(long, env = "KEYMETER_KAFKA_DEAD_LETTER_TOPIC")]
    kafka_dead_letter_topic: Option<String>,
    /// Append a signed checkpoint once this many records are not covered by
    /// one [default: 10000].
    #[arg(long, env = "KEYMETER_AUDIT_CHECKPOINT_RECORDS")]
    audit_checkpoint_records: Option<u64>,
    /// ... or once the oldest uncovered record is this old (e.g. "60s")
    /// [default: 60s].
    #[arg(long, env = "KEYMETER_AUDIT_CHECKPOINT_INTERVAL", value_parser = humantime::parse_duration)]
    audit_checkpoint_interval: Option<Duration>,
    /// Also append every checkpoint to this file (JSON lines, fsynced);
    /// never inside the data directory.
    #[arg(long, env = "KEYMETER_AUDIT_ANCHOR_FILE")]
    audit_anchor_file: Option<PathBuf>,
}

impl DataArgs {
    /// The configuration file (or the defaults) with the data directory
    /// over it, validated.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = self.base()?;
        self.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    fn base(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(path) => Config::from_file(path),
            None => Ok(Config::default()),
        }
    }

    fn apply(&self, cfg: &mut Config) {
        if let Some(dir) = &self.data_dir {
            cfg.data_dir = dir.clone();
        }
    }
}

impl KeyedDataArgs {
    /// [`DataArgs::load`] with the master key's file or variable.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = self.data.base()?;
        self.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply(&self, cfg: &mut Config) {
        self.data.apply(cfg);
        if let Some(file) = &self.master_key_file {
            cfg.master_key_file = Some(file.clone());
        }
        // A variable only: a flag would show the key in the process list.
        if let Ok(key) = std::env::var("KEYMETER_MASTER_KEY") {
            cfg.master_key = Some(SecretString::new(key));
        }
    }
}

impl ConfigArgs {
    /// The configuration these arguments describe: the file (or the
    /// defaults), the flags and variables over it, then validated.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = self.keyed.data.base()?;
        self.keyed.apply(&mut cfg);
        self.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets every server option given as a flag or variable; the rest stay
    /// as the file or the defaults have them.
    fn apply(&self, cfg: &mut Config) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    cfg.$field = v.clone();
                }
            )*};
        }
        macro_rules! set_optional {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    cfg.$field = Some(v.clone());
                }
            )*};
        }
        set!(
            listen,
            event_time_back,
            event_time_ahead,
            body_bytes_max,
            request_events_max,
            query_rows_max,
            store_cache_mb,
            batch_records_max,
            segment_bytes_max,
            token_ttl,
            signature_tolerance,
            header_read_timeout,
            body_read_timeout,
            connections_max,
            shutdown_grace,
            audit_checkpoint_records,
            audit_checkpoint_interval
        );
        set_optional!(
            tls_cert,
            tls_key,
            tls_client_ca,
            metrics_listen,
            audit_anchor_file
        );
        cfg.recover_admin_key |= self.recover_admin_key;
        if let Some(key) = &self.bootstrap_admin_key {
            cfg.bootstrap_admin_key = Some(key.as_str().into());
        }
        self.apply_kafka(cfg);
    }

    /// Kafka flags create the `[kafka]` section when the file has none.
    fn apply_kafka(&self, cfg: &mut Config) {
        let any = self.kafka_brokers.is_some()
            || !self.kafka_topics.is_empty()
            || self.kafka_group.is_some()
            || self.kafka_dead_letter_topic.is_some();
        if !any {
            return;
        }
        let kafka = cfg.kafka.get_or_insert_with(Default::default);
        if let Some(brokers) = &self.kafka_brokers {
            kafka.brokers = brokers.clone();
        }
        if !self.kafka_topics.is_empty() {
            kafka.topics = self.kafka_topics.clone();
        }
        if let Some(group) = &self.kafka_group {
            kafka.group = group.clone();
        }
        if let Some(topic) = &self.kafka_dead_letter_topic {
            kafka.dead_letter_topic = Some(topic.clone());
        }
    }
}

/// The variables that carry secrets.
const SECRET_VARIABLES: [&str; 2] = ["KEYMETER_MASTER_KEY", "KEYMETER_BOOTSTRAP_ADMIN_KEY"];

/// Once the configuration holds them, wipes the secret variables' values in
/// place (so `/proc/<pid>/environ` and a core dump no longer show them) and
/// removes them from the environment (so no child process inherits them).
///
/// Call it before any other thread exists: the environment is not
/// thread-safe.
pub fn scrub_secret_variables() {
    for name in SECRET_VARIABLES {
        let c_name = std::ffi::CString::new(name).expect("no NUL in the name");
        // SAFETY: single-threaded (see above); `getenv` returns a pointer to
        // the value's NUL-terminated bytes in the environment block, which
        // stay valid until the environment changes, and are overwritten
        // here within their own length.
        unsafe {
            let value = libc::getenv(c_name.as_ptr());
            if !value.is_null() {
                let len = libc::strlen(value);
                for i in 0..len {
                    std::ptr::write_volatile(value.add(i), 0);
                }
            }
        }
        std::env::remove_var(name);
    }
}
