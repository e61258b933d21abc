//! A panic (a bug, whatever input set it off) inside one subject's work is caught there, so the
//! agent goes on serving its other subjects. Needs the release profile's `panic = "unwind"`.

use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Runs `work`; a panic inside it becomes `Err` with the panic's message.
pub async fn caught<F: Future>(work: F) -> Result<F::Output, String> {
    // Unwind safety is the caller's to state: what `work` shares must stay usable after a
    // panic (the agent's shared state sits behind locks that recover from poisoning).
    AssertUnwindSafe(work)
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
}
