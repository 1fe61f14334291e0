use anyhow::Context;
use command_service::{settings::Settings, shutdown, telemetry, Application};

const USAGE: &str =
    "usage: command-service                      serve (HTTP_ADDR, DATABASE_URL, AMQP_URL, ...)
       command-service healthcheck          ask this service's /health (for containers)
       command-service erase <id> [--actor NAME]
                                            remove todo <id>'s title and description from it
                                            and every event of its history (see README.md)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = run().await;
    // The spans not yet exported (a batch leaves every few seconds), whatever the outcome.
    events::service::trace::flush();
    result
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("healthcheck") => return command_service::healthcheck(&settings.http_addr).await,
        Some("erase") => {
            telemetry::init("command-service", settings.log_format, &settings.rust_log);
            return erase(settings, &args[1..]).await;
        }
        Some(other) => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
    }
    telemetry::init("command-service", settings.log_format, &settings.rust_log);
    tracing::info!(?settings, "starting command-service");
    let app = Application::build(settings).await?;
    app.run(shutdown::signal()).await
}

/// `command-service erase <id> [--actor NAME]`: the erasure `POST /todos/{id}/erase` makes,
/// run against `DATABASE_URL` directly (no token: whoever reaches the database may). The
/// events it writes carry `--actor` (default `operator`).
async fn erase(settings: Settings, args: &[String]) -> anyhow::Result<()> {
    let (id, actor) = match args {
        [id] => (id, "operator"),
        [id, flag, name] | [flag, name, id] if flag == "--actor" => (id, name.as_str()),
        _ => anyhow::bail!("erase takes a todo id and, optionally, --actor NAME\n{USAGE}"),
    };
    let id: i64 = id
        .parse()
        .ok()
        .filter(|n| events::limits::in_id_range(*n))
        .with_context(|| format!("erase: {id:?} is not a todo id (1 to 2^53 - 1)"))?;
    // The rules of a token's name: the whole of it (no `:`), so the read side takes it.
    let why = if actor.contains(':') {
        Some("a name has no ':'".to_string())
    } else {
        events::service::tokens::bad_entry(&format!("{actor}:-"))
    };
    if let Some(why) = why {
        anyhow::bail!("erase: --actor: {why}");
    }
    let erased = command_service::erase(&settings, id, actor).await?;
    println!("{}", serde_json::to_string_pretty(&erased)?);
    println!(
        "erase: todo {id}: {} event(s) of its history rewritten; {}",
        erased.events_erased,
        match (&erased.todo, erased.appended) {
            (None, _) => "it is deleted, so no read model holds its text".to_string(),
            (Some(todo), true) => format!(
                "a TodoUpdated to version {} takes the erasure to the read model",
                todo.version
            ),
            (Some(_), false) => "it was erased already: no event appended".to_string(),
        }
    );
    Ok(())
}
