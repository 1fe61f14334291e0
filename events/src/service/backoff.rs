//! The one retry delay both services use, for every kind of retry: the relay and the sequencer
//! waiting for PostgreSQL or RabbitMQ, the consumer reconnecting to RabbitMQ or waiting for
//! MongoDB, an event the store refuses, a supervised task restarted.
//!
//! The delay doubles after each failure, from a base up to a ceiling, and starts over after a
//! success. [`Backoff::pause`] adds up to a quarter of jitter, so replicas that failed together
//! do not retry in step, and gives up when shutdown begins.

use super::shutdown::Shutdown;
use std::time::Duration;

/// A growing delay between retries. The base is never above the ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        let base = base.min(max);
        Backoff {
            base,
            max,
            next: base,
        }
    }

    /// The delay the next try waits (before jitter), to log before pausing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The delay before the next try; the one after it is twice as long, up to the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// A try succeeded: the next failure waits the base delay again.
    pub fn reset(&mut self) {
        self.next = self.base;
    }

    /// The delay after `failures` failures in a row (1 is the base), for a caller that keeps a
    /// count rather than a [`Backoff`] (one count per held message, say).
    pub fn after_failures(base: Duration, max: Duration, failures: u32) -> Duration {
        let base = base.min(max);
        (base * 2_u32.pow(failures.saturating_sub(1).min(16))).min(max)
    }

    /// Sleeps for [`Backoff::next_delay`] plus up to a quarter of jitter; false, at once, when
    /// shutdown has begun or begins meanwhile.
    pub async fn pause(&mut self, shutdown: &Shutdown) -> bool {
        if shutdown.is_triggered() {
            return false;
        }
        let delay = jittered(self.next_delay());
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.triggered() => false,
        }
    }
}

/// `delay` plus a random part of up to a quarter of it.
pub fn jittered(delay: Duration) -> Duration {
    let quarter = delay.as_millis() as u64 / 4;
    delay + Duration::from_millis(rand::random_range(0..=quarter))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_delay_doubles_up_to_the_ceiling_and_starts_over_after_a_success() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn a_base_above_the_ceiling_is_the_ceiling() {
        let mut b = Backoff::new(500 * MS, 200 * MS);
        assert_eq!(b.next_delay(), 200 * MS);
        assert_eq!(Backoff::after_failures(500 * MS, 200 * MS, 1), 200 * MS);
    }

    #[test]
    fn the_delay_after_n_failures_matches_n_steps_of_a_backoff() {
        let mut b = Backoff::new(200 * MS, 5000 * MS);
        for failures in 1..=40 {
            assert_eq!(
                Backoff::after_failures(200 * MS, 5000 * MS, failures),
                b.next_delay(),
                "{failures} failures"
            );
        }
        assert_eq!(Backoff::after_failures(200 * MS, 5000 * MS, 0), 200 * MS);
        assert_eq!(
            Backoff::after_failures(200 * MS, 5000 * MS, u32::MAX),
            5000 * MS,
            "no overflow"
        );
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        for _ in 0..1000 {
            let d = jittered(400 * MS);
            assert!(d >= 400 * MS && d <= 500 * MS, "{d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_early_when_shutdown_begins() {
        let (trigger, shutdown) = crate::service::shutdown::channel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let pausing = tokio::spawn(async move { b.pause(&shutdown).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.trigger();
        assert!(!pausing.await.expect("joined"), "cut short by shutdown");
        let (_trigger, shutdown) = crate::service::shutdown::channel();
        let mut b = Backoff::new(MS, MS);
        assert!(b.pause(&shutdown).await, "slept its delay");
    }
}
