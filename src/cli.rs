//! The command line's shape: every subcommand and its arguments (clap).
//! `main.rs` runs what these describe.

use clap::{Parser, Subcommand};
use keymeter::config::ConfigArgs;

use crate::cli_logging::LogFormat;
use crate::{cli_audit, cli_keys, cli_license};

#[derive(Parser)]
#[command(
    name = "keymeter",
    version,
    about = "Event-sourced usage metering and licensing engine"
)]
pub struct Cli {
    /// Diagnostics on stderr as human-readable text or as JSON lines
    /// (filter them with KEYMETER_LOG, e.g. "info,keymeter::access=off").
    #[arg(
        long,
        global = true,
        env = "KEYMETER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP API and the engine (embedded: no other server needed).
    Serve(Box<ConfigArgs>),
    /// Drop every projection and rebuild it from the event log.
    Replay(ConfigArgs),
    /// Inspect the event log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Manage licenses on a running server (HTTP client; needs an admin key).
    License(cli_license::LicenseArgs),
    /// Rotate the master key or the signing key (server stopped).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Tamper evidence: signed checkpoints and anchors.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Re-wrap the keyring under a new master key (--master), or start
    /// signing with a new key (--signing). Resumable: run it again after an
    /// interruption.
    Rotate {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        rotate: cli_keys::RotateArgs,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and verify every signed checkpoint, and every
    /// anchored one; name the first tampered position. Read-only, safe while
    /// the server runs. Exit status: 0 intact, 1 tampering found, 2 the
    /// audit could not run.
    Verify(cli_audit::AuditVerifyArgs),
}

#[derive(Subcommand)]
pub enum LogCommand {
    /// Check every frame's checksum, the sequence numbers and the hash chain;
    /// report the first bad position. Read-only.
    Verify(ConfigArgs),
}
