//! Key rotation against the real binary: a new master key re-wraps the
//! keyring (and an interrupted rotation resumes), a new signing key is used
//! while the old one stays published; license keys, signing secrets,
//! sealed records and UNIQUE_COUNT sets (whose key comes from the keyring)
//! keep working throughout, and no secret is ever in the data directory.

mod common;

use std::path::Path;

use common::{assert_no_file_holds, assert_success, exits_with_error, run, serve_command, Server};
use keymeter::crypto::keyring::{keyring_path, Kek, Keyring};
use keymeter::crypto::MasterKey;
use keymeter::record::Record;
use serde_json::{json, Value};

fn rotate(data: &Path, master: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "keys",
        "rotate",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        master.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `serve` must refuse to start with this master key; returns its stderr.
fn refused(data: &Path, master: &Path) -> String {
    exits_with_error(serve_command(data).arg("--master-key-file").arg(master))
}

fn start(data: &Path, master: &Path) -> Server {
    Server::start_with(data, &["--master-key-file", master.to_str().unwrap()])
}

/// Validates from the machine that holds the license's seat.
async fn validate(server: &Server, pk: &str, key: &str) -> Value {
    server
        .validate_license(pk, json!({"key": key, "fingerprint": "m1"}))
        .await
}

/// One visit per user, for the UNIQUE_COUNT meter `users`; `batch` keeps
/// event ids apart.
async fn visit(server: &Server, batch: &str, users: &[&str]) {
    let time = common::time_from_now(-1_000);
    let events: Vec<Value> = users
        .iter()
        .map(|u| {
            common::event(
                &format!("{batch}-{u}"),
                "visit",
                "acme",
                &time,
                json!({"user": u}),
            )
        })
        .collect();
    assert_eq!(
        server.ingest(common::ADMIN_KEY, &events).await.status(),
        204
    );
}

fn master_bytes(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    MasterKey::from_base64(&text).unwrap().bytes().to_vec()
}

fn rotations(data: &Path) -> Vec<(String, String, String)> {
    let head = keymeter::log::verify(&data.join("log")).unwrap().head_seq;
    keymeter::log::read_range(&data.join("log"), 1, head)
        .unwrap()
        .filter_map(|r| match Record::decode(&r.unwrap().payload).unwrap() {
            Record::KeysRotated {
                kind,
                from,
                to,
                audit,
            } => {
                assert!(audit.actor.unwrap().starts_with("cli:"));
                Some((kind, from, to))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_signing_keys_rotate_without_losing_anything() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let (old, new, third) = (
        root.path().join("old.key"),
        root.path().join("new.key"),
        root.path().join("third.key"),
    );
    std::fs::write(&old, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    let server = start(&data, &old);
    let lic = server
        .create_license(json!({"product": "ide", "customer": "acme",
            "policy": {"type": "seat", "seats": {"max": 5, "mode": "floating", "lease_ttl_s": 3600}}}))
        .await;
    let license_key = lic["key"].as_str().unwrap().to_owned();
    let (secret_id, secret) = server.create_product(json!({"id": "ide"})).await;
    let pk = server
        .create_key_with(json!({"name": "ide", "scopes": ["ingest"], "product": "ide"}))
        .await;
    let r = server
        .post_json(
            &pk,
            &format!("/api/v1/licenses/{}/seats", lic["id"].as_str().unwrap()),
            &json!({"fingerprint": "m1"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let before = validate(&server, &pk, &license_key).await;
    assert_eq!(before["code"], "VALID");
    let keys_before = server.jwks_keys().await;
    server
        .create_meter(json!({"slug": "users", "eventType": "visit",
            "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user"}))
        .await;
    visit(&server, "a", &["u1", "u2"]).await;

    // Not while the server runs.
    let busy = rotate(
        &data,
        &old,
        &["--master", "--new-master-key-file", new.to_str().unwrap()],
    );
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop the server first"));
    server.stop();

    let out = rotate(
        &data,
        &old,
        &["--master", "--new-master-key-file", new.to_str().unwrap()],
    );
    assert_success(&out);
    assert!(new.exists());
    // The old master key no longer opens the data directory...
    let err = refused(&data, &old);
    assert!(err.contains("keys rotate"), "{err}");
    // ...the new one does, and everything sealed before still works.
    let server = start(&data, &new);
    let after = validate(&server, &pk, &license_key).await;
    assert_eq!(after["code"], "VALID");
    let body = br#"{"specversion":"1.0","id":"k1","source":"s","type":"t","subject":"c"}"#;
    // (signatures dated in the start second are refused; sign in the next)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = server
        .post_signed_event(&pk, body, &secret, &secret_id)
        .await;
    assert_eq!(r.status(), 204, "the signing secret unseals after rotation");
    let keys_mid = server.jwks_keys().await;
    // The same UNIQUE_COUNT key: the sets are continued, not rebuilt.
    visit(&server, "b", &["u2", "u3"]).await;
    assert_eq!(server.total("users", "").await, 3.0);
    assert!(!server.stderr().contains("rebuilding it from the log"));
    let token = after["token"].as_str().unwrap();
    keymeter_client::verify_token(token, &keys_before, chrono::Utc::now().timestamp())
        .expect("a master rotation keeps the signing key");
    server.stop();

    // A new signing key: used from now on, the old one still published.
    let out = rotate(&data, &new, &["--signing"]);
    assert_success(&out);
    let server = start(&data, &new);
    let text = server.jwks_text().await;
    let keys_after = keymeter_client::Keys::from_jwks(&text).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let now = chrono::Utc::now().timestamp();
    let fresh = validate(&server, &pk, &license_key).await;
    let fresh_claims =
        keymeter_client::verify_token(fresh["token"].as_str().unwrap(), &keys_after, now).unwrap();
    assert_eq!(fresh_claims.code, "VALID");
    assert!(
        keymeter_client::verify_token(fresh["token"].as_str().unwrap(), &keys_mid, now).is_err(),
        "the new token is signed by a key the old JWKS does not have"
    );
    keymeter_client::verify_token(token, &keys_after, now)
        .expect("tokens signed before the rotation still verify");
    server.stop();

    // An interrupted master rotation: only the first entry was re-wrapped.
    let path = keyring_path(&data);
    let mut ring = Keyring::load(&path).unwrap().unwrap();
    let new_kek =
        Kek::new(&MasterKey::from_base64(&std::fs::read_to_string(&new).unwrap()).unwrap());
    let third_key = MasterKey::from_bytes([42; 32]);
    std::fs::write(
        &third,
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            third_key.bytes(),
        ),
    )
    .unwrap();
    let third_kek = Kek::new(&third_key);
    ring.rewrap(0, &new_kek, &third_kek).unwrap();
    ring.save(&path).unwrap();
    // A half-rotated keyring is not used.
    let err = refused(&data, &new);
    assert!(err.contains("keys rotate"), "{err}");
    let out = rotate(
        &data,
        &new,
        &["--master", "--new-master-key-file", third.to_str().unwrap()],
    );
    assert_success(&out);
    let server = start(&data, &third);
    assert_eq!(validate(&server, &pk, &license_key).await["code"], "VALID");
    server.stop();

    // Checkpoints signed before the signing-key rotation still verify.
    let audit = run(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        third.to_str().unwrap(),
    ]);
    assert_success(&audit);

    let kinds: Vec<String> = rotations(&data).into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(kinds, ["master", "signing", "master"]);
    // A data directory whose keyring was lost refuses to start rather than
    // answer NOT_FOUND for every license.
    let copy = root.path().join("copy");
    for file in common::walk(&data) {
        let to = copy.join(file.strip_prefix(&data).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
    std::fs::remove_file(keyring_path(&copy)).unwrap();
    let err = refused(&copy, &third);
    assert!(err.contains("keyring does not open"), "{err}");

    assert_no_file_holds(
        &data,
        &[
            license_key.as_bytes(),
            secret.as_bytes(),
            pk.as_bytes(),
            &master_bytes(&old),
            &master_bytes(&new),
            third_key.bytes(),
        ],
    );
}
