//! How many TCP connections the server holds at once (`limits.max_connections`) and from one address
//! (`limits.max_connections_per_ip`). A connection keeps its slot for as long as it is open, and a
//! WebSocket upgraded from it keeps the slot after the HTTP connection has handed it over.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client_ip::TrustedProxies;

pub struct ConnectionCaps {
    open: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    trusted: TrustedProxies,
}

/// One admitted connection's place; given back when the last holder drops it.
#[derive(Clone)]
pub struct ConnectionSlot {
    _held: Arc<Held>,
}

struct Held {
    _permit: OwnedSemaphorePermit,
    address: Option<(Arc<ConnectionCaps>, IpAddr)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((caps, address)) = &self.address {
            let mut per_ip = caps.lock();
            if let Some(count) = per_ip.get_mut(address) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(address);
                }
            }
        }
    }
}

impl ConnectionCaps {
    pub fn new(max: usize, max_per_ip: usize, trusted: TrustedProxies) -> Arc<Self> {
        Arc::new(Self {
            open: Arc::new(Semaphore::new(max)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            trusted,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until fewer than `limits.max_connections` are open: while it waits, new connections
    /// stay in the kernel's accept queue instead of costing the server anything.
    pub async fn room(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        Arc::clone(&self.open)
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed")
    }

    /// Admits a connection from `peer` holding `permit`, unless that address already holds
    /// `limits.max_connections_per_ip`. A trusted proxy speaks for many clients and is not capped.
    pub fn admit(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        peer: IpAddr,
    ) -> Option<ConnectionSlot> {
        if self.trusted.trusts(peer) {
            return Some(ConnectionSlot {
                _held: Arc::new(Held {
                    _permit: permit,
                    address: None,
                }),
            });
        }
        let mut per_ip = self.lock();
        let count = per_ip.entry(peer).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        drop(per_ip);
        Some(ConnectionSlot {
            _held: Arc::new(Held {
                _permit: permit,
                address: Some((Arc::clone(self), peer)),
            }),
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self, max: usize) -> usize {
        max - self.open.available_permits()
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_gets_its_share_and_gives_it_back() {
        let caps = ConnectionCaps::new(10, 2, TrustedProxies::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = caps.admit(caps.room().await, ip).unwrap();
        let second = caps.admit(caps.room().await, ip).unwrap();
        assert!(caps.admit(caps.room().await, ip).is_none());
        assert_eq!(
            caps.open(10),
            2,
            "a refused connection gives its permit back"
        );
        let other = caps.admit(caps.room().await, "192.0.2.2".parse().unwrap());
        assert!(other.is_some());
        let kept = first.clone();
        drop(first);
        assert!(
            caps.admit(caps.room().await, ip).is_none(),
            "a clone holds the slot"
        );
        drop((kept, second, other));
        assert_eq!((caps.open(10), caps.addresses()), (0, 0));
    }

    #[tokio::test]
    async fn the_global_cap_makes_the_next_connection_wait() {
        let caps = ConnectionCaps::new(1, 1, TrustedProxies::default());
        let held = caps.admit(caps.room().await, "192.0.2.1".parse().unwrap());
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), caps.room());
        assert!(waiting.await.is_err());
        drop(held);
        let permit = tokio::time::timeout(std::time::Duration::from_millis(50), caps.room());
        assert!(permit.await.is_ok());
    }

    #[tokio::test]
    async fn a_trusted_proxy_is_not_capped_per_address() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let caps = ConnectionCaps::new(
            10,
            1,
            TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]),
        );
        let slots: Vec<_> = (0..5)
            .map(|_| caps.admit(caps.open.clone().try_acquire_owned().unwrap(), proxy))
            .collect();
        assert!(slots.iter().all(Option::is_some));
        assert_eq!(caps.addresses(), 0);
    }
}
