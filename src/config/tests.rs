use super::*;

#[test]
fn the_shipped_example_file_states_the_defaults() {
    let c: Config = toml::from_str(include_str!("../../deploy/keymeter.toml")).unwrap();
    let d = Config::default();
    assert_eq!(c.data_dir, d.data_dir);
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.event_time_back, d.event_time_back);
    assert_eq!(c.event_time_ahead, d.event_time_ahead);
    assert_eq!(c.body_bytes_max, d.body_bytes_max);
    assert_eq!(c.request_events_max, d.request_events_max);
    assert_eq!(c.query_rows_max, d.query_rows_max);
    assert_eq!(c.batch_records_max, d.batch_records_max);
    assert_eq!(c.writer_queue_max, d.writer_queue_max);
    assert_eq!(c.segment_bytes_max, d.segment_bytes_max);
    assert_eq!(c.dedup_keys_max, d.dedup_keys_max);
    assert_eq!(c.dedup_tenant_share_pct, d.dedup_tenant_share_pct);
    assert_eq!(c.token_ttl, d.token_ttl);
    assert_eq!(c.license_file_ttl, d.license_file_ttl);
    assert_eq!(c.license_file_ttl_max, d.license_file_ttl_max);
    assert_eq!(c.signature_tolerance, d.signature_tolerance);
    assert_eq!(c.signature_nonces_max, d.signature_nonces_max);
    assert_eq!(c.rate_limits, d.rate_limits);
    assert_eq!(c.tls_cert, d.tls_cert);
    assert_eq!(c.tls_key, d.tls_key);
    assert_eq!(c.tls_client_ca, d.tls_client_ca);
    assert_eq!(c.tls_handshake_timeout, d.tls_handshake_timeout);
    assert_eq!(c.audit_checkpoint_records, d.audit_checkpoint_records);
    assert_eq!(c.audit_checkpoint_interval, d.audit_checkpoint_interval);
    assert_eq!(c.audit_anchor_file, d.audit_anchor_file);
}

#[test]
fn tls_certificate_and_key_come_as_a_pair() {
    let c: Config = toml::from_str(
        "tls_cert = \"/etc/keymeter/tls/server.crt\"\n\
         tls_key = \"/etc/keymeter/tls/server.key\"\n\
         tls_client_ca = \"/etc/keymeter/tls/clients-ca.crt\"\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert!(c.tls_enabled());
    assert!(!Config::default().tls_enabled());

    let error = |c: &Config| c.validate().unwrap_err().to_string();
    let mut only_cert = c.clone();
    only_cert.tls_key = None;
    assert!(error(&only_cert).contains("tls_key is missing"));
    let mut only_key = c.clone();
    only_key.tls_cert = None;
    assert!(error(&only_key).contains("tls_cert is missing"));
    let ca_without_tls = Config {
        tls_client_ca: c.tls_client_ca.clone(),
        ..Config::default()
    };
    assert!(error(&ca_without_tls).contains("tls_client_ca"));
}

#[test]
fn an_anchor_file_inside_the_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inside = Config {
        data_dir: dir.path().join("data"),
        audit_anchor_file: Some(dir.path().join("data/log/anchors.jsonl")),
        ..Config::default()
    };
    let err = inside.validate().unwrap_err().to_string();
    assert!(err.contains("inside the data directory"), "{err}");
    let beside = Config {
        audit_anchor_file: Some(dir.path().join("anchors.jsonl")),
        ..inside
    };
    beside.validate().unwrap();
}

#[test]
fn file_overrides_defaults_and_rejects_unknown_keys() {
    let c: Config = toml::from_str(
        "listen = \"0.0.0.0:9000\"\nevent_time_back = \"7days\"\nrequest_events_max = 5\n",
    )
    .unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.time_window().back_ms, 7 * 24 * 3600 * 1000);
    assert_eq!(c.request_events_max, 5);
    assert_eq!(c.data_dir, PathBuf::from("keymeter-data"));
    assert!(toml::from_str::<Config>("lissten = \"x\"").is_err());
}

#[test]
fn kafka_section_passes_librdkafka_properties_through() {
    let c: Config = toml::from_str(
        "[kafka]\nbrokers = \"b:9092\"\ntopics = [\"usage-events\"]\n\
         [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
    )
    .unwrap();
    let k = c.kafka.as_ref().unwrap();
    assert_eq!(k.group, "keymeter");
    assert_eq!(k.properties["security.protocol"], "SASL_SSL");
    c.validate().unwrap();
    assert!(Config::default().kafka.is_none());
    let mut bad = k.clone();
    bad.properties
        .insert("enable.auto.commit".into(), "true".into());
    assert!(bad.validate().is_err());
}

/// Parses `argv` as a command that reads the configuration would.
fn load_args(argv: &[&str]) -> anyhow::Result<Config> {
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        config: ConfigArgs,
    }
    let argv = std::iter::once("keymeter").chain(argv.iter().copied());
    <Command as clap::Parser>::try_parse_from(argv)?
        .config
        .load()
}

#[test]
fn flags_override_the_file_and_kafka_flags_create_the_section() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keymeter.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:9000\"\ntoken_ttl = \"1m\"\n").unwrap();
    let cfg = load_args(&[
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:9001",
        "--tls-cert",
        "server.crt",
        "--tls-key",
        "server.key",
        "--kafka-brokers",
        "b:9092",
        "--kafka-topic",
        "usage",
        "--kafka-topic",
        "more-usage",
    ])
    .unwrap();
    assert_eq!(cfg.listen.port(), 9001);
    assert_eq!(cfg.token_ttl, Duration::from_secs(60));
    assert!(cfg.tls_enabled());
    let kafka = cfg.kafka.unwrap();
    assert_eq!(kafka.brokers, "b:9092");
    assert_eq!(kafka.topics, ["usage", "more-usage"]);
    assert_eq!(kafka.group, "keymeter");
}

#[test]
fn flags_are_validated_like_the_file() {
    let err = load_args(&["--tls-key", "server.key"]).unwrap_err();
    assert!(err.to_string().contains("tls_cert is missing"), "{err}");
    let err = load_args(&["--query-rows-max", "0"]).unwrap_err();
    assert!(err.to_string().contains("query_rows_max"), "{err}");
}

#[test]
fn the_query_row_cap_comes_from_the_file_or_the_flag() {
    assert_eq!(Config::default().query_rows_max, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keymeter.toml");
    std::fs::write(&file, "query_rows_max = 5000\n").unwrap();
    let from_file = load_args(&["--config", file.to_str().unwrap()]).unwrap();
    assert_eq!(from_file.query_rows_max, 5000);
    let cfg = load_args(&["--config", file.to_str().unwrap(), "--query-rows-max", "70"]).unwrap();
    assert_eq!(cfg.query_rows_max, 70);
}

#[test]
fn debug_output_of_the_configuration_shows_no_secret() {
    let mut c: Config = toml::from_str(
        "bootstrap_admin_key = \"bootstrap-secret-0123456789abcdef\"\n\
         [kafka]\nbrokers = \"b:9092\"\ntopics = [\"usage-events\"]\n\
         [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.username\" = \"meter\"\n\"sasl.password\" = \"kafka-secret-1\"\n\
         \"sasl.jaas.config\" = \"... password=kafka-secret-2;\"\n\
         \"ssl.key.password\" = \"kafka-secret-3\"\n\
         \"sasl.oauthbearer.client.secret\" = \"kafka-secret-4\"\n",
    )
    .unwrap();
    c.master_key = Some(crate::crypto::SecretString::new("master-secret".into()));
    let shown = format!("{c:?}");
    for secret in [
        "bootstrap-secret",
        "kafka-secret-1",
        "kafka-secret-2",
        "kafka-secret-3",
        "kafka-secret-4",
        "master-secret",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // What is not secret stays visible for debugging.
    assert!(
        shown.contains("SASL_SSL") && shown.contains("\"meter\""),
        "{shown}"
    );
    assert!(shown.contains("sasl.password"), "{shown}");
}

#[test]
fn the_store_cache_comes_from_the_file_or_the_flag_and_is_bounded() {
    assert_eq!(Config::default().store_cache_mb, 128);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keymeter.toml");
    std::fs::write(&file, "store_cache_mb = 512\n").unwrap();
    let from_file = load_args(&["--config", file.to_str().unwrap()]).unwrap();
    assert_eq!(from_file.store_cache_mb, 512);
    let cfg = load_args(&["--config", file.to_str().unwrap(), "--store-cache-mb", "64"]).unwrap();
    assert_eq!(cfg.store_cache_mb, 64);
    let err = load_args(&["--store-cache-mb", "4"]).unwrap_err();
    assert!(err.to_string().contains("store_cache_mb"), "{err}");
}
