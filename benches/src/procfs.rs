//! CPU time and resident memory of a process, read from Linux's /proc: what the end-to-end
//! benchmark charges to the server and to the load generator.

use std::time::{SystemTime, UNIX_EPOCH};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub unix_ms: f64,
    /// User plus system CPU time so far, microseconds.
    pub cpu_us: f64,
    pub rss_kib: u64,
}

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `pid`'s utime+stime and VmRSS, or None if it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(Sample {
        unix_ms: now_unix_ms(),
        cpu_us: (utime + stime) / TICKS_PER_SECOND * 1e6,
        rss_kib,
    })
}

pub fn now_unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// CPU time used between `start_ms` and `end_ms`, interpolated linearly between samples.
pub fn cpu_between(samples: &[Sample], start_ms: f64, end_ms: f64) -> Option<f64> {
    Some(cpu_at(samples, end_ms)? - cpu_at(samples, start_ms)?)
}

/// [`cpu_between`] for a process that has exited by now: a window that ends after its last
/// sample (it exited within one sampling interval of the window's end) is counted up to that
/// sample, an undercount of at most one interval. `None` only without samples in the window.
pub fn cpu_between_until_exit(samples: &[Sample], start_ms: f64, end_ms: f64) -> Option<f64> {
    let last = samples.last()?.unix_ms;
    (last > start_ms).then(|| cpu_between(samples, start_ms, end_ms.min(last)))?
}

fn cpu_at(samples: &[Sample], at_ms: f64) -> Option<f64> {
    let after = samples.iter().position(|s| s.unix_ms >= at_ms)?;
    if after == 0 {
        return Some(samples[0].cpu_us);
    }
    let (a, b) = (samples[after - 1], samples[after]);
    let span = (b.unix_ms - a.unix_ms).max(1e-9);
    Some(a.cpu_us + (b.cpu_us - a.cpu_us) * (at_ms - a.unix_ms) / span)
}

/// The resident memory of the last sample at or before `at_ms`.
pub fn rss_at(samples: &[Sample], at_ms: f64) -> Option<u64> {
    samples
        .iter()
        .rev()
        .find(|s| s.unix_ms <= at_ms)
        .map(|s| s.rss_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_ms: f64, cpu_us: f64, rss_kib: u64) -> Sample {
        Sample {
            unix_ms,
            cpu_us,
            rss_kib,
        }
    }

    #[test]
    fn reads_this_process_and_interpolates() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
        let samples = [at(0.0, 0.0, 1), at(100.0, 1000.0, 2), at(200.0, 1000.0, 3)];
        assert_eq!(cpu_between(&samples, 50.0, 150.0), Some(500.0));
        assert_eq!(
            cpu_between(&samples, 0.0, 300.0),
            None,
            "window must be covered"
        );
        assert_eq!(rss_at(&samples, 150.0), Some(2));
    }

    #[test]
    fn a_window_past_the_last_sample_counts_up_to_it_only_for_an_exited_process() {
        let samples = [at(0.0, 0.0, 0), at(100.0, 1000.0, 0), at(200.0, 2000.0, 0)];
        assert_eq!(cpu_between(&samples, 50.0, 150.0), Some(1000.0));
        assert_eq!(
            cpu_between(&samples, 50.0, 250.0),
            None,
            "a live process must be sampled"
        );
        assert_eq!(cpu_between_until_exit(&samples, 50.0, 250.0), Some(1500.0));
        assert_eq!(
            cpu_between_until_exit(&samples, 300.0, 400.0),
            None,
            "no sample in the window"
        );
    }
}
