//! Exponential backoff with a cap, for failures of external systems that a retry can help.
//!
//! In: an attempt closure that says whether its failure is retryable. Out: its first success, or
//! the last error once the attempts are spent or the failure is not retryable. Every retry is
//! logged with the attempt number and the wait, so an unreachable service shows in the logs.

use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait before the first retry.
    pub initial: Duration,
    /// Upper bound of a wait.
    pub max: Duration,
    /// Attempts in all (1 = no retry); 0 = retry for ever.
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(10), attempts: 8 }
    }
}

impl Backoff {
    /// The wait after the given failed attempt (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    fn exhausted(&self, attempt: u32) -> bool {
        self.attempts != 0 && attempt >= self.attempts
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts are spent.
    pub async fn retry<T, E, F, Fut>(&self, what: &str, retryable: impl Fn(&E) -> bool, op: F) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry_while(what, retryable, || true, op).await
    }

    /// [`Backoff::retry`] that also gives up, with the last error, once `keep_going` says no
    /// (asked after a failed attempt and every quarter of a second of a wait): a job asked to
    /// stop while a service is away stops within that, not when the service is back.
    pub async fn retry_while<T, E, F, Fut>(
        &self,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        keep_going: impl Fn() -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        const SLICE: Duration = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && !self.exhausted(attempt) && keep_going() => {
                    let wait = self.delay(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "{what} failed; retrying");
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        let now = tokio::time::Instant::now();
                        if now >= until {
                            break;
                        }
                        tokio::time::sleep((until - now).min(SLICE)).await;
                        if !keep_going() {
                            return Err(e);
                        }
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Blocking variant of [`Backoff::retry`], for synchronous callers.
    pub fn retry_blocking<T, E, F>(&self, what: &str, retryable: impl Fn(&E) -> bool, op: F) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Result<T, E>,
    {
        self.retry_blocking_while(what, retryable, || true, op)
    }

    /// Blocking variant of [`Backoff::retry_while`]: gives up, with the last error, once
    /// `keep_going` says no (asked after a failed attempt and every quarter of a second of a
    /// wait).
    pub fn retry_blocking_while<T, E, F>(
        &self,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        keep_going: impl Fn() -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Result<T, E>,
    {
        const SLICE: Duration = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && !self.exhausted(attempt) && keep_going() => {
                    let wait = self.delay(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "{what} failed; retrying");
                    let until = std::time::Instant::now() + wait;
                    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(left.min(SLICE));
                        if !keep_going() {
                            return Err(e);
                        }
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), attempts: 5 };
        let d: Vec<_> = (1..=6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
    }

    #[tokio::test]
    async fn retry_while_gives_up_with_the_last_error_when_told_to_stop_also_mid_wait() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        // For ever, but not once keep_going says no after a failed attempt.
        let b = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(2), attempts: 0 };
        let calls = AtomicU32::new(0);
        let r: Result<(), String> = b
            .retry_while(
                "x",
                |_| true,
                || calls.load(Ordering::SeqCst) < 3,
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err("down".to_string()) }
                },
            )
            .await;
        assert_eq!((r.unwrap_err().as_str(), calls.load(Ordering::SeqCst)), ("down", 3));
        // A wait of an hour is cut short when the stop comes during it.
        let b = Backoff { initial: Duration::from_secs(3600), max: Duration::from_secs(3600), attempts: 0 };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let attempt = || async { Err::<(), String>("down".to_string()) };
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            b.retry_while("x", |_| true, || !stop.load(Ordering::SeqCst), attempt),
        )
        .await;
        assert_eq!(waited.expect("the wait was not cut short").unwrap_err(), "down");
    }

    #[test]
    fn the_blocking_retry_gives_up_when_told_to_stop_mid_wait() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let b = Backoff { initial: Duration::from_secs(3600), max: Duration::from_secs(3600), attempts: 0 };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            flag.store(true, Ordering::SeqCst);
        });
        let r: Result<(), String> = b.retry_blocking_while(
            "x",
            |_| true,
            || !stop.load(Ordering::SeqCst),
            || Err("down".to_string()),
        );
        assert_eq!(r.unwrap_err(), "down", "an hour's wait was cut short");
        stopper.join().unwrap();
    }

    #[test]
    fn stops_on_a_final_error_and_after_the_attempts() {
        let b = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(2), attempts: 3 };
        let mut calls = 0;
        let r: Result<(), String> = b.retry_blocking(
            "x",
            |e: &String| e == "again",
            || {
                calls += 1;
                Err("again".to_string())
            },
        );
        assert_eq!((r.unwrap_err().as_str(), calls), ("again", 3));
        let mut calls = 0;
        let r: Result<(), String> = b.retry_blocking(
            "x",
            |e: &String| e == "again",
            || {
                calls += 1;
                Err("final".to_string())
            },
        );
        assert_eq!((r.unwrap_err().as_str(), calls), ("final", 1));
        let mut calls = 0;
        let r = b.retry_blocking(
            "x",
            |_: &String| true,
            || {
                calls += 1;
                if calls < 3 { Err("again".to_string()) } else { Ok(calls) }
            },
        );
        assert_eq!(r.unwrap(), 3);
    }
}
