//! Key files (`keys/keyring.json` and the master key file beside the data
//! directory) and what the keys they hold make of stored secrets: a keyring
//! written by an earlier build must open with its master key and give the
//! same pepper (license-key lookups), data key (sealed secrets in the log)
//! and signing key (the published kid), and so must a data directory from
//! before the keyring, whose keys the master key derives.

use std::path::Path;

use keymeter::crypto::keyring::{keyring_path, Entry, Kek, Keyring, Purpose, KEYRING_FORMAT};
use keymeter::crypto::{load_master_key, open_keys, KeyringOrigin, Keys, MasterKey};

use crate::{unhex, Golden};

const MASTER: [u8; 32] = [7; 32];
/// The master key file as `serve` writes it: base64 and a newline.
const MASTER_KEY_FILE: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n";
const KEK_ID: &str = "827888ece879838a";
const CREATED_MS: i64 = 1_700_000_000_000;
/// Pepper `[1; 32]`, data key `[2; 32]`, signing seed `[3; 32]`, wrapped
/// (random nonces) by [`MASTER`].
const KEYRING_JSON: &str = r#"{
  "format": "keymeter-keyring/v1",
  "entries": [
    {
      "id": "pepper-1",
      "purpose": "pepper",
      "kek": "827888ece879838a",
      "wrapped": "1+bN32Trow9l+Cz/1wM6gv5fCQL+iIa2nRXi9NMMtjENQ47uUiCy8RryhUqSGHwwIIFKAgIuC5X1gLkq",
      "created_ms": 1700000000000
    },
    {
      "id": "data-1",
      "purpose": "data",
      "kek": "827888ece879838a",
      "wrapped": "N7FuCWlkZ8MKbIPifK4npMFhmI0JEyVHnZ1TTyW1FTxto3mhmNEE6pXoUfOzHxAnvb9L/pFB4UFxm6xg",
      "created_ms": 1700000000000
    },
    {
      "id": "b62e867fa2f33afe",
      "purpose": "signing",
      "kek": "827888ece879838a",
      "wrapped": "12WQmpfW75GE/x8x7VTGiFeOINt9rDPdtRf8lUDIVhztRjKtApAIoJV5vb+onQjecIvtVihxyr/GZ4kg",
      "created_ms": 1700000000000
    }
  ]
}"#;
const KID: &str = "b62e867fa2f33afe";
const LICENSE_KEY: &str = "lk_golden_key";
const LICENSE_ID: &[u8] = b"lic_golden";
/// HMAC-SHA256 of [`LICENSE_KEY`] under the pepper.
const LOOKUP: &str = "051ceff50a009521d2f5acb68ebc2739bf87e089db06973279f5cc985a4eade4";
/// [`LICENSE_KEY`] sealed under the data key, the license id as AAD.
const SEALED: &str =
    "f23c261a66c1a9799d8b9fe7932857806cdd037ef42abf0531266f384db1c60654a66458f8bebc30e1";
/// The same, for the keys [`MASTER`] derives (data directories from before
/// the keyring adopt these).
const LEGACY_KID: &str = "daac655f79851888";
const LEGACY_LOOKUP: &str = "b4635f1ba16023dff59a0832b59f8ad4aae55e507f203200f0742ce9e80a5ac8";
const LEGACY_SEALED: &str =
    "61aae259703a1d1d5dc317cead2d170cf3c8b31260d4234e42b78f647df4a0b38a39cfe8484ce0fbeb";
/// The UNIQUE_COUNT identity of `alice` (SipHash-2-4-128 under
/// HKDF-SHA256(pepper, "keymeter unique-count key v1"), output bytes): stored
/// unique sets depend on it. Computed independently of keymeter.
const UNIQUE_ALICE: &str = "068abdc73eb53c8fef77428fe6bcc508";
const LEGACY_UNIQUE_ALICE: &str = "884c36335a72f9d5ed6ddc4e915a2491";

/// The keyring [`KEYRING_JSON`] holds, as a value.
fn keyring() -> Keyring {
    let entry = |id: &str, purpose, wrapped: &str| Entry {
        id: id.into(),
        purpose,
        kek: KEK_ID.into(),
        wrapped: wrapped.into(),
        created_ms: CREATED_MS,
        retired_ms: None,
        publish_until_ms: None,
    };
    let parsed: serde_json::Value = serde_json::from_str(KEYRING_JSON).unwrap();
    let wrapped = |i: usize| parsed["entries"][i]["wrapped"].as_str().unwrap().to_owned();
    Keyring {
        format: KEYRING_FORMAT.into(),
        entries: vec![
            entry("pepper-1", Purpose::Pepper, &wrapped(0)),
            entry("data-1", Purpose::Data, &wrapped(1)),
            entry(KID, Purpose::Signing, &wrapped(2)),
        ],
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_keyring_file_keeps_its_bytes_and_an_old_one_opens_to_the_same_keys() {
    let mut g = Golden::default();
    let dir = tempfile::tempdir().unwrap();
    let path = keyring_path(dir.path());
    keyring().save(&path).unwrap();
    g.text("keyring.json", &std::fs::read(&path).unwrap(), KEYRING_JSON);
    let master = MasterKey::from_bytes(MASTER);
    let kek = Kek::new(&master);
    g.check("kek id", kek.id() == KEK_ID, || format!("now {}", kek.id()));

    let old = tempfile::tempdir().unwrap();
    write(&keyring_path(old.path()), KEYRING_JSON.as_bytes());
    let ring = Keyring::load(&keyring_path(old.path())).unwrap().unwrap();
    g.check("keyring decodes", ring == keyring(), || format!("{ring:?}"));
    for (entry, key) in ring.entries.iter().zip([[1u8; 32], [2; 32], [3; 32]]) {
        let unwrapped = kek.unwrap(entry).map(|k| *k == key);
        g.check(&entry.id, unwrapped.as_ref().ok() == Some(&true), || {
            format!("unwraps to another key: {unwrapped:?}")
        });
    }
    match open_keys(old.path(), &master, false, CREATED_MS) {
        Ok((keys, origin)) => {
            g.check("keyring origin", origin == KeyringOrigin::Loaded, || {
                format!("{origin:?}")
            });
            check_keys(&mut g, "keyring keys", &keys, [KID, LOOKUP, SEALED]);
            g.hex(
                "keyring keys: unique identity",
                &keys.unique_key().hash("alice").to_le_bytes(),
                UNIQUE_ALICE,
            );
        }
        Err(e) => g.check("keyring opens", false, || e.to_string()),
    }
    let derived = Keys::derive(&master);
    check_keys(
        &mut g,
        "derived keys",
        &derived,
        [LEGACY_KID, LEGACY_LOOKUP, LEGACY_SEALED],
    );
    g.hex(
        "derived keys: unique identity",
        &derived.unique_key().hash("alice").to_le_bytes(),
        LEGACY_UNIQUE_ALICE,
    );
    g.finish();
}

/// `keys` have the kid, make the lookup digest and open the sealed key of
/// the goldens.
fn check_keys(g: &mut Golden, name: &str, keys: &Keys, [kid, lookup, sealed]: [&str; 3]) {
    g.check(name, keys.kid() == kid, || format!("kid {}", keys.kid()));
    g.hex(
        &format!("{name}: lookup digest"),
        &keys.lookup_digest(LICENSE_KEY),
        lookup,
    );
    let opened = keys.unseal(&unhex(sealed), LICENSE_ID);
    g.check(
        name,
        opened
            .as_ref()
            .is_ok_and(|k| k.as_slice() == LICENSE_KEY.as_bytes()),
        || "the golden sealed license key does not open".into(),
    );
}

#[test]
fn a_retired_signing_entry_keeps_its_field_names_both_ways() {
    let entry = Entry {
        id: "0123456789abcdef".into(),
        purpose: Purpose::Signing,
        kek: KEK_ID.into(),
        wrapped: "d3JhcHBlZA==".into(),
        created_ms: 1,
        retired_ms: Some(2),
        publish_until_ms: Some(3),
    };
    let golden = r#"{"id":"0123456789abcdef","purpose":"signing","kek":"827888ece879838a","wrapped":"d3JhcHBlZA==","created_ms":1,"retired_ms":2,"publish_until_ms":3}"#;
    let mut g = Golden::default();
    g.text(
        "retired keyring entry",
        &serde_json::to_vec(&entry).unwrap(),
        golden,
    );
    g.check(
        "retired keyring entry decodes",
        serde_json::from_str::<Entry>(golden).ok() == Some(entry),
        String::new,
    );
    g.finish();
}

#[test]
fn a_master_key_file_opens_as_text_or_raw_bytes_and_new_ones_are_base64_lines() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    for (name, bytes) in [
        ("text", MASTER_KEY_FILE.as_bytes().to_vec()),
        ("raw", MASTER.to_vec()),
    ] {
        let file = root.path().join(format!("{name}.master-key"));
        write(&file, &bytes);
        let (key, _) = load_master_key(None, Some(&file), &data).unwrap();
        assert_eq!(key.bytes(), MASTER, "{name} master key file");
    }
    let (generated, _) = load_master_key(None, None, &data).unwrap();
    let text = std::fs::read_to_string(root.path().join("data.master-key")).unwrap();
    let line = text.strip_suffix('\n').expect("one line");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(line)
        .unwrap();
    assert_eq!(decoded, generated.bytes());
}

/// A license file as the server issued it for [`LICENSE_KEY`], bound to
/// `host-a`, signed by the keyring's key: customers keep these on disk.
const LICENSE_FILE: &str = r#"{"ciphertext":"5hVcPDOFqspA_RXEZbYPDxQetySDyu43YEux4rn-99zHfyVbtmYd-SWYbxGz2sNrAwvTMGpvdI4g58rXgCsPc5Rq7PtrLEgPWsxkT9ZKRAReCfUWPbh5FjdXUAbdaro18COcwweFtM-vrzeSW8xnag","fingerprint_bound":true,"format":"keymeter-license-file/v1","kid":"b62e867fa2f33afe","license_id":"lic_golden","nonce":"RsqJNKwXi6jmpd-n","salt":"5vOXGpGOgKyZEXnDv0646A","signature":"2rPnoUzo7wRRx0snec-jEaotNhgAtXtvlmURcdPnRpcuBid0BINGOjXczW8ZaV0mMbWZsIKjFQyjIpuEqvUsCg"}"#;
const LICENSE_FILE_CONTENTS: &str = r#"{"license":{"id":"lic_golden","status":"active"},"issued_at":1700000000,"expires_at":4102444800}"#;
/// The keyring's public key as published (clients may keep a copy).
const JWKS: &str = r#"{"keys":[{"alg":"EdDSA","crv":"Ed25519","kid":"b62e867fa2f33afe","kty":"OKP","use":"sig","x":"7UkoxijRwsbq6QM4kFmVYSlZJzpcY_k2NsFGFKyHN9E"}]}"#;

#[test]
fn an_issued_license_file_still_opens_and_new_ones_keep_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    write(&keyring_path(dir.path()), KEYRING_JSON.as_bytes());
    let (keys, _) = open_keys(
        dir.path(),
        &MasterKey::from_bytes(MASTER),
        false,
        CREATED_MS,
    )
    .unwrap();
    let mut g = Golden::default();
    g.text("jwks", keys.jwks().to_string().as_bytes(), JWKS);
    let client_keys = keymeter_client::Keys::from_jwks(JWKS).unwrap();
    let now_s = 1_800_000_000;
    let open = |file: &str| {
        keymeter_client::open_license_file(file, LICENSE_KEY, Some("host-a"), &client_keys, now_s)
    };
    let want: keymeter_client::LicenseFileContents =
        serde_json::from_str(LICENSE_FILE_CONTENTS).unwrap();
    let opened = open(LICENSE_FILE);
    g.check(
        "golden license file",
        opened.as_ref().ok() == Some(&want),
        || format!("opens to {opened:?}"),
    );

    let fresh = keymeter::crypto::seal_license_file(
        &keys,
        "lic_golden",
        LICENSE_KEY,
        Some("host-a"),
        LICENSE_FILE_CONTENTS.as_bytes(),
    );
    let golden: serde_json::Value = serde_json::from_str(LICENSE_FILE).unwrap();
    let fields = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    g.check(
        "license file fields",
        fields(&fresh) == fields(&golden),
        || format!("{:?}", fields(&fresh)),
    );
    for field in ["format", "kid", "license_id", "fingerprint_bound"] {
        g.check(field, fresh[field] == golden[field], || {
            format!("now {}", fresh[field])
        });
    }
    let reopened = open(&fresh.to_string());
    g.check(
        "fresh license file",
        reopened.as_ref().ok() == Some(&want),
        || format!("opens to {reopened:?}"),
    );
    g.finish();
}
