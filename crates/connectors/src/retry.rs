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
    pub async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && !self.exhausted(attempt) => {
                    let wait = self.delay(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "{what} failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Blocking variant of [`Backoff::retry`], for synchronous callers.
    pub fn retry_blocking<T, E, F>(
        &self,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Result<T, E>,
    {
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && !self.exhausted(attempt) => {
                    let wait = self.delay(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "{what} failed; retrying");
                    std::thread::sleep(wait);
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
