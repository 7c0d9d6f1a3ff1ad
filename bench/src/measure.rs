//! Latency histograms and the server's CPU and memory, read from /proc.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// An HDR histogram of latencies in microseconds (1 µs to 1 h, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Latency(
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("1 µs to 1 h at 3 significant digits are valid bounds"),
        )
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Both have the same bounds; a value beyond them was already saturated when recorded.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Percentiles {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p90_ms: ms(self.0.value_at_quantile(0.90)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
            mean_ms: self.0.mean() / 1000.0,
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The server processes whose CPU time and resident memory are reported.
#[derive(Debug, Clone)]
pub struct Processes {
    pids: Vec<u32>,
    ticks_per_second: f64,
}

/// CPU seconds (user + system) and resident KiB, summed over the processes, at an instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

impl Processes {
    pub fn new(pids: Vec<u32>) -> Self {
        // SAFETY: sysconf only reads a constant of the system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Processes {
            pids,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// `None` when no process is known or one of them cannot be read (it exited).
    pub fn sample(&self) -> Option<Sample> {
        if self.pids.is_empty() {
            return None;
        }
        let at = Instant::now();
        let mut ticks = 0;
        let mut rss_kib = 0;
        for pid in &self.pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            ticks += cpu_ticks(&stat)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            rss_kib += resident_kib(&status)?;
        }
        Some(Sample {
            at,
            cpu_seconds: ticks as f64 / self.ticks_per_second,
            rss_kib,
        })
    }
}

/// utime + stime from /proc/PID/stat (fields 14 and 15; the name in field 2 may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// VmRSS from /proc/PID/status, in KiB.
fn resident_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU spent between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// CPU seconds the server spent (user + system).
    pub cpu_seconds: f64,
    /// Of one core, over the wall-clock time between the samples.
    pub utilisation_percent: f64,
    /// CPU µs per delivered message (when the scenario delivers messages).
    pub us_per_message: Option<f64>,
}

impl Cpu {
    pub fn between(before: Sample, after: Sample, messages: u64) -> Cpu {
        let cpu_seconds = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
        Cpu {
            cpu_seconds,
            utilisation_percent: if wall > 0.0 {
                cpu_seconds / wall * 100.0
            } else {
                0.0
            },
            us_per_message: (messages > 0).then(|| cpu_seconds * 1e6 / messages as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_like_the_kernel_writes_them() {
        let stat = "4242 (teachlyd (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        let status = "Name:\tteachlyd\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(resident_kib(status), Some(12345));
        assert_eq!(resident_kib("Name:\tx\n"), None);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut latency = Latency::new();
        assert!(latency.percentiles().is_none());
        for ms in 1..=1000u64 {
            latency.record(Duration::from_millis(ms));
        }
        let mut other = Latency::new();
        other.record(Duration::from_secs(7200));
        latency.merge(&other);
        let p = latency.percentiles().unwrap();
        assert_eq!(p.count, 1001);
        assert!((p.p50_ms - 500.0).abs() < 3.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 5.0, "{p:?}");
        assert!(p.max_ms >= 3_599_000.0, "saturated at the top: {p:?}");
    }
}
