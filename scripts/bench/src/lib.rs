//! What `scripts/bench.sh` (`src/main.rs`) and `scripts/chaos.sh` (`src/bin/chaos.rs`) share:
//! running the services' release binaries as an operator would.

pub mod process {
    use anyhow::{bail, Context};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Where a service's binary is: `target/release/<name>`, or under `SERVICE_BIN_DIR` when
    /// set (`scripts/test.sh` runs the short abuse run on the debug binaries it built).
    pub fn binary(name: &str) -> std::path::PathBuf {
        let dir = std::env::var("SERVICE_BIN_DIR").unwrap_or_else(|_| "target/release".into());
        Path::new(&dir).join(name)
    }

    /// A service started from its release binary (`target/release/<name>`), with only the
    /// environment it is given, its output appended to `<log_dir>/<name>-<port>.log`.
    pub struct Service {
        pub name: &'static str,
        child: Child,
        pub port: u16,
        pub base: String,
    }

    /// A service still running when its value goes (a run that failed half-way) is killed, so
    /// it holds no port after the run.
    impl Drop for Service {
        fn drop(&mut self) {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    impl Service {
        /// Starts it and waits (up to 60 s) until `GET /ready` answers 200.
        pub async fn start(
            log_dir: &Path,
            name: &'static str,
            port: u16,
            vars: &[(&str, String)],
        ) -> anyhow::Result<Self> {
            let service = Self::spawn(log_dir, name, port, vars)?;
            service.ready(Duration::from_secs(60)).await?;
            Ok(service)
        }

        /// Starts it without waiting.
        pub fn spawn(
            log_dir: &Path,
            name: &'static str,
            port: u16,
            vars: &[(&str, String)],
        ) -> anyhow::Result<Self> {
            Self::spawn_binary(log_dir, name, &binary(name), port, vars)
        }

        /// [`Service::start`] of the binary at `binary` (another build of the service).
        pub async fn start_binary(
            log_dir: &Path,
            name: &'static str,
            binary: &Path,
            port: u16,
            vars: &[(&str, String)],
        ) -> anyhow::Result<Self> {
            let service = Self::spawn_binary(log_dir, name, binary, port, vars)?;
            service.ready(Duration::from_secs(60)).await?;
            Ok(service)
        }

        fn spawn_binary(
            log_dir: &Path,
            name: &'static str,
            binary: &Path,
            port: u16,
            vars: &[(&str, String)],
        ) -> anyhow::Result<Self> {
            let binary = binary.to_path_buf();
            if !binary.exists() {
                bail!(
                    "{} is missing: build with cargo build --release",
                    binary.display()
                );
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_dir.join(format!("{name}-{port}.log")))?;
            let mut command = Command::new(&binary);
            command
                .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log));
            for (k, v) in vars {
                command.env(k, v);
            }
            let child = command
                .spawn()
                .with_context(|| format!("starting {name}"))?;
            Ok(Self {
                name,
                child,
                port,
                base: format!("http://127.0.0.1:{port}"),
            })
        }

        /// Waits until `GET /ready` answers 200.
        pub async fn ready(&self, within: Duration) -> anyhow::Result<()> {
            let client = reqwest::Client::new();
            let deadline = Instant::now() + within;
            loop {
                if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await {
                    if r.status().is_success() {
                        return Ok(());
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} on port {} not ready within {within:?}",
                        self.name,
                        self.port
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// The process id.
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// SIGKILL: no drain, as a crash.
        pub fn kill(mut self) -> anyhow::Result<()> {
            self.child.kill()?;
            self.child.wait()?;
            Ok(())
        }

        /// SIGTERM, then waits up to 30 s for it to exit (then SIGKILL, and an error).
        pub async fn stop(mut self) -> anyhow::Result<()> {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.child.try_wait()? {
                    if !status.success() {
                        eprintln!("[service] {} exited with {status}", self.name);
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    self.child.kill()?;
                    bail!("{} did not stop within 30 s of SIGTERM", self.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// query-service's figures, read from its in-memory metrics (watching the projection costs
/// the store nothing).
pub mod figures {
    /// The sum of every `projection_events_total` sample whose line starts with `prefix`
    /// (`projection_events_total{` for every outcome, `…{outcome="applied"}` for one).
    pub async fn projection_events(base: &str, prefix: &str) -> anyhow::Result<i64> {
        let text = reqwest::get(format!("{base}/metrics"))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64)
    }

    /// Events query-service settled so far (every outcome).
    pub async fn settled(base: &str) -> anyhow::Result<i64> {
        projection_events(base, "projection_events_total{").await
    }

    /// Events query-service applied so far.
    pub async fn applied(base: &str) -> anyhow::Result<i64> {
        projection_events(base, "projection_events_total{outcome=\"applied\"}").await
    }
}
