//! A panic (a bug, whatever input set it off) inside one subject's work is caught there, so the
//! agent goes on serving its other subjects. Needs the release profile's `panic = "unwind"`.
//! A panic anywhere else (the intake server, the deposit pump, the reporter) aborts the
//! process, as `panic = "abort"` did: a pod that restarts is better than one that reports
//! ready and does nothing ([`abort_outside_contained_work`]).

use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

tokio::task_local! {
    /// Set while contained work runs.
    static CONTAINED: ();
}

/// Installs a panic hook that aborts the process after the usual report, unless the panic
/// happened inside [`caught`].
pub fn abort_outside_contained_work() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if CONTAINED.try_with(|_| ()).is_err() {
            std::process::abort();
        }
    }));
}

/// Runs `work`; a panic inside it becomes `Err` with the panic's message.
pub async fn caught<F: Future>(work: F) -> Result<F::Output, String> {
    // Unwind safety is the caller's to state: what `work` shares must stay usable after a
    // panic (the agent's shared state sits behind locks that recover from poisoning).
    AssertUnwindSafe(CONTAINED.scope((), work))
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        let limit = std::hint::black_box(0u8);
        let r = caught(async move { 200u8.checked_add(100 + limit).expect("overflowed") }).await;
        assert_eq!(r, Err("overflowed".to_owned()));
        let name = std::hint::black_box("x");
        let r = caught(async move { panic!("subject {name} broke") }).await;
        assert_eq!(r, Err::<(), _>("subject x broke".to_owned()));
        assert_eq!(caught(async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn contained_work_is_marked_and_other_work_is_not() {
        assert!(CONTAINED.try_with(|_| ()).is_err());
        let inside = caught(async { CONTAINED.try_with(|_| ()).is_ok() }).await;
        assert_eq!(inside, Ok(true));
        // Across an await point and a task hop too.
        let inside = caught(async {
            tokio::task::yield_now().await;
            CONTAINED.try_with(|_| ()).is_ok()
        })
        .await;
        assert_eq!(inside, Ok(true));
        let spawned = tokio::spawn(async { CONTAINED.try_with(|_| ()).is_ok() });
        assert!(!spawned.await.expect("task"), "a spawned task is outside");
    }
}
