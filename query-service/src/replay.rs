//! `query-service replay [COMMAND_URL]`: rebuilds or repairs the read model from the event log
//! command-service keeps and serves at `GET /events` (query-service/README.md, "Guarantees", 4).
//!
//! It reads the log oldest first, page by page, and applies every event through the same
//! version-guarded upsert the consumer uses, so it is safe at any time: into an empty
//! database (a rebuild), into one with gaps (a repair), and beside running consumers (what is
//! already there is skipped, and nothing older can overwrite anything newer). Running it twice
//! changes nothing the second time. It stops at the first error, MongoDB's or
//! command-service's, with the position it got to; running it again starts over safely.

use crate::store::{Counts, Outcome, Store};
use anyhow::Context;
use events::service::backoff::Backoff;
use events::Envelope;
use std::time::Duration;

/// Events per `GET /events` page (command-service's largest).
pub const PAGE: i64 = 1000;
/// Events per bulk write into MongoDB.
const BULK: usize = 200;

/// What one replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Events read from the log.
    pub read: u64,
    /// Events the read model did not have yet (written, or folded into a newer event of the
    /// same todo that was).
    pub applied: u64,
    /// Events the read model already had (this version or a newer one).
    pub skipped: u64,
    /// Position of the last event read (0 for an empty log).
    pub last_position: i64,
}

/// Reads command-service's event log, `GET /events`, page by page.
pub struct LogReader {
    client: reqwest::Client,
    base: String,
    /// `FEED_TOKEN`, sent as `Authorization: Bearer` when given; never logged.
    token: Option<String>,
    page_size: i64,
}

/// The feed refused the reader (401 or 403): no retry mends that, only another `FEED_TOKEN`.
#[derive(Debug, thiserror::Error)]
#[error(
    "GET {url} answered {status}: command-service refused the feed to this reader; {advice} \
     ({detail})"
)]
pub struct FeedRefused {
    pub url: String,
    pub status: reqwest::StatusCode,
    advice: &'static str,
    detail: String,
}

impl LogReader {
    /// A reader asking for pages of [`PAGE`] events, with `token` (`FEED_TOKEN`) if given.
    pub fn new(command_url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        Self::with_page_size(command_url, token, PAGE)
    }

    /// A reader asking for pages of `page_size` events (1 to [`PAGE`]).
    pub fn with_page_size(
        command_url: &str,
        token: Option<&str>,
        page_size: i64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=PAGE).contains(&page_size),
            "a page holds 1 to {PAGE} events, not {page_size}"
        );
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("HTTP client")?,
            base: command_url.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()).map(String::from),
            page_size,
        })
    }

    /// Events per page this reader asks for.
    pub fn page_size(&self) -> i64 {
        self.page_size
    }

    /// The next page of events after `after`, each checked as the consumer checks a message;
    /// a page shorter than [`LogReader::page_size`] is the end of the log.
    pub async fn page(&self, after: i64) -> anyhow::Result<Vec<Envelope>> {
        Ok(self.page_and_head(after).await?.0)
    }

    /// [`LogReader::page`], and the head of the log when the page was read (command-service's
    /// `Log-Head` header: every event committed before the request is at or below it; `None`
    /// from a command-service that does not send it).
    pub async fn page_and_head(&self, after: i64) -> anyhow::Result<(Vec<Envelope>, Option<i64>)> {
        let url = format!(
            "{}/events?after={after}&limit={}",
            self.base, self.page_size
        );
        let mut request = self.client.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let head = response
            .headers()
            .get("log-head")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let body = response
            .bytes()
            .await
            .with_context(|| format!("GET {url}"))?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let advice = match (&self.token, status) {
                (None, _) => "set FEED_TOKEN to one of its FEED_TOKENS (or, while it has none, of its WRITE_TOKENS)",
                (Some(_), reqwest::StatusCode::UNAUTHORIZED) => "FEED_TOKEN was not taken as a bearer token",
                (Some(_), _) => "FEED_TOKEN is not one of its FEED_TOKENS (or, while it has none, of its WRITE_TOKENS)",
            };
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|p| p["detail"].as_str().map(String::from))
                .unwrap_or_default();
            return Err(FeedRefused {
                url,
                status,
                advice,
                detail,
            }
            .into());
        }
        if !status.is_success() {
            anyhow::bail!(
                "GET {url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let values: Vec<serde_json::Value> = serde_json::from_slice(&body)
            .with_context(|| format!("GET {url}: not an array of events"))?;
        // Each read as the consumer reads a message: an older version upcast, a newer one
        // read as this one, then held to the contract.
        let mut page = Vec::with_capacity(values.len());
        for (k, value) in values.into_iter().enumerate() {
            let position = value.get("position").cloned().unwrap_or_default();
            page.push(Envelope::from_value(value).with_context(|| {
                format!("GET {url}: event {k} of the page (position {position}) is malformed")
            })?);
        }
        Ok((page, head))
    }
}

/// Replays the whole log of the command-service at `command_url` into `store`, sending
/// `token` (`FEED_TOKEN`) if given.
pub async fn replay(
    store: &Store,
    command_url: &str,
    token: Option<&str>,
) -> anyhow::Result<Report> {
    replay_with_page_size(store, command_url, token, PAGE).await
}

/// [`replay`], reading the log in pages of `page_size` events (1 to [`PAGE`]).
pub async fn replay_with_page_size(
    store: &Store,
    command_url: &str,
    token: Option<&str>,
    page_size: i64,
) -> anyhow::Result<Report> {
    let log = LogReader::with_page_size(command_url, token, page_size)?;
    // In place: while a rebuild fills a generation beside this one (or keeps the previous one
    // through its grace period), a replay would write the current generation ahead of the
    // others and a reader could then see a version go back at the switch.
    let pointer = store
        .refresh_pointer()
        .await
        .context("reading the read model's pointer from MongoDB")?;
    anyhow::ensure!(
        pointer.building.is_none() && pointer.preparing.is_none() && pointer.previous.is_none(),
        "a rebuild is under way (generation {} being built, {} kept): replay repairs in place \
         once it is done, or give it up with query-service rebuild --abandon",
        pointer
            .building
            .or(pointer.preparing)
            .map_or("none".to_string(), |n| n.to_string()),
        pointer
            .previous
            .map_or("none".to_string(), |n| n.to_string()),
    );
    // One generation of the read model throughout, whatever its pointer does meanwhile.
    apply_log(&store.pinned_now(), &log, 0, Until::End, |_| async {
        Ok(())
    })
    .await
}

/// Where [`apply_log`] is: told before and after each bulk write, and after each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// About to write the events up to this position: its writes may land and their counts
    /// not, if the process is stopped before [`Step::Written`].
    Writing(i64),
    /// The events up to `report.last_position` are written and counted.
    Written(Report),
    /// A page is done; the next one is read after `report.last_position`.
    PageDone(Report),
}

/// How far [`apply_log`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// To the end of the log: a page shorter than the reader's page size.
    End,
    /// To the head of the log as its first page was read (command-service's `Log-Head`), or
    /// the end if it comes first: events committed later are not waited for.
    HeadAtStart,
}

/// Applies the log after position `after` to `store`, page by page, as far as `until` says,
/// telling `progress` each [`Step`] (a rebuild records where it is there, and may stop by
/// answering an error).
pub async fn apply_log<F, Fut>(
    store: &Store,
    log: &LogReader,
    after: i64,
    until: Until,
    mut progress: F,
) -> anyhow::Result<Report>
where
    F: FnMut(Step) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut report = Report {
        last_position: after,
        ..Report::default()
    };
    let mut target = None;
    loop {
        let fetched = std::time::Instant::now();
        let (page, head) = log.page_and_head(report.last_position).await?;
        let fetch_ms = fetched.elapsed().as_millis() as u64;
        let (mut write_ms, mut record_ms) = (0u64, 0u64);
        if until == Until::HeadAtStart && target.is_none() {
            target = Some(head.context(
                "command-service sends no Log-Head with GET /events (a version before it): \
                 upgrade command-service first; without the head a rebuild cannot know where to stop",
            )?);
        }
        // Only what is at or below the target.
        let page: Vec<Envelope> = match target {
            Some(t) => page.into_iter().take_while(|e| e.position <= t).collect(),
            None => page,
        };
        let short = (page.len() as i64) < log.page_size();
        for chunk in page.chunks(BULK) {
            progress(Step::Writing(chunk[chunk.len() - 1].position)).await?;
            let writing = std::time::Instant::now();
            let outcomes = apply_chunk(store, chunk).await?;
            let mut counts = Counts::default();
            for (event, outcome) in chunk.iter().zip(outcomes) {
                let outcome = outcome.with_context(|| {
                    format!("applying event at position {} to MongoDB", event.position)
                })?;
                counts.add(outcome);
                match outcome {
                    Outcome::Applied | Outcome::Superseded => report.applied += 1,
                    Outcome::Duplicate | Outcome::DeadLettered => report.skipped += 1,
                }
            }
            write_ms += writing.elapsed().as_millis() as u64;
            let recording = std::time::Instant::now();
            let newest = chunk.iter().map(|e| e.occurred_at).max();
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            let mut tries = 0;
            while let Err(err) = store
                .record(counts, newest, crate::store::Highest::of(chunk))
                .await
            {
                tries += 1;
                if !crate::store::is_transient(&err) || tries >= TRIES {
                    return Err(err).context("recording the projection counters in MongoDB");
                }
                tracing::warn!(error = %err, "counters not recorded; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            record_ms += recording.elapsed().as_millis() as u64;
            report.read += chunk.len() as u64;
            report.last_position = chunk[chunk.len() - 1].position;
            progress(Step::Written(report)).await?;
        }
        tracing::info!(
            generation = store.generation(),
            read = report.read,
            applied = report.applied,
            skipped = report.skipped,
            position = report.last_position,
            fetch_ms,
            write_ms,
            record_ms,
            "replay page done"
        );
        progress(Step::PageDone(report)).await?;
        if short || target.is_some_and(|t| report.last_position >= t) {
            return Ok(report);
        }
    }
}

/// How many times a bulk write or its counters are tried while the store is away (or another
/// writer is in the way) before a replay or rebuild gives up, with backoff up to 5 s between.
const TRIES: u32 = 30;

/// Applies one bulk of the log, trying again while the store is away or a write meets another
/// writer's (a consumer's, beside a replay or a rebuild).
async fn apply_chunk(
    store: &Store,
    chunk: &[Envelope],
) -> anyhow::Result<Vec<Result<Outcome, crate::store::Refused>>> {
    let what = || {
        format!(
            "applying events at positions {} to {} to MongoDB",
            chunk[0].position,
            chunk[chunk.len() - 1].position
        )
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    for tries in 1.. {
        match store.apply_all(chunk).await {
            Ok(outcomes)
                if tries < TRIES
                    && outcomes
                        .iter()
                        .any(|o| matches!(o, Err(refused) if refused.retryable())) =>
            {
                tracing::warn!("a write of the bulk was refused for now; trying the bulk again");
            }
            Ok(outcomes) => return Ok(outcomes),
            Err(err) if crate::store::is_transient(&err) && tries < TRIES => {
                tracing::warn!(error = %err, "MongoDB unavailable; trying the bulk again");
            }
            Err(err) => return Err(err).with_context(what),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
    unreachable!("the loop returns by its last try")
}
