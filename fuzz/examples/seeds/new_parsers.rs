//! Seeds of the targets for the dedup snapshot and client credentials.

use keymeter::event::DedupKey;
use keymeter::projection::dedup::DedupIndex;

/// A snapshot with unattributed and attributed identities, the same
/// identities in the format with a tenant per entry, and in the format
/// before tenants.
pub fn dedup_snapshot(write: impl Fn(&str, &str, &[u8])) {
    let t = "dedup_snapshot";
    let mut index = DedupIndex::in_memory(100);
    let acme = index.tenant("product:acme");
    let key = index.tenant("key:0a1b2c3d4e5f");
    let claims = [("e1", 0), ("e2", acme), ("e3", key), ("e4", acme)];
    index.claim(
        claims.iter().enumerate().map(|(i, (id, tenant))| {
            (
                DedupKey::new("s", id),
                1_700_000_000_000 + i as i64,
                *tenant,
            )
        }),
        7,
    );
    let mut v3 = Vec::new();
    index.write_snapshot(&mut v3).unwrap();
    write(t, "tenants", &v3);
    let mut body = Vec::new();
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(&3u32.to_le_bytes());
    for name in ["", "key:0a1b2c3d4e5f", "product:acme"] {
        body.extend_from_slice(&(name.len() as u16).to_le_bytes());
        body.extend_from_slice(name.as_bytes());
    }
    body.extend_from_slice(&4u64.to_le_bytes());
    for (i, (id, position)) in [("e1", 0u32), ("e2", 2), ("e3", 1), ("e4", 2)]
        .into_iter()
        .enumerate()
    {
        body.extend_from_slice(&DedupKey::new("s", id).0);
        body.extend_from_slice(&(1_700_000_000_000 + i as i64).to_le_bytes());
        body.extend_from_slice(&position.to_le_bytes());
    }
    let mut v2 = b"KMDEDUP2".to_vec();
    v2.extend_from_slice(&body);
    v2.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    write(t, "tenant_per_entry", &v2);
    let mut body = Vec::new();
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(&2u64.to_le_bytes());
    for id in ["e1", "e2"] {
        body.extend_from_slice(&DedupKey::new("s", id).0);
        body.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
    }
    let mut v1 = b"KMDEDUP1".to_vec();
    v1.extend_from_slice(&body);
    v1.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    write(t, "before_tenants", &v1);
}

/// Header, fingerprint and lease token, split at 0xFF bytes.
pub fn client_credentials(write: impl Fn(&str, &str, &[u8])) {
    let t = "client_credentials";
    for (name, header, fp, token) in [
        (
            "license",
            "License lk_0123456789abcdef",
            "host-7f3a",
            "machine-secret-6f1c2a9e4b7d8c3f",
        ),
        ("bearer", "Bearer km_a1b2c3d4e5f6_secret", "ws-1", "short"),
        (
            "lowercase",
            "license   lk_x  ",
            "\u{7f}ctl",
            "AAAAAAAAAAAAAAAAAAAAAA~",
        ),
    ] {
        let mut bytes = header.as_bytes().to_vec();
        bytes.push(0xFF);
        bytes.extend_from_slice(fp.as_bytes());
        bytes.push(0xFF);
        bytes.extend_from_slice(token.as_bytes());
        write(t, name, &bytes);
    }
}
