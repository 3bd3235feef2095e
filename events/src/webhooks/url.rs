//! Webhook targets, vetted against server-side request forgery: the rules, which need no I/O.
//!
//! A target is an `http` or `https` URL whose every address is globally reachable: not
//! loopback, private, shared, link-local, multicast, reserved, documentation, benchmarking or any
//! other range of the IANA IPv4 and IPv6 special-purpose registries that is not globally
//! reachable, also when the IPv4 address is embedded in an IPv6 one (IPv4-mapped,
//! IPv4-compatible, SIIT, NAT64, 6to4, Teredo). [`TargetSettings::allow`]
//! (`CONVEYOR_WEBHOOK_ALLOW_CIDRS`) lets chosen networks through, such as an internal receiver
//! network; [`TargetSettings::allow_private`] (`CONVEYOR_ALLOW_PRIVATE_WEBHOOKS`) lets
//! everything through (development and tests).
//!
//! [`AddressRules::parse`] does the checks that need no lookup; a host name is resolved, and each
//! of its addresses checked with [`AddressRules::permits`], by `bus::webhook_dns`.
//!
//! ```
//! use events::webhooks::url::{AddressRules, TargetSettings};
//! let rules = AddressRules::new(&TargetSettings::default());
//! assert!(rules.parse("http://169.254.169.254/latest").is_err());
//! let target = rules.parse("https://hooks.example.com/conveyor?token=s3cret").unwrap();
//! assert_eq!(target.domain(), Some("hooks.example.com")); // to resolve, then vet
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

pub use ipnet::IpNet;

/// The longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Which webhook targets are allowed, and how their names are resolved.
#[derive(Debug, Clone, Default)]
pub struct TargetSettings {
    /// Allow every address (development and tests).
    pub allow_private: bool,
    /// Networks allowed although not globally reachable (e.g. an internal receiver network).
    pub allow: Vec<IpNet>,
    /// The name server that resolves webhook hosts; `None`: the system's configuration.
    pub dns_server: Option<SocketAddr>,
}

/// Why a webhook target is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a usable URL (length, scheme, host).
    #[error("{0}")]
    Invalid(String),
    /// The host is, or resolves to, an address the policy refuses. The address is kept for the
    /// logs; it is not in the message, which goes to clients.
    #[error("webhook host {host} is or resolves to a loopback, private, link-local, metadata or other non-public address; such targets are refused unless CONVEYOR_WEBHOOK_ALLOW_CIDRS or CONVEYOR_ALLOW_PRIVATE_WEBHOOKS allows them")]
    Forbidden {
        /// The URL's host.
        host: String,
        /// The refused address.
        ip: IpAddr,
    },
    /// The name has no address, or the name server failed.
    #[error("webhook host {host} does not resolve: {reason}")]
    Unresolved {
        /// The URL's host.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

/// A URL that passed the checks needing no lookup (see [`AddressRules::parse`]).
#[derive(Debug, Clone)]
pub struct Target {
    url: Url,
}

impl Target {
    /// The URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The host name still to resolve; `None` when the host is an address (already vetted).
    pub fn domain(&self) -> Option<&str> {
        self.url.domain()
    }
}

/// Which addresses webhooks may be delivered to.
#[derive(Debug, Clone, Default)]
pub struct AddressRules {
    allow_private: bool,
    allow: Vec<IpNet>,
}

impl AddressRules {
    /// The rules of `settings`.
    pub fn new(settings: &TargetSettings) -> Self {
        Self {
            allow_private: settings.allow_private,
            allow: settings.allow.iter().map(IpNet::trunc).collect(),
        }
    }

    /// Whether a webhook may be delivered to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let allowed = |ip: IpAddr| self.allow.iter().any(|net| net.contains(&ip));
        self.allow_private
            || allowed(ip)
            || embedded_ipv4(ip).is_some_and(|v4| allowed(IpAddr::V4(v4)))
            || !is_forbidden(ip)
    }

    /// The checks that need no lookup: length, scheme, a host, and the host itself when it is
    /// an address or `localhost`. A name still to resolve is [`Target::domain`].
    pub fn parse(&self, raw: &str) -> Result<Target, TargetError> {
        let invalid = |m: String| Err(TargetError::Invalid(m));
        if raw.len() > MAX_URL_LEN {
            return invalid(format!(
                "webhook.url is longer than {MAX_URL_LEN} characters"
            ));
        }
        let url = match Url::parse(raw) {
            Ok(url) => url,
            Err(e) => return invalid(format!("webhook.url is not a URL: {e}")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return invalid("webhook.url must be http or https".into());
        }
        let ip = match url.host() {
            None => return invalid("webhook.url has no host".into()),
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(d)) => {
                let d = d.trim_end_matches('.');
                if !self.allow_private && (d == "localhost" || d.ends_with(".localhost")) {
                    return invalid("webhook.url must not point to localhost".into());
                }
                return Ok(Target { url });
            }
        };
        if !self.permits(ip) {
            return Err(TargetError::Forbidden {
                host: ip.to_string(),
                ip,
            });
        }
        Ok(Target { url })
    }
}

/// The URL as logs and stored errors may show it: its scheme, host and port, and a short hash
/// of the whole URL to tell targets apart. Never its user information, path, query or fragment:
/// receivers put credentials in any of them (`?token=…`, Slack's and Discord's paths).
pub fn redact(raw: &str) -> String {
    use sha2::Digest as _;
    match Url::parse(raw) {
        Ok(url) => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let host = url.host_str().unwrap_or_default();
            let digest = hex::encode(&sha2::Sha256::digest(raw.as_bytes())[..4]);
            format!("{}://{host}{port}/… (#{digest})", url.scheme())
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// Whether an address must never be a webhook target unless explicitly allowed: every range of
/// the IANA IPv4 and IPv6 special-purpose address registries that is not globally reachable,
/// multicast, and in IPv6 everything outside global unicast `2000::/3`. An IPv4 address
/// embedded in an IPv6 one is judged as IPv4.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => ipv4_forbidden(v4),
        IpAddr::V6(v6) => ipv6_forbidden(v6),
    }
}

/// IPv4 ranges that are globally reachable although inside a forbidden range below.
const IPV4_GLOBAL: &[(u32, u8)] = &[
    (0xc000_0009, 32), // 192.0.0.9/32 Port Control Protocol anycast
    (0xc000_000a, 32), // 192.0.0.10/32 TURN anycast
];

/// IPv4 ranges that are not globally reachable.
const IPV4_FORBIDDEN: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0a00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 shared address space (carrier-grade NAT)
    (0x7f00_0000, 8),  // 127.0.0.0/8 loopback
    (0xa9fe_0000, 16), // 169.254.0.0/16 link-local (cloud metadata)
    (0xac10_0000, 12), // 172.16.0.0/12 private
    (0xc000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xc000_0200, 24), // 192.0.2.0/24 documentation (TEST-NET-1)
    (0xc058_6300, 24), // 192.88.99.0/24 deprecated 6to4 relay anycast
    (0xc0a8_0000, 16), // 192.168.0.0/16 private
    (0xc612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xc633_6400, 24), // 198.51.100.0/24 documentation (TEST-NET-2)
    (0xcb00_7100, 24), // 203.0.113.0/24 documentation (TEST-NET-3)
    (0xe000_0000, 4),  // 224.0.0.0/4 multicast
    (0xf000_0000, 4),  // 240.0.0.0/4 reserved, and 255.255.255.255 broadcast
];

/// IPv6 ranges inside `2000::/3` that are globally reachable although inside a forbidden range.
const IPV6_GLOBAL: &[(u128, u8)] = &[
    (0x2001_0001_0000_0000_0000_0000_0000_0001, 128), // 2001:1::1 PCP anycast
    (0x2001_0001_0000_0000_0000_0000_0000_0002, 128), // 2001:1::2 TURN anycast
    (0x2001_0001_0000_0000_0000_0000_0000_0003, 128), // 2001:1::3 DNS-SD SRP anycast
    (0x2001_0003_0000_0000_0000_0000_0000_0000, 32),  // 2001:3::/32 AMT
    (0x2001_0004_0112_0000_0000_0000_0000_0000, 48),  // 2001:4:112::/48 AS112-v6
    (0x2001_0030_0000_0000_0000_0000_0000_0000, 28),  // 2001:30::/28 drone remote ID
];

/// IPv6 ranges inside `2000::/3` that are not globally reachable (or not locators).
const IPV6_FORBIDDEN: &[(u128, u8)] = &[
    // 2001::/23 IETF protocol assignments: benchmarking 2001:2::/48, ORCHID 2001:10::/28,
    // ORCHIDv2 2001:20::/28 (identifiers, not locators) and the rest of the block.
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 23),
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // 2001:db8::/32 documentation
    (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20), // 3fff::/20 documentation
];

fn in_v4(ip: u32, (net, len): (u32, u8)) -> bool {
    len == 0 || (ip ^ net) >> (32 - u32::from(len)) == 0
}

fn in_v6(ip: u128, (net, len): (u128, u8)) -> bool {
    len == 0 || (ip ^ net) >> (128 - u32::from(len)) == 0
}

fn ipv4_forbidden(ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    !IPV4_GLOBAL.iter().any(|r| in_v4(ip, *r)) && IPV4_FORBIDDEN.iter().any(|r| in_v4(ip, *r))
}

fn ipv6_forbidden(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    // Teredo (2001::/32): the server's address, then the client's (inverted) in the last bits.
    if in_v6(bits, (0x2001_0000 << 96, 32)) {
        let server = Ipv4Addr::from((bits >> 64) as u32);
        let client = Ipv4Addr::from(!(bits as u32));
        return ipv4_forbidden(server) || ipv4_forbidden(client);
    }
    if let Some(v4) = embedded_ipv4(IpAddr::V6(ip)) {
        return ipv4_forbidden(v4);
    }
    // Only global unicast is reachable: this refuses the unique-local (fc00::/7), link-local
    // (fe80::/10), site-local (fec0::/10), multicast (ff00::/8), discard-only (100::/64),
    // local-use NAT64 (64:ff9b:1::/48) and segment-identifier (5f00::/16) ranges, and what
    // IANA has not assigned.
    if !in_v6(bits, (0x2000 << 112, 3)) {
        return true;
    }
    !IPV6_GLOBAL.iter().any(|r| in_v6(bits, *r)) && IPV6_FORBIDDEN.iter().any(|r| in_v6(bits, *r))
}

/// The IPv4 address an IPv6 address stands for, where the IPv6 address carries one that the
/// network would reach: IPv4-compatible `::/96` (which includes `::` and `::1`), IPv4-mapped
/// `::ffff:0:0/96`, SIIT `::ffff:0:0:0/96`, NAT64 `64:ff9b::/96` and 6to4 `2002::/16`.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(ip) = ip else { return None };
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    match bits >> 32 {
        0 | 0xffff | 0xffff_0000 | 0x0064_ff9b_0000_0000_0000_0000 => Some(low),
        _ if in_v6(bits, (0x2002 << 112, 16)) => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_private: bool, allow: &[&str]) -> AddressRules {
        AddressRules::new(&TargetSettings {
            allow_private,
            allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
            dns_server: None,
        })
    }

    #[test]
    fn special_purpose_addresses_are_forbidden() {
        for ip in [
            // From the security review.
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "::127.0.0.1",
            "fec0::1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            // IPv4 special-purpose registry, and multicast.
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "239.255.255.250",
            "255.255.255.255",
            // IPv6 special-purpose registry, multicast and unassigned space.
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0:169.254.169.254",
            "64:ff9b:1::a00:1",
            "64:ff9b::c0a8:101",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:db8::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo whose client is 127.0.0.1
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff0e::1",
            "4000::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_forbidden(ip), "{ip} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "93.184.215.14",
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.0.0.9",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81b::200e",
            "2001:4860:4860::8888",
            "2001:1::1",
            "2001:4:112::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo whose client is 8.8.8.8
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_forbidden(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        let p = policy(false, &[]);
        for url in [
            "http://127.0.0.1:4222/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::1]/",
            "http://[::127.0.0.1]/",
            "http://[fec0::1]/",
            "http://198.18.0.1/",
            "http://224.0.0.1/",
            "http://240.0.0.1/",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
            "http://[fc00::1]/",
            "http://0x7f000001/",
            "http://localhost./",
            "http://api.localhost/",
            "file:///etc/passwd",
            "gopher://example.com/",
        ] {
            assert!(p.parse(url).is_err(), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(p.parse(&long), Err(TargetError::Invalid(_))));
        assert!(p.parse("http://93.184.215.14/hook").is_ok());
        let named = p.parse("https://Hooks.Example.com/x?token=1").unwrap();
        assert_eq!(named.domain(), Some("hooks.example.com"));
        assert_eq!(p.parse("http://[2606:4700::1]/").unwrap().domain(), None);
    }

    #[test]
    fn allowed_networks_and_allow_private_let_targets_through() {
        let p = policy(false, &["10.20.0.0/16", "127.0.0.2/32"]);
        assert!(p.parse("http://10.20.3.4/").is_ok());
        assert!(p.parse("http://[::ffff:10.20.3.4]/").is_ok());
        assert!(p.parse("http://127.0.0.2:8080/").is_ok());
        assert!(p.parse("http://10.21.0.1/").is_err());
        assert!(p.parse("http://127.0.0.1/").is_err());
        let any = policy(true, &[]);
        assert!(any.parse("http://127.0.0.1:9/hook").is_ok());
        assert!(any.parse("http://localhost:9/hook").is_ok());
        assert!(any.parse("ftp://127.0.0.1/").is_err());
    }

    #[test]
    fn redaction_keeps_scheme_host_and_port_only() {
        let url = "https://user:pw@hooks.example.com:8443/services/T0/B0/s3cret?token=s3cret#frag";
        let shown = redact(url);
        assert!(
            shown.starts_with("https://hooks.example.com:8443/… (#"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret") && !shown.contains("pw") && !shown.contains("T0"));
        assert_eq!(redact(url), shown, "the same target, the same hash");
        assert_ne!(redact("https://hooks.example.com:8443/other"), shown);
        assert!(redact("http://[::1]/x?y=1").starts_with("http://[::1]/… (#"));
        assert_eq!(redact("not a url ?token=s3cret"), "(not a URL)");
    }
}
