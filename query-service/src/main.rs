use anyhow::Context;
use query_service::{settings::Settings, shutdown, store::Store, telemetry, Application};

/// `query-service` serves; `query-service healthcheck` probes a running one;
/// `query-service replay [COMMAND_URL]` rebuilds or repairs the read model from
/// command-service's event log (default `http://127.0.0.1:5001`);
/// `query-service verify [COMMAND_URL] [--repair]` compares the read model with that log
/// (exit code 1 on a difference); `query-service rebuild [COMMAND_URL] [--grace SECONDS]
/// [--share PERCENT] [--abandon]`
/// builds a new read model beside the live one and switches reads to it
/// (`query_service::rebuild`); `query-service dead-letters list | redrive [--all | <event
/// id>...] | purge --yes` works the dead-letter queue (`query_service::dead_letters`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = run().await;
    // The spans not yet exported (a batch leaves every few seconds), whatever the outcome.
    events::service::trace::flush();
    result
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("healthcheck") => return query_service::healthcheck(&settings.http_addr).await,
        Some("replay") => {
            telemetry::init("query-service", settings.log_format, &settings.rust_log);
            let command_url = args.next().unwrap_or_else(|| "http://127.0.0.1:5001".into());
            let store = Store::connect(&settings.mongodb_uri, &settings.mongodb_db)
                .await
                .context("MONGODB_URI is not a usable MongoDB connection string")?;
            store.ensure_indexes().await.context("MongoDB not reachable")?;
            let report = query_service::replay::replay(&store, &command_url, settings.feed_token()).await?;
            tracing::info!(
                command_url,
                read = report.read,
                applied = report.applied,
                skipped = report.skipped,
                position = report.last_position,
                "replay finished"
            );
            return Ok(());
        }
        Some("rebuild") => {
            telemetry::init("query-service", settings.log_format, &settings.rust_log);
            let mut command_url = "http://127.0.0.1:5001".to_string();
            let mut options = query_service::rebuild::Options::default();
            let mut args = args.peekable();
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--grace" => {
                        let seconds = args.next().context("rebuild: --grace takes a number of seconds")?;
                        let seconds: u64 = seconds
                            .parse()
                            .with_context(|| format!("rebuild: --grace {seconds:?} is not a whole number of seconds"))?;
                        options.grace = std::time::Duration::from_secs(seconds);
                    }
                    "--share" => {
                        let percent = args.next().context("rebuild: --share takes a percentage")?;
                        options.share = percent
                            .parse()
                            .ok()
                            .filter(|p| (1..=100).contains(p))
                            .with_context(|| format!("rebuild: --share {percent:?} is not a whole percentage from 1 to 100"))?;
                    }
                    "--abandon" => options.abandon = true,
                    other if other.starts_with("--") => anyhow::bail!("rebuild: unknown option {other:?} (use --grace SECONDS, --share PERCENT, --abandon)"),
                    other => command_url = other.to_string(),
                }
            }
            let store = Store::connect(&settings.mongodb_uri, &settings.mongodb_db)
                .await
                .context("MONGODB_URI is not a usable MongoDB connection string")?;
            store.ensure_indexes().await.context("MongoDB not reachable")?;
            let rebuilt = query_service::rebuild::rebuild(&store, &command_url, settings.feed_token(), &options).await?;
            println!("rebuild: {rebuilt}");
            return Ok(());
        }
        Some("verify") => {
            telemetry::init("query-service", settings.log_format, &settings.rust_log);
            let mut command_url = "http://127.0.0.1:5001".to_string();
            let mut repair = false;
            for arg in args {
                match arg.as_str() {
                    "--repair" => repair = true,
                    url if !url.starts_with('-') => command_url = url.to_string(),
                    other => anyhow::bail!("verify: unknown option {other:?}"),
                }
            }
            let store = Store::connect(&settings.mongodb_uri, &settings.mongodb_db)
                .await
                .context("MONGODB_URI is not a usable MongoDB connection string")?;
            let found = query_service::verify::verify(&store, &command_url, settings.feed_token()).await?;
            print!("verify: {found}");
            if found.differences.is_empty() || !repair {
                std::process::exit(if found.differences.is_empty() { 0 } else { 1 });
            }
            store.ensure_indexes().await.context("MongoDB not reachable")?;
            let replayed = query_service::replay::replay(&store, &command_url, settings.feed_token()).await?;
            println!(
                "repair: replayed {} events through the version guard ({} applied, {} already there)",
                replayed.read, replayed.applied, replayed.skipped
            );
            let reset = query_service::verify::reset_ahead(&store, &found).await?;
            println!(
                "repair: put {reset} document(s) ahead of the log back to the log's state"
            );
            let after = query_service::verify::verify(&store, &command_url, settings.feed_token()).await?;
            print!("verify after repair: {after}");
            std::process::exit(if after.differences.is_empty() { 0 } else { 1 });
        }
        Some("dead-letters") => {
            let rest: Vec<String> = args.collect();
            return dead_letters(&settings, &rest).await;
        }
        Some(other) => anyhow::bail!(
            "unknown command {other:?}: use no argument (serve), `healthcheck`, `replay [COMMAND_URL]`, `rebuild [COMMAND_URL] [--grace SECONDS] [--share PERCENT] [--abandon]`, `verify [COMMAND_URL] [--repair]` or `dead-letters list|redrive|purge`"
        ),
        None => {}
    }
    telemetry::init("query-service", settings.log_format, &settings.rust_log);
    tracing::info!(?settings, "starting query-service");
    let app = Application::build(settings).await?;
    app.run(shutdown::signal()).await
}

/// `query-service dead-letters ...`: prints what it did, one line per message.
async fn dead_letters(settings: &Settings, args: &[String]) -> anyhow::Result<()> {
    use query_service::dead_letters::{self, Selection};
    let (url, queue) = (&settings.amqp_url, &settings.amqp_queue);
    let dlq = events::dead_letter_queue(queue);
    match args.first().map(String::as_str) {
        Some("list") if args.len() == 1 => {
            let letters = dead_letters::list(url, queue).await?;
            println!("{dlq}: {} dead letter(s)", letters.len());
            for l in &letters {
                println!("{l}");
            }
        }
        Some("redrive") if args.len() > 1 => {
            let selection = if args[1..] == ["--all".to_string()] {
                Selection::All
            } else if args[1..].iter().any(|a| a.starts_with('-')) {
                anyhow::bail!("redrive takes --all or event ids, not {:?}", &args[1..]);
            } else {
                Selection::EventIds(args[1..].to_vec())
            };
            let report = dead_letters::redrive(url, queue, &selection).await?;
            for l in &report.sent {
                println!("redriven to {queue}: {l}");
            }
            for id in &report.missing {
                println!("not in {dlq}: {id}");
            }
            println!(
                "{} redriven, {} left in {dlq}{}",
                report.sent.len(),
                report.kept,
                if report.missing.is_empty() { "" } else { "; some ids were not there" }
            );
            if let Some(why) = &report.failed {
                println!("stopped before the end: {why}");
            }
            if !report.missing.is_empty() || report.failed.is_some() {
                std::process::exit(1);
            }
        }
        Some("purge") if args.len() == 2 && args[1] == "--yes" => {
            let purged = dead_letters::purge(url, queue).await?;
            println!("purged {purged} dead letter(s) from {dlq}");
        }
        Some("purge") => anyhow::bail!(
            "purge drops every message of {dlq} for good: say so with `dead-letters purge --yes`"
        ),
        _ => anyhow::bail!(
            "usage: query-service dead-letters list | redrive --all | redrive <event id>... | purge --yes"
        ),
    }
    Ok(())
}
