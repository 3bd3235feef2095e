//! Resolving webhook hosts for the rules of [`events::webhooks::url`], with an asynchronous
//! resolver (the system's `resolv.conf`, or the name server of [`TargetSettings::dns_server`]),
//! never with the blocking `getaddrinfo`.
//!
//! Whoever connects must connect to exactly the addresses [`TargetPolicy::resolve`] returned (the
//! notifier makes it the resolver of its HTTP client): a name that answers a public address to a
//! check and an internal one to the connection (DNS rebinding) then gets nowhere. It lives here,
//! not in `events`, because it does network I/O on tokio; the API (checking a submission) and
//! the notifier (connecting) both use it, and this is the I/O crate both depend on.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use bus::webhook_dns::TargetPolicy;
//! use events::webhooks::url::TargetSettings;
//! let policy = TargetPolicy::new(&TargetSettings::default())?;
//! let target = policy.parse("https://hooks.example.com/conveyor?token=s3cret")?;
//! if let Some(host) = target.domain() {
//!     let addresses = policy.resolve(host).await?; // connect to these, and only these
//! }
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use events::webhooks::url::{AddressRules, Target, TargetError, TargetSettings};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the resolver of webhook hosts (set CONVEYOR_DNS_SERVER to name one): {0}")]
pub struct ResolverSetupError(String);

/// The policy: which addresses are allowed, and the resolver. Cheap to clone.
#[derive(Clone)]
pub struct TargetPolicy {
    inner: Arc<PolicyInner>,
}

struct PolicyInner {
    rules: AddressRules,
    resolver: TokioResolver,
}

impl std::fmt::Debug for TargetPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetPolicy")
            .field("rules", &self.inner.rules)
            .finish_non_exhaustive()
    }
}

impl TargetPolicy {
    /// The policy of `settings`, with a resolver reading the system's configuration unless
    /// `settings.dns_server` names the name server.
    pub fn new(settings: &TargetSettings) -> Result<Self, ResolverSetupError> {
        let setup = |e: &dyn std::fmt::Display| ResolverSetupError(e.to_string());
        let builder = match settings.dns_server {
            None => TokioResolver::builder_tokio().map_err(|e| setup(&e))?,
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for c in &mut ns.connections {
                    c.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        Ok(Self {
            inner: Arc::new(PolicyInner {
                rules: AddressRules::new(settings),
                resolver: builder.build().map_err(|e| setup(&e))?,
            }),
        })
    }

    /// The checks that need no lookup (see [`AddressRules::parse`]).
    pub fn parse(&self, raw: &str) -> Result<Target, TargetError> {
        self.inner.rules.parse(raw)
    }

    /// Resolves the name `host` to the addresses to connect to, once. Refuses the name whole if
    /// any of its addresses is refused, so which one a client tries first cannot matter.
    /// Unbounded in time beyond the resolver's own timeouts: callers set their deadline.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, TargetError> {
        let unresolved = |reason: String| TargetError::Unresolved {
            host: host.to_owned(),
            reason,
        };
        let ips: Vec<IpAddr> = match self.inner.resolver.lookup_ip(host).await {
            Ok(lookup) => lookup.iter().collect(),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                return Err(unresolved("no such host".into()))
            }
            Err(e) => return Err(unresolved(e.to_string())),
        };
        if ips.is_empty() {
            return Err(unresolved("no such host".into()));
        }
        if let Some(ip) = ips.iter().find(|ip| !self.inner.rules.permits(**ip)) {
            return Err(TargetError::Forbidden {
                host: host.to_owned(),
                ip: *ip,
            });
        }
        Ok(ips)
    }
}
