//! The wall clock, in the protocol's unit. The only place the server reads the system time
//! (the sans-I/O cores are given time; the shells read it here or from tokio).

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (the protocol's `server_time_us`); 0 if the system
/// clock is before 1970.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}
