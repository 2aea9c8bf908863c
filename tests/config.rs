//! Settings come from a TOML file, `KEYMETER_*` variables and flags, in that
//! order of precedence, and bad settings stop the start with a clear message.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// Starts `keymeter serve` and returns the URL it reports listening on.
fn listening_url(cmd: &mut Command) -> (std::process::Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with(LISTENING))
        .expect("server reports its address");
    (child, line.trim_start_matches(LISTENING).to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("keymeter.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:{file_port}\"\nbootstrap_admin_key = \"{ADMIN_KEY}\"\n",
            dir.path().join("from-file").display()
        ),
    )
    .unwrap();
    let base = || {
        let mut c = Command::new(bin());
        c.arg("serve")
            .env("KEYMETER_CONFIG", &config)
            .env_remove("KEYMETER_LISTEN")
            .env_remove("KEYMETER_DATA_DIR");
        c
    };
    let (mut a, url) = listening_url(&mut base());
    assert_eq!(url, format!("http://127.0.0.1:{file_port}"));
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(dir.path().join("from-file/log").is_dir());

    let (mut b, url) =
        listening_url(base().env("KEYMETER_LISTEN", format!("127.0.0.1:{env_port}")));
    assert_eq!(url, format!("http://127.0.0.1:{env_port}"));
    b.kill().unwrap();
    b.wait().unwrap();

    let (mut c, url) = listening_url(
        base()
            .env("KEYMETER_LISTEN", format!("127.0.0.1:{env_port}"))
            .args(["--listen", &format!("127.0.0.1:{flag_port}")]),
    );
    assert_eq!(url, format!("http://127.0.0.1:{flag_port}"));
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn bad_settings_stop_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "lissten = \"127.0.0.1:1\"\n").unwrap();
    let out = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lissten"), "{err}");

    let out = run(&[
        "serve",
        "--bootstrap-admin-key",
        "short",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 24 characters"));
}
