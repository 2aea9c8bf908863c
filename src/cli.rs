//! The command line's shape: every subcommand and its arguments (clap).
//! `main.rs` runs what these describe.

use clap::{Parser, Subcommand};
use keymeter::config::{ConfigArgs, DataArgs, KeyedDataArgs};

use crate::cli_logging::LogFormat;
use crate::{cli_audit, cli_backup, cli_billing, cli_keys, cli_license, cli_migrate, cli_status};

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
    Replay(KeyedDataArgs),
    /// Inspect the event log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Manage licenses on a running server (HTTP client; needs an admin key).
    License(cli_license::LicenseArgs),
    /// Migrate many licenses to a plan version in staged, reversible steps
    /// on a running server (HTTP client; needs an admin key).
    Migrate(cli_migrate::MigrateArgs),
    /// Rotate the master key or the signing key (server stopped).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// How a running server stands: health, readiness, log head, Kafka
    /// lag. Exit status 0 when healthy and ready, 1 otherwise.
    Status(cli_status::StatusArgs),
    /// Copy the log and key files into a new directory with a manifest
    /// (SHA-256 per file, log position); safe while the server runs. The
    /// master key is not copied: back it up separately.
    Backup(cli_backup::BackupArgs),
    /// Restore a backup into a new data directory, after checking every
    /// file against the manifest and the log's hash chain.
    Restore(cli_backup::RestoreArgs),
    /// Tamper evidence: signed checkpoints and anchors.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Billing statements: export a period from a running server, verify a
    /// statement and its proofs offline.
    Billing(cli_billing::BillingArgs),
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Re-wrap the keyring under a new master key (--master), or start
    /// signing with a new key (--signing). Resumable: run it again after an
    /// interruption.
    Rotate {
        #[command(flatten)]
        config: KeyedDataArgs,
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
    Verify(DataArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every option and argument of every subcommand, with its command path.
    fn all_args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.to_owned(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            all_args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_option_has_a_description() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut args = Vec::new();
        all_args(&cmd, "keymeter", &mut args);
        let missing: Vec<String> = args
            .iter()
            .filter(|(_, a)| a.get_help().is_none() && a.get_long_help().is_none())
            .map(|(path, a)| format!("{path} {}", a.get_id()))
            .collect();
        assert!(
            missing.is_empty(),
            "options without a description: {missing:?}"
        );
    }

    #[test]
    fn offline_commands_take_no_server_option() {
        let cmd = Cli::command();
        for path in [
            &["replay"][..],
            &["log", "verify"],
            &["audit", "verify"],
            &["keys", "rotate"],
        ] {
            let mut sub = &cmd;
            for name in path {
                sub = sub.find_subcommand(name).unwrap();
            }
            let ids: Vec<&str> = sub.get_arguments().map(|a| a.get_id().as_str()).collect();
            assert!(ids.contains(&"data_dir"), "{path:?}: {ids:?}");
            for server_only in ["listen", "tls_cert", "kafka_brokers", "bootstrap_admin_key"] {
                assert!(
                    !ids.contains(&server_only),
                    "{path:?} takes --{server_only}"
                );
            }
        }
    }
}
