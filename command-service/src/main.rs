use command_service::{settings::Settings, shutdown, telemetry, Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return command_service::healthcheck(&settings.http_addr).await;
    }
    telemetry::init(settings.log_format, &settings.rust_log);
    tracing::info!(?settings, "starting command-service");
    let app = Application::build(settings).await?;
    app.run(shutdown::signal()).await
}
