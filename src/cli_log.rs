//! `keymeter replay` and `keymeter log verify`: offline work on the log.

use anyhow::Context;
use keymeter::config::Config;
use keymeter::engine;

/// Rebuilds every projection from the log, with a progress bar.
pub fn replay(cfg: Config) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let head = engine::rebuild(&cfg, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("cannot rebuild projections in {}", cfg.data_dir.display()))?;
    bar.finish();
    println!("rebuilt all projections from {head} log records");
    Ok(())
}

/// Checks the log end to end; reports its head and any torn tail.
pub fn verify(cfg: Config) -> anyhow::Result<()> {
    let report = keymeter::log::verify(&cfg.log_dir())?;
    println!(
        "log ok: {} records in {} segments ({} bytes), head seq {}, head hash {}",
        report.records,
        report.segments,
        report.bytes,
        report.head_seq,
        hex::encode(report.head_hash)
    );
    if let Some(t) = &report.torn_tail {
        println!(
            "torn tail: {} bytes at {} offset {} ({}); the next start cuts it and keeps a copy",
            t.bytes,
            t.segment.display(),
            t.offset,
            t.reason
        );
    }
    Ok(())
}
