//! `manifest.json`: what a backup holds and how to check it. Pure: parsing,
//! the rules a listed path must follow, and comparing a file's size and
//! SHA-256 with what the manifest says.

use serde::{Deserialize, Serialize};

/// The manifest's name inside a backup directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// The format this version writes and reads.
pub const FORMAT: &str = "keymeter-backup/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// RFC 3339, when the backup was taken.
    pub created_at: String,
    /// Where the copied log ends: every record up to `head_seq` and no other.
    pub log: LogPosition,
    /// Every file of the backup but the manifest, in the order written.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPosition {
    pub head_seq: u64,
    /// Hex SHA-256 chain hash of record `head_seq` (zeros for an empty log).
    pub head_hash: String,
    pub records: u64,
    pub segments: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the backup (and to the data directory it restores to),
    /// `/`-separated.
    pub path: String,
    pub bytes: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Why a backup cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is not a keymeter backup manifest: {0}")]
    Unreadable(String),
    #[error("manifest.json has format {0:?}; this keymeter reads {FORMAT:?}")]
    Format(String),
    #[error("manifest.json lists {0:?}, which is not a path a backup may hold")]
    BadPath(String),
    #[error("manifest.json lists {0:?} twice")]
    Duplicate(String),
    #[error("{path} is corrupted: {bytes} bytes with SHA-256 {sha256}, but the manifest says {expected_bytes} bytes with SHA-256 {expected_sha256}")]
    Mismatch {
        path: String,
        bytes: u64,
        sha256: String,
        expected_bytes: u64,
        expected_sha256: String,
    },
}

impl Manifest {
    /// Parses and checks a manifest: its format, and that every listed path
    /// is one a backup may hold, once.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
        if m.format != FORMAT {
            return Err(ManifestError::Format(m.format));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &m.files {
            if !allowed_path(&f.path) {
                return Err(ManifestError::BadPath(f.path.clone()));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(ManifestError::Duplicate(f.path.clone()));
            }
        }
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serializes") + "\n"
    }

    /// Bytes of every listed file.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Whether a backup may hold `path`: relative, no `.`, `..` or empty part,
/// and under `log/` (segments), `keys/`, or the signed calls' nonce
/// journal. Restoring a manifest that names anything else could write
/// outside the target.
pub fn allowed_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let clean = parts.iter().all(|p| {
        !p.is_empty() && *p != "." && *p != ".." && !p.contains('\\') && !p.contains('\0')
    });
    if !clean {
        return false;
    }
    match parts.as_slice() {
        ["log", name] => name.ends_with(".seg"),
        ["keys", ..] => parts.len() >= 2,
        ["signature-nonces"] => true,
        _ => false,
    }
}

impl FileEntry {
    /// `Ok` when a file of `bytes` bytes hashing to `sha256` is this entry.
    pub fn check(&self, bytes: u64, sha256: &str) -> Result<(), ManifestError> {
        if bytes == self.bytes && sha256.eq_ignore_ascii_case(&self.sha256) {
            return Ok(());
        }
        Err(ManifestError::Mismatch {
            path: self.path.clone(),
            bytes,
            sha256: sha256.to_owned(),
            expected_bytes: self.bytes,
            expected_sha256: self.sha256.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(paths: &[&str]) -> String {
        let files: Vec<_> = paths
            .iter()
            .map(|p| serde_json::json!({"path": p, "bytes": 1, "sha256": "ab"}))
            .collect();
        serde_json::json!({
            "format": FORMAT,
            "created_at": "2026-01-01T00:00:00Z",
            "log": {"head_seq": 3, "head_hash": "00", "records": 3, "segments": 1},
            "files": files,
        })
        .to_string()
    }

    #[test]
    fn a_manifest_round_trips() {
        let m = Manifest::parse(&manifest(&[
            "log/00000000000000000001.seg",
            "keys/keyring.json",
            "signature-nonces",
        ]))
        .unwrap();
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        assert_eq!(m.total_bytes(), 3);
    }

    #[test]
    fn paths_that_could_leave_the_target_are_refused() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "log/../../x.seg",
            "keys/../../x",
            "log/./x.seg",
            "log//x.seg",
            "state/db",
            "log/LOCK",
            "keys",
            "keys\\..\\x",
            "",
        ] {
            assert!(!allowed_path(bad), "{bad:?}");
            assert_eq!(
                Manifest::parse(&manifest(&[bad])),
                Err(ManifestError::BadPath(bad.into()))
            );
        }
    }

    #[test]
    fn a_path_listed_twice_or_another_format_is_refused() {
        assert_eq!(
            Manifest::parse(&manifest(&["keys/a", "keys/a"])),
            Err(ManifestError::Duplicate("keys/a".into()))
        );
        let other = manifest(&[]).replace(FORMAT, "keymeter-backup/9");
        assert!(matches!(
            Manifest::parse(&other),
            Err(ManifestError::Format(_))
        ));
        assert!(matches!(
            Manifest::parse("{"),
            Err(ManifestError::Unreadable(_))
        ));
    }

    #[test]
    fn a_file_differing_in_size_or_hash_is_named() {
        let e = FileEntry {
            path: "log/00000000000000000001.seg".into(),
            bytes: 10,
            sha256: "aa".into(),
        };
        assert_eq!(e.check(10, "AA"), Ok(()));
        let err = e.check(10, "bb").unwrap_err();
        assert!(err
            .to_string()
            .contains("log/00000000000000000001.seg is corrupted"));
        assert!(e.check(9, "aa").is_err());
    }
}
