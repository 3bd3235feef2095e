//! Webhook URL checks against server-side request forgery: only `http`/`https`, and no target
//! that is or resolves to a loopback, private, link-local, unique-local, unspecified or cloud
//! metadata address, unless the deployment explicitly allows private targets.

use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

/// Whether an address must never be a webhook target by default.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 0
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (seg0 & 0xffc0) == 0xfe80 // fe80::/10 link local
        }
    }
}

/// Checks a webhook URL; `Err` carries the reason for a 422.
pub async fn check(raw: &str, allow_private: bool) -> Result<(), String> {
    if raw.len() > 2048 {
        return Err("webhook.url is longer than 2048 characters".into());
    }
    let url = Url::parse(raw).map_err(|e| format!("webhook.url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("webhook.url must be http or https".into());
    }
    if allow_private {
        return url
            .host()
            .map(drop)
            .ok_or_else(|| "webhook.url has no host".into());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let ips: Vec<IpAddr> = match url.host() {
        None => return Err("webhook.url has no host".into()),
        Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                return Err("webhook.url must not point to localhost".into());
            }
            let lookup = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::lookup_host((d.as_str(), port)),
            )
            .await
            .map_err(|_| format!("webhook host {d} did not resolve in time"))?
            .map_err(|e| format!("webhook host {d} does not resolve: {e}"))?;
            lookup.map(|a| a.ip()).collect()
        }
    };
    if ips.iter().any(|ip| is_forbidden(*ip)) {
        return Err("webhook.url resolves to a loopback, private, link-local or metadata address; these are refused unless CONVEYOR_ALLOW_PRIVATE_WEBHOOKS is set".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_targets_are_refused() {
        for url in [
            "http://127.0.0.1:4222/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
            "http://[fc00::1]/",
            "http://0x7f000001/",
            "http://localhost./",
            "file:///etc/passwd",
            "gopher://example.com/",
        ] {
            assert!(check(url, false).await.is_err(), "{url}");
        }
        assert!(check("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check("http://93.184.215.14/hook", false).await.is_ok());
    }
}
