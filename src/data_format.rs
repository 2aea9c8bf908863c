//! The data directory's format version, in `DATA/FORMAT`: which release's
//! records the log may hold. A build refuses at start a directory written
//! in a newer format than it reads, naming both versions, instead of
//! failing later on a record it cannot decode; an older format is read
//! (old records are upcast as they are decoded) and the file is moved up
//! to this build's format.
//!
//! - 1: before plans (no `FORMAT` file).
//! - 2: plans and migrations (`PlanSaved`, `MigrationSaved`,
//!   `LicenseMigrated` records; the license document's `plan`).

use std::path::Path;

/// The format this build writes.
pub const DATA_FORMAT: u32 = 2;
pub const FILE_NAME: &str = "FORMAT";

/// What a `FORMAT` file says: the format and the release that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub format: u32,
    pub release: String,
}

impl Marker {
    pub fn current() -> Marker {
        Marker {
            format: DATA_FORMAT,
            release: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    pub fn render(&self) -> String {
        format!(
            "keymeter data format {}\nwritten by keymeter {}\n",
            self.format, self.release
        )
    }

    pub fn parse(text: &str) -> Option<Marker> {
        let mut lines = text.lines();
        let format = lines
            .next()?
            .strip_prefix("keymeter data format ")?
            .trim()
            .parse()
            .ok()?;
        let release = lines
            .next()
            .and_then(|l| l.strip_prefix("written by keymeter "))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Some(Marker { format, release })
    }
}

/// Why this build must not open a directory marked `found`, if it must not.
pub fn refusal(found: &Marker) -> Option<String> {
    (found.format > DATA_FORMAT).then(|| {
        format!(
            "the data directory is in format {} (written by keymeter {}), newer than format \
             {DATA_FORMAT}, the newest this build (keymeter {}) reads: start keymeter {} or \
             later",
            found.format,
            found.release,
            env!("CARGO_PKG_VERSION"),
            found.release
        )
    })
}

/// Refuses a directory in a newer format; marks an older (or unmarked)
/// one with this build's format, synced.
pub fn check_and_mark(data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join(FILE_NAME);
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            Marker::parse(&text)
                .ok_or_else(|| format!("{} is not a data format marker", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if let Some(reason) = found.as_ref().and_then(refusal) {
        return Err(reason);
    }
    if found.is_some_and(|m| m == Marker::current()) {
        return Ok(());
    }
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, Marker::current().render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_format_is_refused_naming_both_versions_and_older_ones_are_moved_up() {
        let newer = Marker {
            format: DATA_FORMAT + 1,
            release: "9.9.9".into(),
        };
        let why = refusal(&newer).unwrap();
        assert!(
            why.contains(&format!("format {}", DATA_FORMAT + 1)),
            "{why}"
        );
        assert!(
            why.contains("9.9.9") && why.contains(env!("CARGO_PKG_VERSION")),
            "{why}"
        );
        assert!(refusal(&Marker::current()).is_none());
        assert_eq!(Marker::parse(&newer.render()), Some(newer.clone()));

        let dir = tempfile::tempdir().unwrap();
        check_and_mark(dir.path()).unwrap();
        let marked = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(Marker::parse(&marked), Some(Marker::current()));
        std::fs::write(dir.path().join(FILE_NAME), newer.render()).unwrap();
        assert!(check_and_mark(dir.path()).unwrap_err().contains("9.9.9"));
    }
}
