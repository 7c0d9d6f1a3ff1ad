//! Which address a request comes from: the socket's peer, unless the peer is one of
//! `server.trusted_proxies`; then `X-Forwarded-For` is read from the right, each hop a trusted proxy
//! added, and the first address no trusted proxy vouches for is the client. Anything left of that
//! was written by the client itself and is ignored, so a client cannot choose its own key.

use std::net::IpAddr;

use ipnet::IpNet;
use warp::http::{HeaderMap, HeaderValue};

const FORWARDED_FOR: &str = "x-forwarded-for";

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        // Every X-Forwarded-For line counts, in order, as one list (RFC 9110 §5.3).
        let hops: Vec<&HeaderValue> = headers.get_all(FORWARDED_FOR).iter().collect();
        for value in hops.into_iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for hop in text.rsplit(',') {
                match parse_hop(hop) {
                    Some(address) => client = address,
                    // A hop we cannot read ends the chain: the last trusted hop vouched for no one.
                    None => return client,
                }
                if !self.trusts(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`192.0.2.1:4711`, `[2001:db8::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    None
}

/// An IPv4 client reaching an IPv6 socket shows as `::ffff:a.b.c.d`; it is the same client.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|net| net.parse().unwrap()).collect())
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_cannot_name_another_address() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let forged = headers(&["203.0.113.9"]);
        assert_eq!(
            trusted.client_ip(ip("198.51.100.7"), &forged),
            ip("198.51.100.7")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &forged),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "2001:db8::/32"]);
        // The client wrote the first entry itself; the proxies appended the rest.
        let chain = headers(&["1.2.3.4, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &chain),
            ip("198.51.100.7")
        );
        let with_ports = headers(&["[2001:db9::5]:443, 10.0.0.3:8080"]);
        assert_eq!(
            trusted.client_ip(ip("2001:db8::1"), &with_ports),
            ip("2001:db9::5")
        );
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.2"), &headers(&["198.51.100.8"])),
            ip("198.51.100.8")
        );
    }

    #[test]
    fn a_chain_of_only_trusted_hops_or_garbage_stops_at_the_last_readable_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &headers(&["10.9.9.9"])),
            ip("10.9.9.9")
        );
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &headers(&["198.51.100.7, not-an-ip"])),
            ip("10.0.0.2")
        );
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &headers(&["", "10.0.0.5"])),
            ip("10.0.0.5")
        );
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
    }
}
