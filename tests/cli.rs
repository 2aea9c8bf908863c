//! The command line as a shell user meets it: help that lists what a
//! command takes, and output into a pipe that closes early.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::{bin, Server, ADMIN_KEY};
use serde_json::json;

fn help(args: &[&str]) -> String {
    let out = common::run(args);
    common::assert_success(&out);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn offline_commands_list_only_the_options_they_use() {
    let serve = help(&["serve", "--help"]);
    assert!(serve.contains("--listen") && serve.contains("--kafka-brokers"));
    for command in [
        &["replay", "--help"][..],
        &["log", "verify", "--help"],
        &["audit", "verify", "--help"],
        &["keys", "rotate", "--help"],
    ] {
        let text = help(command);
        assert!(text.contains("--data-dir"), "{command:?}: {text}");
        for server_only in ["--listen", "--tls-cert", "--kafka-brokers", "--token-ttl"] {
            assert!(
                !text.contains(server_only),
                "{command:?} lists {server_only}: {text}"
            );
        }
    }
    let log_verify = help(&["log", "verify", "--help"]);
    assert!(!log_verify.contains("--master-key-file"), "{log_verify}");
}

/// Runs `command` with its stdout a pipe whose reading end is already
/// closed, as `keymeter … | head -0` does; returns its exit status and stderr.
fn into_closed_pipe(command: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A quiet end: status 0, or killed by SIGPIPE like `cat` (141 in a shell);
/// never a panic (status 101 and a backtrace).
fn assert_quiet_end(what: &str, status: std::process::ExitStatus, stderr: &str) {
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{what}: {status:?}: {stderr}"
    );
    assert!(!stderr.contains(common::PANIC_MARK), "{what}: {stderr}");
    assert!(stderr.is_empty(), "{what} printed: {stderr}");
}

#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let license = server
        .create_license(json!({"product": "app", "customer": "acme"}))
        .await;
    let id = license["id"].as_str().unwrap().to_owned();
    for args in [&["license", "show", &id][..], &["license", "list"]] {
        let (status, stderr) = into_closed_pipe(
            Command::new(bin())
                .args(args)
                .args(["--url", &server.base])
                .env("KEYMETER_ADMIN_KEY", ADMIN_KEY),
        );
        assert_quiet_end(&format!("{args:?}"), status, &stderr);
    }
    server.stop();
    let (status, stderr) = into_closed_pipe(
        Command::new(bin())
            .args(["log", "verify", "--data-dir"])
            .arg(dir.path()),
    );
    assert_quiet_end("log verify", status, &stderr);
}
