//! Supervision of the long-running background tasks (command-service's sequencer and relay,
//! query-service's consumer).
//!
//! A task that returns or panics while the service is not shutting down is logged at error
//! level and started again after a backoff (1 s, doubling up to 30 s, back to 1 s once a run
//! lasted a minute). `/ready` shows each task's state, its restarts and the last failure, so a
//! service never stays up with a dead task while saying all is well.

use super::backoff::Backoff;
use super::shutdown::Shutdown;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::{AbortHandle, JoinHandle};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next failure starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// One task's state as `/ready` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskReport {
    /// `running`, or `restarting` while it waits out its backoff.
    pub state: &'static str,
    pub restarts: u64,
    pub last_failure: Option<String>,
}

#[derive(Default)]
struct Task {
    running: AtomicBool,
    restarts: AtomicU64,
    last_failure: Mutex<Option<String>>,
    current: Mutex<Option<AbortHandle>>,
}

/// The service's supervised tasks, by name.
#[derive(Default)]
pub struct Supervisor {
    tasks: Mutex<BTreeMap<&'static str, Arc<Task>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Supervisor {
    /// Runs `make()` as task `name`, again after each failure, until `shutdown`.
    pub fn spawn<F, Fut>(&self, name: &'static str, shutdown: Shutdown, make: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = Arc::new(Task::default());
        lock(&self.tasks).insert(name, task.clone());
        tokio::spawn(async move {
            let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
            loop {
                let started = tokio::time::Instant::now();
                let run = tokio::spawn(make());
                *lock(&task.current) = Some(run.abort_handle());
                task.running.store(true, Ordering::Relaxed);
                let ended = run.await;
                task.running.store(false, Ordering::Relaxed);
                if shutdown.is_triggered() {
                    return;
                }
                let why = match ended {
                    Ok(()) => "returned".to_string(),
                    Err(err) if err.is_panic() => {
                        let payload = err.into_panic();
                        let message = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into());
                        format!("panicked: {message}")
                    }
                    Err(_) => "was aborted".to_string(),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff.reset();
                }
                task.restarts.fetch_add(1, Ordering::Relaxed);
                *lock(&task.last_failure) = Some(why.clone());
                tracing::error!(task = name, failure = %why, restart_in_ms = backoff.peek().as_millis() as u64, "background task ended; restarting it");
                if !backoff.pause(&shutdown).await {
                    return;
                }
            }
        })
    }

    /// Each task's state, by name.
    pub fn report(&self) -> BTreeMap<&'static str, TaskReport> {
        lock(&self.tasks)
            .iter()
            .map(|(name, t)| {
                let report = TaskReport {
                    state: if t.running.load(Ordering::Relaxed) {
                        "running"
                    } else {
                        "restarting"
                    },
                    restarts: t.restarts.load(Ordering::Relaxed),
                    last_failure: lock(&t.last_failure).clone(),
                };
                (*name, report)
            })
            .collect()
    }

    /// Stops the current run of task `name` as a crash would; it is restarted like after one.
    /// The lever operators and tests have to check that supervision works. False for an
    /// unknown task.
    pub fn abort(&self, name: &str) -> bool {
        let tasks = lock(&self.tasks);
        let Some(task) = tasks.get(name) else {
            return false;
        };
        if let Some(handle) = lock(&task.current).as_ref() {
            handle.abort();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_or_returns_is_restarted_and_reported() {
        let (trigger, shutdown) = crate::service::shutdown::channel();
        let supervisor = Supervisor::default();
        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let stop = shutdown.clone();
        let handle = supervisor.spawn("worker", shutdown.clone(), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                match n {
                    0 => panic!("first run breaks"),
                    1 => {} // returns
                    _ => stop.triggered().await,
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        let report = supervisor.report();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "started three times");
        assert_eq!(
            report["worker"],
            TaskReport {
                state: "running",
                restarts: 2,
                last_failure: Some("returned".into()),
            }
        );
        assert!(supervisor.abort("worker"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(supervisor.report()["worker"].state, "restarting");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(supervisor.report()["worker"].state, "running");
        assert_eq!(
            supervisor.report()["worker"].last_failure.as_deref(),
            Some("was aborted")
        );
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("stops at shutdown")
            .expect("task");
    }
}
