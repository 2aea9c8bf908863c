//! `keymeter status` against a running server, and against none.

mod common;

use common::{bin, Server, ADMIN_KEY};

fn status(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin())
        .arg("status")
        .args(args)
        .env_remove("KEYMETER_API_KEY")
        .env_remove("KEYMETER_URL")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn status_reports_a_running_server_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let head = server.get_json(ADMIN_KEY, "/readyz").await["logHeadSeq"]
        .as_u64()
        .unwrap();

    let (code, text) = status(&["--url", &server.base, "--api-key", ADMIN_KEY]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("health:   ok"), "{text}");
    assert!(text.contains("ready:    yes"), "{text}");
    assert!(
        text.contains(&format!("log:      head seq {head}")),
        "{text}"
    );
    assert!(text.contains("kafka:    not configured"), "{text}");

    let (code, text) = status(&["--url", &server.base, "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["healthy"], true);
    assert!(
        report["readiness"].get("logHeadSeq").is_none(),
        "needs a key"
    );

    let base = server.base.clone();
    server.stop();
    let (code, text) = status(&["--url", &base]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("health:   FAILING"), "{text}");
    assert!(text.contains("cannot connect"), "{text}");
}
