//! Graceful shutdown: one signal shared by every long-running task.
//!
//! The HTTP server stops accepting and drains open requests; command-service's relay finishes
//! the batch it is publishing and marks what the broker confirmed; query-service's consumer
//! settles the message in hand and cancels its subscription. Each returns after that.

use tokio::sync::watch;

/// Cloneable handle: `triggered()` resolves once shutdown has begun.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending half: `trigger()` starts the shutdown of every task holding a [`Shutdown`].
pub struct Trigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn triggered(&self) {
        let mut rx = self.rx.clone();
        // An error means every Trigger is gone, which also means: stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
