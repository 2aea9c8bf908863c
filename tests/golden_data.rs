//! Data directories written by earlier releases (`tests/golden_data/*`,
//! made by `scripts/golden-data.sh` with each release's binary: log, keys
//! and master key only) open with this build: the log verifies, the server
//! starts (rebuilding every projection from the log), answers exactly what
//! the release answered, and answers the same again after `keymeter
//! replay`; the directory is then marked with this build's format.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn golden_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden_data");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

/// `v` with every number as a float: the script's `jq` writes `3.0` as
/// `3`, which is the same JSON number.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

async fn assert_answers(server: &Server, want: &serde_json::Map<String, Value>, when: &str) {
    for (path, answer) in want {
        let got = server.get_json(ADMIN_KEY, path).await;
        assert_eq!(
            numbers_as_floats(&got),
            numbers_as_floats(answer),
            "{when}: {path} answers differently"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_data_directory_opens_verifies_replays_and_answers_as_it_did() {
    let dirs = golden_dirs();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"format-1".to_owned()) && names.contains(&"format-2".to_owned()));
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let root = tempfile::tempdir().unwrap();
        copy_dir(&dir, root.path());
        let data = root.path().join("data");
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("answers.json")).unwrap())
                .unwrap();
        let want = want.as_object().unwrap();

        let verify = run(&["log", "verify", "--data-dir", data.to_str().unwrap()]);
        assert_success(&verify);
        let server = Server::start(&data);
        assert_answers(&server, want, &format!("{name} opened")).await;
        server.stop();
        assert_success(&replay(&data));
        let server = Server::start(&data);
        assert_answers(&server, want, &format!("{name} replayed")).await;
        server.stop();
        let marker = std::fs::read_to_string(data.join("FORMAT")).unwrap();
        let marker = keymeter::data_format::Marker::parse(&marker).unwrap();
        assert_eq!(marker, keymeter::data_format::Marker::current(), "{name}");
    }
}
