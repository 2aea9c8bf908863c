//! The `keymeter` command line.

use clap::{Parser, Subcommand};
use keymeter::config::ConfigArgs;

mod cli_audit;
mod cli_keys;
mod cli_license;
mod cli_log;
mod cli_serve;

/// The engine allocates many small, short-lived values per event (parsed
/// JSON, records); mimalloc handles that pattern markedly better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keymeter",
    version,
    about = "Event-sourced usage metering and licensing engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the engine (embedded: no other server needed).
    Serve(ConfigArgs),
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
enum KeysCommand {
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
enum AuditCommand {
    /// Recompute the hash chain and verify every signed checkpoint, and every
    /// anchored one; name the first tampered position. Read-only, safe while
    /// the server runs. Exit status: 0 intact, 1 tampering found, 2 the
    /// audit could not run.
    Verify(cli_audit::AuditVerifyArgs),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check every frame's checksum, the sequence numbers and the hash chain;
    /// report the first bad position. Read-only.
    Verify(ConfigArgs),
}

fn main() -> std::process::ExitCode {
    let thp_off = keymeter::memory::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYMETER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(thp_off, "transparent huge pages");
    // Everything keymeter creates (log, projection store, keys, nonce and
    // anchor files) is for its own user only: files 0600, directories 0700.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    // Still one thread: the secrets may leave the environment now.
    let load = |args: &ConfigArgs| {
        let cfg = args.load();
        keymeter::config::scrub_secret_variables();
        cfg
    };
    let result = match cli.command {
        Command::Serve(args) => load(&args).and_then(cli_serve::serve),
        Command::Replay(args) => load(&args).and_then(cli_log::replay),
        Command::Log {
            command: LogCommand::Verify(args),
        } => load(&args).and_then(cli_log::verify),
        Command::License(args) => cli_license::run(args),
        Command::Keys {
            command: KeysCommand::Rotate { config, rotate },
        } => load(&config).and_then(|cfg| cli_keys::rotate(cfg, rotate)),
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => return cli_audit::audit_verify(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
