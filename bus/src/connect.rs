//! Connecting: the settings, the server list, and the checks made before anything else runs
//! (the server version and JetStream).

use std::time::Duration;

use async_nats::jetstream;
use events::Namespace;

use crate::{Bus, Error, Result};

/// The oldest nats-server conveyor runs on: `sync_interval`, multiple filters and reliable
/// config read-back arrived in 2.10.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Namespace of every name.
    pub namespace: Namespace,
    /// Stream replicas (1 on a single server).
    pub replicas: usize,
    /// How long a JetStream request or publish ack may take before it fails.
    pub request_timeout: Duration,
    /// Connection name, shown in the server's monitoring.
    pub name: String,
    /// Most publishes waiting for their acks at once.
    pub max_publishes_in_flight: usize,
    /// Fail a publish at once while disconnected or at `max_publishes_in_flight` (the API: it
    /// answers 503 rather than hold a request), instead of waiting (workers, tools).
    pub fail_fast: bool,
}

impl BusSettings {
    /// Settings for `url` and `namespace` with the usual timeouts (5 s), waiting publishers.
    pub fn new(url: &str, namespace: Namespace, name: &str) -> Self {
        Self {
            url: url.to_owned(),
            namespace,
            replicas: 1,
            request_timeout: Duration::from_secs(5),
            name: name.to_owned(),
            max_publishes_in_flight: 4096,
            fail_fast: false,
        }
    }
}

/// Parses `major.minor` out of a server version string.
fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Parses a comma-separated list of server URLs (`nats://a:4222,nats://b:4222`; the scheme
/// and port may be left out: `a,b:4223`). async-nats parses a `&str` as one address, so the
/// list is split here and handed over whole: the client then connects to any of them and, after
/// losing its server, reconnects to another (and to the servers the cluster announces).
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::BadUrl(format!("{u}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(Error::BadUrl("no server URL".into()));
    }
    Ok(addrs)
}

impl Bus {
    /// Connects to any of the servers listed in `settings.url`, checks the server version and
    /// JetStream, and keeps reconnecting for ever after a loss, to any server of the list or of
    /// the cluster (publishes then fail within `request_timeout`, never hang).
    pub async fn connect(settings: &BusSettings) -> Result<Self> {
        let addrs = server_addrs(&settings.url)?;
        let client = async_nats::ConnectOptions::new()
            .name(&settings.name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(settings.request_timeout))
            .max_reconnects(None)
            .connect(addrs)
            .await
            .map_err(|source| Error::Connect {
                url: settings.url.clone(),
                source,
            })?;
        let info = client.server_info();
        match parse_version(&info.version) {
            Some(v) if v >= MIN_SERVER_VERSION => {}
            _ => {
                return Err(Error::ServerTooOld {
                    version: info.version,
                    url: settings.url.clone(),
                })
            }
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout)
            .max_ack_inflight(settings.max_publishes_in_flight.max(1))
            .backpressure_on_inflight(!settings.fail_fast)
            .build(client.clone());
        js.query_account().await.map_err(|_| Error::NoJetStream)?;
        Ok(Self {
            client,
            js,
            ns: settings.namespace.clone(),
            replicas: settings.replicas.max(1),
            fail_fast: settings.fail_fast,
        })
    }

    /// The namespace.
    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Sends what the client buffered (acknowledgements, hand-backs) to the server; a process
    /// calls it before it exits, or the server would wait out the ack wait before redelivering.
    pub async fn flush(&self) -> Result<()> {
        self.client.flush().await.map_err(Error::core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists() {
        let addrs = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,b:5000").unwrap();
        let got: Vec<(String, u16)> = addrs
            .iter()
            .map(|a| (a.host().to_owned(), a.port()))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1".to_owned(), 4222),
                ("127.0.0.1".to_owned(), 4223),
                ("b".to_owned(), 5000)
            ]
        );
        assert_eq!(server_addrs("a").unwrap()[0].port(), 4222);
        assert!(server_addrs(" , ").is_err());
        assert!(server_addrs("http://a:1").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("v2.14.6"), Some((2, 14)));
        assert_eq!(parse_version("2.10.0-beta.1"), Some((2, 10)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("2.10.0").unwrap() >= MIN_SERVER_VERSION);
        assert_eq!(parse_version("junk"), None);
    }
}
