//! Cancellation of read-only queries: the gRPC layer installs a token for the call's blocking
//! work, and person scans poll it every few hundred people, so a dropped call stops at once.
//!
//! The token is ambient (a thread-local set for the duration of the work and carried into the
//! scan's worker threads) because a scan's result is useless once its caller is gone: a scan
//! that observes cancellation stops early, and the caller discards whatever it computed.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Set once the call that owns the work is dropped (deadline, client cancel, shutdown).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<Flag>);

#[derive(Debug, Default)]
struct Flag {
    cancelled: AtomicBool,
    /// Whether some scan already stopped because of this token (counted once per token).
    observed: AtomicBool,
}

/// Scans stopped by a cancelled token since the process started (once per token).
static OBSERVED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static CURRENT: RefCell<Option<CancelToken>> = const { RefCell::new(None) };
}

impl CancelToken {
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// Runs `work` with this token as the thread's current one.
    pub fn scope<T>(&self, work: impl FnOnce() -> T) -> T {
        struct Restore(Option<CancelToken>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(self.clone())));
        work()
    }
}

/// The current thread's token, to carry into threads a scan spawns.
pub fn current() -> Option<CancelToken> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `work` under `token` when there is one (for scan worker threads).
pub fn within<T>(token: Option<&CancelToken>, work: impl FnOnce() -> T) -> T {
    match token {
        Some(token) => token.scope(work),
        None => work(),
    }
}

/// Whether the current work was cancelled; scans stop when it says so.
pub fn stopped() -> bool {
    CURRENT.with(|c| {
        let current = c.borrow();
        let Some(token) = current.as_ref() else {
            return false;
        };
        if !token.is_cancelled() {
            return false;
        }
        if !token.0.observed.swap(true, Ordering::Relaxed) {
            OBSERVED.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("sextant_queries_cancelled_total").increment(1);
            tracing::debug!("query cancelled; scan stopped");
        }
        true
    })
}

/// How many scans stopped because their call was cancelled (a Prometheus counter too:
/// `sextant_queries_cancelled_total`).
pub fn observed_total() -> u64 {
    OBSERVED.load(Ordering::Relaxed)
}

/// People a scan visits between two looks at the token.
pub const CHECK_EVERY: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_scoped_to_the_work() {
        assert!(!stopped(), "no token: never stopped");
        let token = CancelToken::default();
        token.scope(|| {
            assert!(!stopped());
            token.cancel();
            assert!(stopped());
            let inner = current();
            let seen = std::thread::scope(|s| s.spawn(|| within(inner.as_ref(), stopped)).join().unwrap());
            assert!(seen, "carried into worker threads");
        });
        assert!(!stopped(), "restored after the scope");
    }
}
