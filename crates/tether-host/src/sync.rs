//! The one locking policy of tether's synchronous locks: a lock poisoned by a panic is taken
//! over, never turned into a permanent error.
//!
//! Every `std::sync::Mutex` in tether guards data that is consistent at every point where a
//! panic could unwind: maps changed by single insert/remove calls, counters, and SQLite
//! connections, whose unfinished transaction rolls back when it is dropped during the unwind.
//! So a panic in one task must not make the lock unusable for every later caller (it once
//! turned one bad alert into "store lock poisoned" for every request a hub served). Callers
//! also keep fallible or slow work (formatting, I/O beyond the guarded resource, network
//! sends) outside the guard.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking over a lock that a panicking holder left poisoned.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_over() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().expect("lock");
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
