//! `keymeter backup` and `keymeter restore` (see [`keymeter::backup`]), with
//! progress bars on stderr.

use std::path::PathBuf;

use clap::Args;
use keymeter::backup::{self, Manifest, Progress};
use keymeter::config::DataArgs;

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Directory to write the backup to (created; must be new or empty).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Backup directory (holding manifest.json) to restore from.
    #[arg(long)]
    from: PathBuf,
    /// Data directory to restore into (created; must be new or empty).
    #[arg(long)]
    data_dir: PathBuf,
}

/// A byte progress bar.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(verb: &str) -> anyhow::Result<Bar> {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{verb} [{{bar:40}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, eta {{eta}})"
            ))?
            .progress_chars("=> "),
        );
        Ok(Bar(bar))
    }
}

impl Progress for Bar {
    fn start(&mut self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let cfg = args.data.load()?;
    let mut bar = Bar::new("backing up")?;
    let started = std::time::Instant::now();
    let m = backup::backup(&cfg.data_dir, &args.out, &mut bar)?;
    bar.0.finish();
    report("backed up", &m, started.elapsed());
    println!(
        "the master key is not in the backup: keep a copy of it (the file named by \
         --master-key-file, or {}.master-key by default) apart from the backup",
        cfg.data_dir.display()
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let mut bar = Bar::new("restoring")?;
    let started = std::time::Instant::now();
    let m = backup::restore(&args.from, &args.data_dir, &mut bar)?;
    bar.0.finish();
    report("restored", &m, started.elapsed());
    println!(
        "start keymeter on {} with the master key of the backed-up server; it rebuilds \
         the projections from the log",
        args.data_dir.display()
    );
    Ok(())
}

fn report(what: &str, m: &Manifest, took: std::time::Duration) {
    let bytes = m.total_bytes();
    println!(
        "{what} {} files, {bytes} bytes in {:.2} s ({:.1} MB/s); log head seq {}, hash {}",
        m.files.len(),
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64().max(1e-9) / 1e6,
        m.log.head_seq,
        m.log.head_hash
    );
}
