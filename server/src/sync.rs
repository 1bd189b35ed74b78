//! The one locking helper the server's small critical sections share.

/// Locks a mutex whose critical sections cannot panic midway: a poisoned lock only means a
/// panic elsewhere in the holder's task, and the data is still consistent, so it is used.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
