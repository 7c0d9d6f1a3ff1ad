//! What a flood of distinct client addresses costs the rate limits in memory. Prints the resident
//! set before and after each round and the keys the limits remember; asserts nothing.
//!
//! cargo bench --bench limiter_memory -- [--addresses 1000000] [--max-keys 100000]
//!
//! Every address makes one `/health` request's worth of counting (the scope keyed by address), as a
//! client cycling through addresses behind a trusted proxy's X-Forwarded-For would.

use std::net::{IpAddr, Ipv4Addr};

use teachlyd::{
    config::RateLimitConfig,
    rate::{Key, RateLimits, Scope},
};

fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn option(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let addresses = option("--addresses", 1_000_000);
    let max_keys = option("--max-keys", 100_000);
    let limits = RateLimits::new(&RateLimitConfig {
        max_keys,
        ..RateLimitConfig::default()
    });
    let before = resident_kib();
    println!("rate_limit.max_keys = {max_keys}; resident before: {before} KiB");
    let mut counted = 0usize;
    for round in [max_keys / 10, max_keys, addresses] {
        while counted < round {
            let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + counted as u32));
            let _ = limits.check(Scope::Health, Key::Ip(address));
            counted += 1;
        }
        let now = resident_kib();
        println!(
            "{counted:>9} addresses: {:>7} keys remembered, resident {now} KiB (+{} KiB, {:.0} bytes per remembered key)",
            limits.remembered_keys(),
            now.saturating_sub(before),
            now.saturating_sub(before) as f64 * 1024.0 / limits.remembered_keys().max(1) as f64
        );
    }
}
