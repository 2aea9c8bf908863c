//! `keymeter migrate …`: the migration admin API of a running server, with
//! a progress bar while a step or rollback runs. `plan FILE` creates the
//! migration described in FILE (JSON, see docs/migrating-to-usage.md) and
//! prints its dry-run summary; nothing changes until `apply`.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::cli_license::request;

#[derive(Args)]
pub struct MigrateArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "KEYMETER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An API key with the admin scope.
    #[arg(
        long,
        env = "KEYMETER_ADMIN_KEY",
        hide_env_values = true,
        global = true
    )]
    admin_key: Option<String>,
    #[command(subcommand)]
    command: MigrateCommand,
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Create a migration (in draft) from a JSON file and dry-run it.
    Plan {
        /// The migration document: selection, target, rules.
        file: std::path::PathBuf,
    },
    /// Dry-run a migration again: what each license would become.
    DryRun {
        /// The migration's id (mig_…).
        id: String,
    },
    /// Run a step: `--percent` of the selection in total, or `--count` more.
    Apply {
        /// The migration's id (mig_…).
        id: String,
        /// Migrate until this percentage of the selection is migrated (1 to 100).
        #[arg(long, conflicts_with = "count", required_unless_present = "count")]
        percent: Option<u32>,
        /// Migrate this many more licenses.
        #[arg(long)]
        count: Option<u32>,
    },
    /// Restore the licenses migrated in `--from-step` and later (all by default).
    Rollback {
        /// The migration's id (mig_…).
        id: String,
        /// The first step whose licenses are restored.
        #[arg(long)]
        from_step: Option<u32>,
    },
    /// Freeze the migration: no rollback afterwards.
    Complete {
        /// The migration's id (mig_…).
        id: String,
    },
    /// Show a migration and its progress.
    Show {
        /// The migration's id (mig_…).
        id: String,
    },
}

struct Client {
    url: String,
    key: String,
}

impl Client {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, text) = request(&self.url, method, path, Some(&self.key), body).await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !(200..300).contains(&status) {
            let pretty = serde_json::to_string_pretty(&v)?;
            bail!("server answered {status}: {pretty}");
        }
        Ok(v)
    }
}

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let key = args
        .admin_key
        .clone()
        .context("an admin key is required: --admin-key or KEYMETER_ADMIN_KEY")?;
    let client = Client { url: args.url, key };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(command(&client, args.command))?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn command(c: &Client, command: MigrateCommand) -> anyhow::Result<Value> {
    match command {
        MigrateCommand::Plan { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let m = c
                .call(Method::POST, "/api/v1/migrations", Some(spec))
                .await?;
            let id = m["id"].as_str().context("no migration id")?.to_owned();
            let dry = dry_run(c, &id).await?;
            Ok(json!({"migration": m, "dry_run": dry}))
        }
        MigrateCommand::DryRun { id } => dry_run(c, &id).await,
        MigrateCommand::Apply { id, percent, count } => {
            let body = match (percent, count) {
                (Some(p), _) => json!({"percent": p}),
                (None, Some(n)) => json!({"count": n}),
                (None, None) => bail!("give --percent or --count"),
            };
            with_progress(c, &id, "apply", body).await
        }
        MigrateCommand::Rollback { id, from_step } => {
            let body = json!({"from_step": from_step.unwrap_or(1)});
            with_progress(c, &id, "rollback", body).await
        }
        MigrateCommand::Complete { id } => {
            let path = format!("/api/v1/migrations/{id}/complete");
            c.call(Method::POST, &path, None).await
        }
        MigrateCommand::Show { id } => {
            c.call(Method::GET, &format!("/api/v1/migrations/{id}"), None)
                .await
        }
    }
}

async fn dry_run(c: &Client, id: &str) -> anyhow::Result<Value> {
    let path = format!("/api/v1/migrations/{id}/dry-run?limit=20");
    let d = c.call(Method::POST, &path, None).await?;
    Ok(
        json!({"summary": d["summary"], "cannot_convert": d["cannot_convert"],
        "first_items": d["items"]}),
    )
}

/// Runs `action` (apply or rollback) while a bar shows how many licenses
/// the migration holds migrated or has rolled back, read every 200 ms.
async fn with_progress(c: &Client, id: &str, action: &str, body: Value) -> anyhow::Result<Value> {
    let show = format!("/api/v1/migrations/{id}");
    let before = c.call(Method::GET, &show, None).await?;
    let counter = if action == "apply" {
        "migrated"
    } else {
        "rolled_back"
    };
    let start = before["progress"][counter].as_u64().unwrap_or(0);
    let total = before["progress"]["selected_at_dry_run"]
        .as_u64()
        .unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{action} [{{bar:40}}] {{pos}}/{{len}} licenses {{msg}}"
        ))?
        .progress_chars("=> "),
    );
    bar.set_position(start.min(total));
    let path = format!("/api/v1/migrations/{id}/{action}");
    let call = c.call(Method::POST, &path, Some(body));
    tokio::pin!(call);
    let out = loop {
        tokio::select! {
            out = &mut call => break out,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Ok(now) = c.call(Method::GET, &show, None).await {
                    bar.set_position(now["progress"][counter].as_u64().unwrap_or(0));
                }
            }
        }
    };
    match &out {
        Ok(v) => {
            let n = v["progress"][counter].as_u64().unwrap_or(0);
            bar.set_position(n);
            bar.finish_with_message("done");
            // The bar is drawn on a terminal only; a log gets this line.
            eprintln!("{action}: {n} licenses {counter}");
        }
        Err(_) => bar.abandon_with_message("failed"),
    }
    out
}
