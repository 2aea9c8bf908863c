//! Writes the seed corpus, `fuzz/seeds/<target>/`: a few valid inputs per
//! target for the fuzzer to start from. Deterministic; run it again after a
//! change to a target's input format:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::Signer;
use keymeter::log::{Log, LogConfig, SEGMENT_HEADER_LEN};
use keymeter::meter::MeterDef;
use keymeter::record::{AsJson, Audit, EventRecord, OffsetDelta, Record, RejectedRecord};
use keymeter_client::{license_file_key, license_file_signing_input, LicenseFile};
use keymeter_fuzz::input::{kafka, log, token};
use keymeter_fuzz::seed::Encoder;
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};

const EVENT: &str = r#"{"specversion":"1.0","id":"evt-1","source":"my-app","type":"api_call","subject":"customer-1","time":"2026-05-28T20:00:00.250Z","data":{"tokens":1200,"model":"large"}}"#;

fn seeds_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(seeds_dir(target).join(name), bytes).unwrap();
}

/// Writes a structured seed after checking that it decodes to the value meant.
fn write_structured<T>(target: &str, name: &str, enc: &Encoder, meant: &T)
where
    T: for<'a> Arbitrary<'a> + PartialEq + Debug,
{
    let bytes = enc.finish();
    let decoded = T::arbitrary_take_rest(Unstructured::new(&bytes)).expect("seed decodes");
    assert_eq!(
        &decoded, meant,
        "seed {target}/{name} decodes to something else"
    );
    write(target, name, &bytes);
}

fn http() {
    let t = "cloudevent_http";
    // Selector byte: 0 application/json, 1 cloudevents+json, 2 cloudevents-batch+json.
    write(
        t,
        "single_json",
        &[[0].as_slice(), EVENT.as_bytes()].concat(),
    );
    write(
        t,
        "single_cloudevent",
        &[[1].as_slice(), EVENT.as_bytes()].concat(),
    );
    let batch = format!(
        r#"[{EVENT},{{"specversion":"1.0","id":"evt-2","source":"my-app","type":"api_call","subject":"customer-2"}},{{"specversion":"0.3","id":"x"}},{EVENT}]"#
    );
    write(t, "batch", &[[2].as_slice(), batch.as_bytes()].concat());
    write(
        t,
        "array_as_json",
        &[[0].as_slice(), batch.as_bytes()].concat(),
    );
}

fn kafka() {
    use kafka::{Message, Name, Value};
    let t = "cloudevent_kafka_binary";
    let known = |name: u8, value: u8| (Name::Known(name), Value::Known(value));
    let binary = Message {
        headers: vec![
            known(0, 0),
            known(1, 1),
            known(2, 2),
            known(3, 3),
            known(4, 4),
            known(5, 5),
            known(6, 6),
        ],
        value: Some(br#"{"tokens":3}"#.to_vec()),
    };
    let text_data = Message {
        headers: vec![
            known(0, 0),
            known(1, 1),
            known(2, 2),
            known(3, 3),
            known(4, 4),
            (
                Name::Other("Content-Type".into()),
                Value::Bytes(b"text/plain".to_vec()),
            ),
        ],
        value: Some(b"plain bytes".to_vec()),
    };
    let structured = Message {
        headers: vec![known(11, 11)],
        value: Some(EVENT.as_bytes().to_vec()),
    };
    for (name, msg) in [
        ("binary_json", binary),
        ("binary_text", text_data),
        ("structured", structured),
    ] {
        let mut enc = Encoder::new();
        for (n, v) in &msg.headers {
            enc.item();
            match n {
                Name::Known(i) => enc.variant(0, 2).u8(*i),
                Name::Other(s) => enc.variant(1, 2).string(s),
            };
            match v {
                Value::Null => enc.variant(0, 3),
                Value::Known(i) => enc.variant(1, 3).u8(*i),
                Value::Bytes(b) => enc.variant(2, 3).byte_vec(b),
            };
        }
        enc.end();
        match &msg.value {
            Some(v) => enc.some().byte_vec(v),
            None => enc.none(),
        };
        write_structured(t, name, &enc, &msg);
    }
}

/// The segment a real log writes for two batches of records.
fn real_segment() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    let event = Record::Event(EventRecord {
        received_ms: 1_780_000_000_000,
        time_ms: 1_780_000_000_000,
        raw: EVENT.into(),
    })
    .encode();
    let rejected = Record::Rejected(RejectedRecord {
        received_ms: 1,
        origin: "http".into(),
        index: Some(2),
        position: None,
        code: "C".into(),
        message: "m".into(),
        raw: b"{}".to_vec(),
        truncated: false,
    })
    .encode();
    log.append_batch(&[event.as_slice(), rejected.as_slice()])
        .unwrap();
    log.append_batch(&[b"x".as_slice()]).unwrap();
    drop(log);
    std::fs::read(tmp.path().join("00000000000000000001.seg")).unwrap()
}

fn log_frame() {
    use log::{FrameSpec, Input};
    let t = "log_frame";
    let segment = real_segment();

    let raw = Input::Raw {
        valid_header: true,
        bytes: segment[SEGMENT_HEADER_LEN..].to_vec(),
    };
    let torn = Input::Raw {
        valid_header: false,
        bytes: segment[..segment.len() - 3].to_vec(),
    };
    for (name, input) in [("real_segment", raw), ("torn_tail", torn)] {
        let Input::Raw {
            valid_header,
            bytes,
        } = &input
        else {
            unreachable!()
        };
        let mut enc = Encoder::new();
        enc.variant(0, 2).bool(*valid_header).byte_vec(bytes);
        write_structured(t, name, &enc, &input);
    }

    let frame = |payload: &[u8], batch_end: bool| FrameSpec {
        payload: payload.to_vec(),
        batch_end,
        defect: 0,
    };
    let two_segments = Input::Built {
        segments: vec![
            vec![frame(b"a", false), frame(b"bc", true)],
            vec![frame(b"d", true), frame(b"e", false)],
        ],
        tail: b"\x05\x00\x00\x00garbage".to_vec(),
        cut: 0,
        flip: None,
    };
    let flipped = Input::Built {
        segments: vec![vec![
            frame(b"a", true),
            frame(b"b", false),
            frame(b"c", true),
        ]],
        tail: Vec::new(),
        cut: 0,
        flip: Some((30, 0x10)),
    };
    for (name, input) in [("two_segments", two_segments), ("bit_flip", flipped)] {
        let Input::Built {
            segments,
            tail,
            cut,
            flip,
        } = &input
        else {
            unreachable!()
        };
        let mut enc = Encoder::new();
        enc.variant(1, 2);
        for frames in segments {
            enc.item();
            for f in frames {
                enc.item()
                    .byte_vec(&f.payload)
                    .bool(f.batch_end)
                    .u8(f.defect);
            }
            enc.end();
        }
        enc.end().byte_vec(tail).u16(*cut);
        match flip {
            Some((at, mask)) => enc.some().u16(*at).u8(*mask),
            None => enc.none(),
        };
        write_structured(t, name, &enc, &input);
    }
}

fn log_record() {
    let t = "log_record";
    let audit = Audit {
        actor: Some("admin".into()),
        at_ms: 1_780_000_000_000,
        request_id: Some("req-1".into()),
    };
    let meter: MeterDef = serde_json::from_value(serde_json::json!({
        "slug": "tokens", "eventType": "api_call", "aggregation": "SUM",
        "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}
    }))
    .unwrap();
    let records = [
        (
            "event",
            Record::Event(EventRecord {
                received_ms: 1_780_000_000_000,
                time_ms: 1_780_000_000_000,
                raw: EVENT.into(),
            }),
        ),
        (
            "rejected",
            Record::Rejected(RejectedRecord {
                received_ms: 1_780_000_000_000,
                origin: "kafka".into(),
                index: Some(3),
                position: None,
                code: "MALFORMED_JSON".into(),
                message: "not JSON".into(),
                raw: b"\xff{".to_vec(),
                truncated: false,
            }),
        ),
        (
            "meter_created",
            Record::MeterCreated {
                meter: AsJson::new(meter),
                audit: audit.clone(),
            },
        ),
        (
            "source_offsets",
            Record::SourceOffsets(OffsetDelta {
                topic: "usage".into(),
                partition: 3,
                from: 100,
                to: 164,
            }),
        ),
        (
            "seat_heartbeat",
            Record::SeatHeartbeat {
                license_id: "lic_1".into(),
                seat_id: "seat-1".into(),
                at_ms: 1_780_000_000_000,
                expires_ms: Some(1_780_000_060_000),
            },
        ),
        (
            "license_revoked",
            Record::LicenseRevoked {
                id: "lic_1".into(),
                reason: Some("chargeback".into()),
                audit,
            },
        ),
    ];
    for (name, record) in records {
        write(t, name, &record.encode());
    }
}

fn signed_token(claims: &serde_json::Value) -> String {
    let key = token::signing_key("k1").unwrap();
    let h = B64.encode(r#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#);
    let input = format!("{h}.{}", B64.encode(claims.to_string()));
    format!(
        "{input}.{}",
        B64.encode(key.sign(input.as_bytes()).to_bytes())
    )
}

fn signed_file() -> String {
    let (salt, nonce) = ([7u8; 16], [9u8; 12]);
    let key = license_file_key("lk_secret", &salt, Some("machine-a"));
    let plaintext = serde_json::json!({"license": {"id": "lic_1"},
        "issued_at": token::NOW, "expires_at": token::NOW + 86_400});
    let ct = Aes256Gcm::new(&key.into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext.to_string().as_bytes(),
                aad: b"lic_1",
            },
        )
        .unwrap();
    let mut f = LicenseFile {
        format: keymeter_client::LICENSE_FILE_FORMAT.into(),
        kid: "k1".into(),
        license_id: "lic_1".into(),
        fingerprint_bound: true,
        salt: B64.encode(salt),
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ct),
        signature: String::new(),
    };
    let key = token::signing_key("k1").unwrap();
    f.signature = B64.encode(
        key.sign(license_file_signing_input(&f).as_bytes())
            .to_bytes(),
    );
    serde_json::to_string(&f).unwrap()
}

fn verdict_token() {
    use token::{ClaimsText, FilePlaintext, HeaderText, Input, Kid, Now};
    let t = "verdict_token";
    let now = |enc: &mut Encoder, n: &Now| {
        match n {
            Now::Near(d) => enc.variant(0, 2).i32(*d),
            Now::Any(v) => enc.variant(1, 2).i64(*v),
        };
    };
    let kid = |enc: &mut Encoder, k: &Kid| {
        match k {
            Kid::K1 => enc.variant(0, 3),
            Kid::K2 => enc.variant(1, 3),
            Kid::Other(s) => enc.variant(2, 3).string(s),
        };
    };
    let opt_string = |enc: &mut Encoder, s: &Option<String>| {
        match s {
            Some(s) => enc.some().string(s),
            None => enc.none(),
        };
    };

    let claims = serde_json::json!({"iss": "keymeter", "sub": "lic_1", "iat": token::NOW,
        "exp": token::NOW + 300, "nonce": "n-1", "valid": true, "code": "VALID",
        "entitlements": ["pro"], "quota": {"meter": "tokens", "used": 10.0, "limit": 100.0,
        "period_end": null}, "seats": {"used": 1, "max": 10}, "expires_at": null});
    let raw_token = Input::Token {
        token: signed_token(&claims),
        now: Now::Near(10),
        nonce: Some("n-1".into()),
    };
    let signed = Input::Signed {
        header: HeaderText::EdDsa(Kid::K1),
        claims: ClaimsText::Fields {
            iat: Now::Near(0),
            exp: Now::Near(300),
            nonce: Some("n-1".into()),
            valid: true,
            code: "VALID".into(),
            entitlements: vec!["pro".into()],
            quota: Some(("tokens".into(), 10.0, 100.0, None)),
            seats: Some((1, 10)),
        },
        signer: Kid::K1,
        now: Now::Near(5),
        tamper: None,
        grace_s: 3600,
        later: Now::Near(1800),
    };
    let file = Input::File {
        json: signed_file(),
        license_key: "lk_secret".into(),
        fingerprint: Some("machine-a".into()),
        now: Now::Near(60),
    };
    let sealed = Input::SignedFile {
        kid: Kid::K2,
        license_id: "lic_2".into(),
        bind: None,
        salt: vec![1, 2, 3],
        nonce: vec![4; 12],
        plaintext: FilePlaintext::Fields {
            issued_at: Now::Near(0),
            expires_at: Now::Near(86_400),
        },
        license_key: "lk_other".into(),
        open_with: Some("machine-b".into()),
        now: Now::Near(30),
    };
    let jwks = Input::Jwks(
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k3","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#
            .into(),
    );

    for (name, input) in [
        ("token", raw_token),
        ("signed_claims", signed),
        ("license_file", file),
        ("sealed_file", sealed),
        ("jwks", jwks),
    ] {
        let mut enc = Encoder::new();
        match &input {
            Input::Token {
                token,
                now: n,
                nonce,
            } => {
                enc.variant(0, 5).string(token);
                now(&mut enc, n);
                opt_string(&mut enc, nonce);
            }
            Input::Signed {
                header,
                claims,
                signer,
                now: n,
                tamper,
                grace_s,
                later,
            } => {
                enc.variant(1, 5);
                match header {
                    HeaderText::EdDsa(k) => {
                        enc.variant(0, 2);
                        kid(&mut enc, k);
                    }
                    HeaderText::Raw(b) => {
                        enc.variant(1, 2).byte_vec(b);
                    }
                }
                let ClaimsText::Fields {
                    iat,
                    exp,
                    nonce,
                    valid,
                    code,
                    entitlements,
                    quota,
                    seats,
                } = claims
                else {
                    unreachable!()
                };
                enc.variant(1, 2);
                now(&mut enc, iat);
                now(&mut enc, exp);
                opt_string(&mut enc, nonce);
                enc.bool(*valid).string(code);
                for e in entitlements {
                    enc.item().string(e);
                }
                enc.end();
                match quota {
                    Some((meter, used, limit, end)) => {
                        enc.some().string(meter).f64(*used).f64(*limit);
                        opt_string(&mut enc, end);
                    }
                    None => {
                        enc.none();
                    }
                }
                match seats {
                    Some((used, max)) => enc.some().u32(*used).u32(*max),
                    None => enc.none(),
                };
                kid(&mut enc, signer);
                now(&mut enc, n);
                match tamper {
                    Some((at, mask)) => enc.some().u16(*at).u8(*mask),
                    None => enc.none(),
                };
                enc.i64(*grace_s);
                now(&mut enc, later);
            }
            Input::File {
                json,
                license_key,
                fingerprint,
                now: n,
            } => {
                enc.variant(2, 5).string(json).string(license_key);
                opt_string(&mut enc, fingerprint);
                now(&mut enc, n);
            }
            Input::SignedFile {
                kid: k,
                license_id,
                bind,
                salt,
                nonce,
                plaintext,
                license_key,
                open_with,
                now: n,
            } => {
                enc.variant(3, 5);
                kid(&mut enc, k);
                enc.string(license_id);
                opt_string(&mut enc, bind);
                enc.byte_vec(salt).byte_vec(nonce);
                match plaintext {
                    FilePlaintext::Raw(b) => {
                        enc.variant(0, 2).byte_vec(b);
                    }
                    FilePlaintext::Fields {
                        issued_at,
                        expires_at,
                    } => {
                        enc.variant(1, 2);
                        now(&mut enc, issued_at);
                        now(&mut enc, expires_at);
                    }
                }
                enc.string(license_key);
                opt_string(&mut enc, open_with);
                now(&mut enc, n);
            }
            Input::Jwks(json) => {
                enc.variant(4, 5).rest(json);
            }
        }
        write_structured(t, name, &enc, &input);
    }
}

fn signature_header() {
    let t = "signature_header";
    let req = keymeter::signing::RequestParts {
        method: "POST",
        path: "/api/v1/events",
        query: "",
        body: b"{}",
    };
    let signed = keymeter::signing::sign(
        "kss_7mY3q0d1bX2n9sV4cR8tL5wZ6hJ0kP1a",
        "a1b2c3d4e5f6",
        1_767_225_600,
        "n-0123456789abcdef",
        &req,
    );
    let value = signed.to_header_value();
    write(t, "signed", value.as_bytes());
    let v1 = value.rsplit_once("v1=").unwrap().1;
    write(
        t,
        "shuffled",
        format!(
            "v1={},n=n-0123456789abcdef ,  t=1767225600,k=a1b2c3d4e5f6,v2=zz",
            v1.to_uppercase()
        )
        .as_bytes(),
    );
    write(t, "missing_v1", b"k=abc, t=100, n=0123456789abcdef");
}

#[path = "seeds/new_parsers.rs"]
mod new_parsers;

#[path = "seeds/counter_block.rs"]
mod counter_block;

fn main() {
    new_parsers::dedup_snapshot(write);
    new_parsers::client_credentials(write);
    counter_block::counter_block(write);
    http();
    kafka();
    log_frame();
    log_record();
    verdict_token();
    signature_header();
    println!(
        "seeds written to {}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .display()
    );
}
