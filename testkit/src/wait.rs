//! Polling until a condition holds, with a timeout message that says where, how long and what the
//! last failure was.

use std::fmt::Debug;
use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// What a polled closure may return: `bool` (ready when true), `Option<T>` (ready with `T` when
/// `Some`), or `Result<T, E>` (ready with `T` when `Ok`; the last `Err` goes into the timeout
/// message).
pub trait Ready {
    type Output;
    /// `Ok(value)` when ready, `Err(reason)` otherwise.
    fn into_ready(self) -> std::result::Result<Self::Output, Option<String>>;
}

impl Ready for bool {
    type Output = ();
    fn into_ready(self) -> std::result::Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn into_ready(self) -> std::result::Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Ready for std::result::Result<T, E> {
    type Output = T;
    fn into_ready(self) -> std::result::Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Calls `f` every `poll` until it is ready or `timeout` has passed (at least one call, and one
/// last call at the deadline). The error names the caller's file and line.
#[track_caller]
pub fn wait_until<R: Ready>(
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> R,
) -> Result<R::Output> {
    let caller = Location::caller();
    let start = Instant::now();
    let mut attempts = 0u32;
    let mut last = None;
    loop {
        attempts += 1;
        match f().into_ready() {
            Ok(value) => return Ok(value),
            Err(reason) => last = reason.or(last),
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return timed_out(caller, timeout, attempts, last);
        }
        std::thread::sleep(poll.min(timeout - elapsed));
    }
}

/// The async form of [`wait_until`]; `f` returns a future per attempt.
#[track_caller]
pub fn wait_until_async<R, Fut, F>(
    timeout: Duration,
    poll: Duration,
    mut f: F,
) -> impl Future<Output = Result<R::Output>>
where
    R: Ready,
    Fut: Future<Output = R>,
    F: FnMut() -> Fut,
{
    let caller = Location::caller();
    async move {
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut last = None;
        loop {
            attempts += 1;
            match f().await.into_ready() {
                Ok(value) => return Ok(value),
                Err(reason) => last = reason.or(last),
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return timed_out(caller, timeout, attempts, last);
            }
            tokio::time::sleep(poll.min(timeout - elapsed)).await;
        }
    }
}

fn timed_out<T>(
    caller: &Location<'_>,
    timeout: Duration,
    attempts: u32,
    last: Option<String>,
) -> Result<T> {
    let last = last
        .map(|l| format!("; last failure: {l}"))
        .unwrap_or_default();
    bail!(
        "timed out after {timeout:?} ({attempts} attempts) waiting at {}:{}{last}",
        caller.file(),
        caller.line()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_ready() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .unwrap();
        assert_eq!(v, 3);
        wait_until(Duration::from_secs(1), Duration::from_millis(1), || true).unwrap();
    }

    #[test]
    fn times_out_with_the_last_error_and_location() {
        let err = wait_until(Duration::from_millis(30), Duration::from_millis(5), || {
            Err::<(), _>("still down")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("still down"), "{err}");
        assert!(err.contains("wait.rs"), "{err}");
        assert!(err.contains("attempts"), "{err}");
    }

    #[tokio::test]
    async fn async_form() {
        let mut n = 0;
        let v = wait_until_async(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            let n = n;
            async move { (n >= 2).then_some(n) }
        })
        .await
        .unwrap();
        assert_eq!(v, 2);
        assert!(wait_until_async(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { false }
        )
        .await
        .is_err());
    }
}
