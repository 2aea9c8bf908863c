//! Where the master key comes from: `KEYMETER_MASTER_KEY` (base64), a file
//! (`--master-key-file`), or — the embedded default — a key generated on
//! first start at `<data_dir>.master-key`, beside the data directory and
//! never inside it (a backup of the data directory alone must not carry the
//! key that opens its secrets).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;
use zeroize::Zeroizing;

/// 32 secret bytes, wiped from memory on drop, never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// Accepts standard or URL-safe base64, padded or not.
    pub fn from_base64(text: &str) -> Result<MasterKey, String> {
        let text = text.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| "the master key is not base64".to_owned())?;
        let decoded = Zeroizing::new(decoded);
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| format!("the master key must be 32 bytes, found {}", decoded.len()))?;
        Ok(MasterKey::from_bytes(bytes))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// A secret string (the `KEYMETER_MASTER_KEY` value, the bootstrap admin
/// key) that never prints and is wiped when dropped.
#[derive(Clone)]
pub struct SecretString(pub Zeroizing<String>);

impl From<&str> for SecretString {
    fn from(s: &str) -> SecretString {
        SecretString::new(s.to_owned())
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(SecretString::new)
    }
}

impl SecretString {
    pub fn new(s: String) -> SecretString {
        SecretString(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the master key in use came from (for the start-up log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    Environment,
    File(PathBuf),
    /// Generated on this start at this path.
    Generated(PathBuf),
}

/// `<data_dir>.master-key`: the default key file, beside the data directory.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let mut name = absolute
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "keymeter-data".into());
    name.push(".master-key");
    absolute.with_file_name(name)
}

pub fn is_inside(path: &Path, dir: &Path) -> bool {
    let norm = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_owned())
    };
    let dir = norm(dir);
    let path = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => norm(parent).join(name),
        _ => norm(path),
    };
    path.starts_with(&dir)
}

/// Loads the master key: the environment value wins, then the file, then the
/// default file beside the data directory (created on first start).
pub fn load_master_key(
    env_base64: Option<&str>,
    file: Option<&Path>,
    data_dir: &Path,
) -> Result<(MasterKey, MasterKeySource), String> {
    if let Some(text) = env_base64 {
        return Ok((
            MasterKey::from_base64(text).map_err(|e| format!("KEYMETER_MASTER_KEY: {e}"))?,
            MasterKeySource::Environment,
        ));
    }
    let (path, explicit) = match file {
        Some(p) => (p.to_owned(), true),
        None => (default_key_path(data_dir), false),
    };
    if is_inside(&path, data_dir) {
        return Err(format!(
            "the master key file {} is inside the data directory {}; keep it elsewhere",
            path.display(),
            data_dir.display()
        ));
    }
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let key = match <[u8; 32]>::try_from(bytes.as_slice()) {
                Ok(raw) => MasterKey::from_bytes(raw),
                Err(_) => {
                    let text = std::str::from_utf8(&bytes)
                        .map_err(|_| format!("{}: not base64 text", path.display()))?;
                    MasterKey::from_base64(text).map_err(|e| format!("{}: {e}", path.display()))?
                }
            };
            warn_if_readable_by_others(&path);
            Ok((key, MasterKeySource::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            let key = generate_key_file(&path)?;
            Ok((key, MasterKeySource::Generated(path)))
        }
        Err(e) => Err(format!(
            "cannot read master key file {}: {e}",
            path.display()
        )),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the master key file is readable by group or others; chmod 600 it");
        }
    }
}

/// Creates a new random master key file (mode 0600); fails if it exists.
pub fn generate_key_file(path: &Path) -> Result<MasterKey, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(bytes.as_mut());
    let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create master key file {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write master key file {}: {e}", path.display()))?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(MasterKey::from_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_sits_beside_the_data_directory_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (a, src) = load_master_key(None, None, &data).unwrap();
        let path = dir.path().join("data.master-key");
        assert_eq!(src, MasterKeySource::Generated(path.clone()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, src) = load_master_key(None, None, &data).unwrap();
        assert_eq!(src, MasterKeySource::File(path));
        assert_eq!(a.bytes(), b.bytes());
    }

    #[test]
    fn a_key_file_inside_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let inside = data.join("mk");
        std::fs::write(&inside, [7u8; 32]).unwrap();
        assert!(load_master_key(None, Some(&inside), &data).is_err());
    }

    #[test]
    fn environment_key_must_be_32_bytes_of_base64() {
        let dir = tempfile::tempdir().unwrap();
        let ok = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let (_, src) = load_master_key(Some(&ok), None, dir.path()).unwrap();
        assert_eq!(src, MasterKeySource::Environment);
        assert!(load_master_key(Some("c2hvcnQ="), None, dir.path()).is_err());
        assert!(load_master_key(Some("!!"), None, dir.path()).is_err());
    }

    #[test]
    fn a_path_inside_the_data_directory_is_recognised_through_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        assert!(is_inside(&data.join("anchors.jsonl"), &data));
        assert!(is_inside(&data.join("x/../anchors.jsonl"), &data));
        assert!(!is_inside(&dir.path().join("anchors.jsonl"), &data));
        assert!(!is_inside(&dir.path().join("data-anchors.jsonl"), &data));
    }
}
