//! A value a start builds on a thread of its own, after the port opens, from files it has
//! already mapped: the lookups of a loaded table's strings and a project's traits, which take
//! time in proportion to the people. Whoever reads it first waits for the build; everything
//! else (a funnel, a retention table) does not. A failed build is final: a read panics rather
//! than answer without it, and the start's check (`engine::verify_in_background`) ends the
//! process, naming the file.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender};

pub struct Deferred<T> {
    value: OnceLock<Result<T, String>>,
    /// Until the first read: where the build sends its outcome.
    build: parking_lot::Mutex<Option<Receiver<Result<T, String>>>>,
}

/// The sending end of a `Deferred`: a builder may fill several (one thread, several values).
pub type Builder<T> = SyncSender<Result<T, String>>;

impl<T> Deferred<T> {
    pub fn ready(value: T) -> Deferred<T> {
        Deferred { value: OnceLock::from(Ok(value)), build: parking_lot::Mutex::new(None) }
    }

    /// A value still to be built: the builder sends it (or why it cannot be built) once.
    pub fn pending() -> (Builder<T>, Deferred<T>) {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        (sender, Deferred { value: OnceLock::new(), build: parking_lot::Mutex::new(Some(receiver)) })
    }

    /// Waits for the build: the value, or why it could not be built.
    pub fn outcome(&self) -> Result<&T, &str> {
        let settled = self.value.get_or_init(|| {
            // One reader waits on the channel; the others wait on the `OnceLock`.
            let receiver = self.build.lock().take().expect("a deferred value's build is awaited once");
            receiver.recv().unwrap_or_else(|_| Err("its build stopped without an outcome".to_owned()))
        });
        settled.as_ref().map_err(String::as_str)
    }

    /// Whether the build has ended (a read would not wait).
    pub fn is_settled(&self) -> bool {
        self.value.get().is_some()
    }

    pub fn get(&self) -> &T {
        self.outcome().unwrap_or_else(|error| panic!("{error}"))
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.get();
        match self.value.get_mut() {
            Some(Ok(value)) => value,
            _ => unreachable!("`get` returned a value"),
        }
    }
}

impl<T> std::ops::Deref for Deferred<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.get()
    }
}

impl<T> std::ops::DerefMut for Deferred<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.get_mut()
    }
}

/// A settled copy (waiting for the build first), or the same failure.
impl<T: Clone> Clone for Deferred<T> {
    fn clone(&self) -> Deferred<T> {
        let value = self.outcome().cloned().map_err(str::to_owned);
        Deferred { value: OnceLock::from(value), build: parking_lot::Mutex::new(None) }
    }
}

impl<T: Default> Default for Deferred<T> {
    fn default() -> Deferred<T> {
        Deferred::ready(T::default())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value.get() {
            Some(Ok(value)) => value.fmt(f),
            Some(Err(error)) => write!(f, "Deferred(failed: {error})"),
            None => f.write_str("Deferred(building)"),
        }
    }
}

/// Lowers the calling thread's priority (and that of the threads it starts, which inherit it):
/// background work then takes the cores only when queries (or a start's load) leave them
/// idle. (Linux keeps a nice value per thread; elsewhere this does nothing.)
pub fn yield_to_queries() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads only its integer arguments; on Linux, `who == 0` with
        // PRIO_PROCESS names the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn readers_wait_for_the_build_and_all_see_its_value() {
        let (builder, deferred) = Deferred::<Vec<u32>>::pending();
        let deferred = Arc::new(deferred);
        let sent = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (deferred, sent) = (deferred.clone(), sent.clone());
                std::thread::spawn(move || {
                    let value = deferred.get().clone();
                    assert!(sent.load(Ordering::SeqCst), "a read returned before the build sent its value");
                    value
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!deferred.is_settled());
        sent.store(true, Ordering::SeqCst);
        builder.send(Ok(vec![1, 2, 3])).unwrap();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), vec![1, 2, 3]);
        }
        assert!(deferred.is_settled());
        let mut deferred = Arc::into_inner(deferred).unwrap();
        deferred.push(4);
        assert_eq!(*deferred, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_failed_or_abandoned_build_is_an_error_every_read_sees() {
        let (builder, failed) = Deferred::<u32>::pending();
        builder.send(Err("traits file 7.traits is corrupt".into())).unwrap();
        assert_eq!(failed.outcome(), Err("traits file 7.traits is corrupt"));
        assert_eq!(failed.outcome(), Err("traits file 7.traits is corrupt"), "final");
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| *failed.get())).unwrap_err();
        assert!(read.downcast_ref::<String>().unwrap().contains("7.traits"));

        let (builder, abandoned) = Deferred::<u32>::pending();
        drop(builder);
        assert!(abandoned.outcome().unwrap_err().contains("stopped"));
        assert_eq!(*Deferred::ready(5u32), 5);
    }
}
