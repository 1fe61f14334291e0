//! Load on the running services: wrk for closed loops, an open-loop generator of its own, and
//! the small HTTP helpers the phases wait with.

use crate::Config;
use anyhow::{bail, Context};
use serde_json::Value;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A closed loop's figures (latencies in seconds).
pub struct Wrk {
    pub rate: f64,
    pub p99: f64,
    pub errors: u64,
}

pub fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

fn seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    Some(match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    })
}

async fn wrk(config: &Config, url: &str, clients: u32, script: &str) -> anyhow::Result<Wrk> {
    let lua = config
        .work
        .join(format!("wrk-{}.lua", uuid::Uuid::new_v4().simple()));
    std::fs::write(&lua, script)?;
    let threads = clients.clamp(1, 2);
    let mut command = Command::new("wrk");
    command.args([
        format!("-t{threads}"),
        format!("-c{clients}"),
        format!("-d{}s", config.seconds),
        "--latency".into(),
        "-s".into(),
        lua.display().to_string(),
        url.into(),
    ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("running wrk (scripts/bench.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!(
            "wrk failed: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.trim_start()[prefix.len()..].trim().to_string())
    };
    let rate = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no rate in wrk's output: {text}"))?;
    let p99 = field("99%").and_then(|v| seconds(&v)).unwrap_or(f64::NAN);
    let mut errors = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(socket) = field("Socket errors:") {
        errors += socket
            .split(',')
            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(Wrk { rate, p99, errors })
}

/// `POST /todos` with a small JSON body, as fast as `clients` connections go.
pub async fn wrk_post(config: &Config, base: &str, clients: u32) -> anyhow::Result<Wrk> {
    let script = r#"
wrk.method = "POST"
wrk.body = '{"title":"bench todo","description":"written by scripts/bench.sh"}'
wrk.headers["Content-Type"] = "application/json"
"#;
    wrk(config, &format!("{base}/todos"), clients, script).await
}

/// `GET /todos/{id}` for random ids of the range `ids`, 16 connections.
pub async fn wrk_get_by_id(config: &Config, base: &str, ids: (i64, i64)) -> anyhow::Result<Wrk> {
    let (first, last) = ids;
    let script = format!(
        r#"
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/todos/" .. math.random({first}, {last}))
end
"#
    );
    wrk(config, &format!("{base}/todos"), 16, &script).await
}

/// `GET path`, as fast as `clients` connections go.
pub async fn wrk_get(config: &Config, base: &str, path: &str, clients: u32) -> anyhow::Result<Wrk> {
    wrk(config, &format!("{base}{path}"), clients, "").await
}

async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(client.get(url).send().await?.json().await?)
}

/// Creates `n` todos over `concurrency` connections.
pub async fn create_todos(base: &str, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), format!("{base}/todos"));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let r = client
                    .post(&url)
                    .json(&serde_json::json!({"title": "bench burst"}))
                    .send()
                    .await?;
                if r.status() != 201 {
                    bail!("POST /todos answered {}", r.status());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Waits until command-service's relay published everything.
pub async fn wait_for_outbox(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = get_json(&client, &format!("{base}/ready")).await?;
        if ready["checks"]["outbox_backlog"] == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("outbox not drained within 600 s: {ready}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub use bench::figures::settled;

/// A histogram on a service's `/metrics`: each bucket's upper bound with its cumulative count.
pub async fn histogram(base: &str, name: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let prefix = format!("{name}_bucket{{le=\"");
    Ok(text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (bound, count) = rest.split_once("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect())
}

/// The upper bound of the bucket that holds the `p`-th percentile of what a histogram observed
/// between two readings of it (`None`: nothing observed).
pub fn percentile_bound(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> Option<f64> {
    let count = |buckets: &[(f64, f64)], bound: f64| {
        buckets
            .iter()
            .find(|(b, _)| *b == bound)
            .map_or(0.0, |(_, c)| *c)
    };
    let total = after.last()?.1 - count(before, f64::INFINITY);
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .find(|(bound, c)| c - count(before, *bound) >= total * p / 100.0)
        .map(|(bound, _)| *bound)
}

pub async fn wait_for_settled(base: &str, n: i64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let done = settled(base).await?;
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("query-service settled {done} of {n} events within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the projection settled nothing new for a second.
pub async fn wait_for_idle(base: &str) -> anyhow::Result<()> {
    let mut last = settled(base).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = settled(base).await?;
        if now == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the projection is still busy after 120 s");
        }
        last = now;
    }
}

/// An open loop's figures (seconds).
pub struct Open {
    pub sent_rate: f64,
    pub post_p99: f64,
    pub readable_p50: f64,
    pub readable_p99: f64,
    pub readable_max: f64,
    /// Writes that did not answer 201.
    pub failed_writes: usize,
    /// Reads with `min_version` that did not answer 200 (left out of the latencies).
    pub failed_reads: usize,
}

/// One write of the open loop: its latency and its write-to-readable time (seconds).
enum Sample {
    Readable(f64, f64),
    ReadFailed(f64),
    WriteFailed,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

/// Sends `per_second` writes a second for `duration`, each at its scheduled time whatever the
/// earlier ones are doing. A write's latency counts from when it was due; once it answered,
/// `GET /todos/{id}?min_version=<its version>` times when the read side has it. The largest
/// of those times is the most the read model was behind a write.
pub async fn open_loop(
    command: &str,
    query: &str,
    per_second: u32,
    duration: Duration,
) -> anyhow::Result<Open> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(15))
        .build()?;
    let total = (per_second as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, command, query) = (client.clone(), command.to_string(), query.to_string());
        tasks.push(tokio::spawn(async move {
            let Ok(response) = client
                .post(format!("{command}/todos"))
                .json(&serde_json::json!({"title": "open loop"}))
                .send()
                .await
            else {
                return Sample::WriteFailed;
            };
            let answered = tokio::time::Instant::now();
            let todo: Option<Value> = match response.status().as_u16() {
                201 => response.json().await.ok(),
                _ => None,
            };
            let Some((id, version)) = todo
                .as_ref()
                .and_then(|t| Some((t["id"].as_i64()?, t["version"].as_i64()?)))
            else {
                return Sample::WriteFailed;
            };
            let post = (answered - due).as_secs_f64();
            let read = client
                .get(format!("{query}/todos/{id}?min_version={version}"))
                .send()
                .await;
            let readable = tokio::time::Instant::now();
            match read {
                Ok(r) if r.status() == 200 => {
                    Sample::Readable(post, (readable - answered).as_secs_f64())
                }
                _ => Sample::ReadFailed(post),
            }
        }));
    }
    let sent = started.elapsed().as_secs_f64();
    let mut posts = Vec::with_capacity(total);
    let mut readable = Vec::with_capacity(total);
    let (mut failed_writes, mut failed_reads) = (0, 0);
    for t in tasks {
        match t.await? {
            Sample::Readable(p, r) => {
                posts.push(p);
                readable.push(r);
            }
            Sample::ReadFailed(p) => {
                posts.push(p);
                failed_reads += 1;
            }
            Sample::WriteFailed => failed_writes += 1,
        }
    }
    posts.sort_by(f64::total_cmp);
    readable.sort_by(f64::total_cmp);
    Ok(Open {
        sent_rate: total as f64 / sent,
        post_p99: percentile(&posts, 99.0),
        readable_p50: percentile(&readable, 50.0),
        readable_p99: percentile(&readable, 99.0),
        readable_max: readable.last().copied().unwrap_or(f64::NAN),
        failed_writes,
        failed_reads,
    })
}

/// A `GET /todos/stream` client that reads the response head and then nothing: its socket's
/// receive window is 2 KB, so the server's side fills and the stream falls behind. Dropping
/// it closes the connection.
pub async fn stuck_stream_client(base: &str) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://").parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(2048)?;
    let mut stream = socket.connect(address).await?;
    stream
        .write_all(b"GET /todos/stream HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await?;
    if !head[..n].starts_with(b"HTTP/1.1 200") {
        bail!(
            "the stream answered {}",
            String::from_utf8_lossy(&head[..n])
        );
    }
    Ok(stream)
}
