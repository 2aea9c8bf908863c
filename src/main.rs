//! The `keymeter` command line.

use clap::Parser;
use keymeter::config::Config;

mod cli;
mod cli_audit;
mod cli_backup;
mod cli_billing;
mod cli_keys;
mod cli_license;
mod cli_log;
mod cli_logging;
mod cli_migrate;
mod cli_serve;
mod cli_status;

use cli::{AuditCommand, Cli, Command, KeysCommand, LogCommand};

/// The engine allocates many small, short-lived values per event (parsed
/// JSON, records); mimalloc handles that pattern markedly better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let thp_off = keymeter::memory::disable_transparent_huge_pages();
    // Everything keymeter creates (log, projection store, keys, nonce and
    // anchor files) is for its own user only: files 0600, directories 0700.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        restore_sigpipe();
    }
    cli_logging::init(cli.log_format);
    tracing::debug!(thp_off, "transparent huge pages");
    // Still one thread: the secrets may leave the environment now.
    let load = |cfg: anyhow::Result<Config>| {
        keymeter::config::scrub_secret_variables();
        cfg
    };
    let result = match cli.command {
        Command::Serve(args) => load(args.load()).and_then(cli_serve::serve),
        Command::Replay(args) => load(args.load()).and_then(cli_log::replay),
        Command::Log {
            command: LogCommand::Verify(args),
        } => load(args.load()).and_then(cli_log::verify),
        Command::License(args) => cli_license::run(args),
        Command::Migrate(args) => cli_migrate::run(args),
        Command::Backup(args) => cli_backup::backup(args),
        Command::Restore(args) => cli_backup::restore(args),
        Command::Status(args) => {
            return cli_status::status(args).unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            })
        }
        Command::Keys {
            command: KeysCommand::Rotate { config, rotate },
        } => load(config.load()).and_then(|cfg| cli_keys::rotate(cfg, rotate)),
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => return cli_audit::audit_verify(&args),
        Command::Billing(args) => return cli_billing::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A command whose output goes to a pipe that closes (`keymeter … | head`)
/// ends as `cat` or `grep` do: killed quietly by SIGPIPE (status 141 in a
/// shell), instead of panicking on the failed write. Rust ignores SIGPIPE
/// by default; the server keeps ignoring it (its sockets report a closed
/// peer as an error, and its stdout only announces the address).
fn restore_sigpipe() {
    // SAFETY: sets the disposition of one signal to its default; no
    // handler runs, and no other thread exists yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}
