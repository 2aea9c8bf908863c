//! The structured inputs of the targets built with `arbitrary`. They live here
//! so that the seed generator (`examples/seed_corpus.rs`) can write them too.

/// Splits an input into three byte strings at its first two `0xFF` bytes
/// (missing parts are empty): for targets that take a few fields.
pub fn split3(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0xFF);
    let mut next = || parts.next().unwrap_or_default();
    (next(), next(), next())
}

/// `cloudevent_kafka_binary`: one Kafka message.
pub mod kafka {
    use libfuzzer_sys::arbitrary::{self, Arbitrary};

    /// Header names the decoder gives meaning to, so the fuzzer need not guess them.
    pub const NAMES: [&str; 12] = [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_subject",
        "ce_time",
        "content-type",
        "CE_ID",
        "ce_data",
        "ce_datacontenttype",
        "ce_",
        "Content-Type",
    ];

    /// Values that make the headers above valid.
    pub const VALUES: [&str; 12] = [
        "1.0",
        "evt-1",
        "my-app",
        "api_call",
        "customer-1",
        "2026-05-28T20:00:00.250Z",
        "application/json",
        "evt-2",
        "{\"n\":1}",
        "text/plain",
        "x",
        "application/cloudevents+json",
    ];

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum Name {
        /// An index into [`NAMES`].
        Known(u8),
        Other(String),
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum Value {
        Null,
        /// An index into [`VALUES`].
        Known(u8),
        Bytes(Vec<u8>),
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub struct Message {
        pub headers: Vec<(Name, Value)>,
        pub value: Option<Vec<u8>>,
    }
}

/// `log_frame`: the segment files of a log directory.
pub mod log {
    use libfuzzer_sys::arbitrary::{self, Arbitrary};

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum Input {
        /// The bytes of the only segment, `00000000000000000001.seg`.
        Raw { valid_header: bool, bytes: Vec<u8> },
        /// Frames encoded the way the writer does, with defects.
        Built {
            segments: Vec<Vec<FrameSpec>>,
            tail: Vec<u8>,
            cut: u16,
            flip: Option<(u16, u8)>,
        },
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub struct FrameSpec {
        pub payload: Vec<u8>,
        pub batch_end: bool,
        /// Mostly no defect; a few values pick one (see [`FrameSpec::defect`]).
        pub defect: u8,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Defect {
        None,
        SeqSkew,
        BadCrc,
        BadHash,
        UnknownFlag,
    }

    impl FrameSpec {
        pub fn defect(&self) -> Defect {
            match self.defect {
                1 => Defect::SeqSkew,
                2 => Defect::BadCrc,
                3 => Defect::BadHash,
                4 => Defect::UnknownFlag,
                _ => Defect::None,
            }
        }
    }
}

/// `verdict_token`: tokens, license files and JWKS documents.
pub mod token {
    use ed25519_dalek::SigningKey;
    use libfuzzer_sys::arbitrary::{self, Arbitrary};

    /// The published test keys, `k1` and `k2`.
    pub fn signing_key(kid: &str) -> Option<SigningKey> {
        match kid {
            "k1" => Some(SigningKey::from_bytes(&[1; 32])),
            "k2" => Some(SigningKey::from_bytes(&[2; 32])),
            _ => None,
        }
    }

    /// Around the test tokens' issue time (2026-09-21).
    pub const NOW: i64 = 1_790_000_000;

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum Now {
        Near(i32),
        Any(i64),
    }

    impl Now {
        pub fn get(&self) -> i64 {
            match *self {
                Now::Near(d) => NOW + i64::from(d),
                Now::Any(t) => t,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum Kid {
        K1,
        K2,
        Other(String),
    }

    impl Kid {
        pub fn name(&self) -> &str {
            match self {
                Kid::K1 => "k1",
                Kid::K2 => "k2",
                Kid::Other(s) => s,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum ClaimsText {
        Raw(Vec<u8>),
        Fields {
            iat: Now,
            exp: Now,
            nonce: Option<String>,
            valid: bool,
            code: String,
            entitlements: Vec<String>,
            quota: Option<(String, f64, f64, Option<String>)>,
            seats: Option<(u32, u32)>,
        },
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum HeaderText {
        EdDsa(Kid),
        Raw(Vec<u8>),
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum FilePlaintext {
        Raw(Vec<u8>),
        Fields { issued_at: Now, expires_at: Now },
    }

    #[derive(Debug, Clone, PartialEq, Arbitrary)]
    pub enum Input {
        /// Any text as a token.
        Token {
            token: String,
            now: Now,
            nonce: Option<String>,
        },
        /// A token signed here (by `signer`, whatever its header says).
        Signed {
            header: HeaderText,
            claims: ClaimsText,
            signer: Kid,
            now: Now,
            /// Then flip these bits of this byte of the token.
            tamper: Option<(u16, u8)>,
            grace_s: i64,
            later: Now,
        },
        /// Any text as a license file.
        File {
            json: String,
            license_key: String,
            fingerprint: Option<String>,
            now: Now,
        },
        /// A license file sealed and signed here.
        SignedFile {
            kid: Kid,
            license_id: String,
            bind: Option<String>,
            salt: Vec<u8>,
            nonce: Vec<u8>,
            plaintext: FilePlaintext,
            license_key: String,
            open_with: Option<String>,
            now: Now,
        },
        /// Any text as a JWKS document.
        Jwks(String),
    }
}
