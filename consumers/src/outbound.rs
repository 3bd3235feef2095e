//! Outbound HTTP to targets users name (webhook receivers, push kinds' endpoints): a client that
//! resolves names through the target policy and connects to exactly the addresses it allowed
//! (one lookup, no second one that a rebinding name could answer differently), never follows a
//! redirect and uses no proxy (a proxy would resolve the name itself); bounded requests in
//! flight per host; and what a failed request comes to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bus::webhook_dns::TargetPolicy;
use events::webhooks::url::TargetError;
use tokio::sync::Semaphore;

/// The HTTP client for targets vetted by `policy`, with `timeout` per request.
pub(crate) fn client(
    policy: &TargetPolicy,
    timeout: Duration,
    user_agent: &str,
) -> crate::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(VettedResolver(policy.clone())))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(user_agent)
        .build()
        .map_err(|e| crate::Error::Config(format!("HTTP client: {e}")))
}

/// Requests in flight per target host, each bounded.
#[derive(Debug)]
pub(crate) struct HostSlots {
    limit: usize,
    /// A std mutex: held only for a map operation.
    hosts: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

/// A request slot of one host; frees itself (and forgets an idle host) when dropped.
pub(crate) struct HostSlot<'a> {
    slots: &'a HostSlots,
    host: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for HostSlot<'_> {
    fn drop(&mut self) {
        let mut hosts = self.slots.hosts.lock().expect("host map poisoned");
        // Our permit is still held here: the host is idle once it is the only one out.
        if hosts
            .get(&self.host)
            .is_some_and(|s| s.available_permits() + 1 == self.slots.limit)
        {
            hosts.remove(&self.host);
        }
    }
}

impl HostSlots {
    /// At most `limit` requests in flight per host (and port).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            hosts: Default::default(),
        }
    }

    /// A slot of `url`'s host, if one is free.
    pub(crate) fn try_acquire(&self, url: &str) -> Option<HostSlot<'_>> {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
            })
            .unwrap_or_default();
        let sem = {
            let mut hosts = self.hosts.lock().expect("host map poisoned");
            hosts
                .entry(host.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
                .clone()
        };
        let permit = sem.try_acquire_owned().ok()?;
        Some(HostSlot {
            slots: self,
            host,
            _permit: permit,
        })
    }
}

/// The client resolves names through the target policy, so it connects to exactly the addresses
/// the policy allowed, from one lookup per connection.
struct VettedResolver(TargetPolicy);

impl reqwest::dns::Resolve for VettedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let ips = policy.resolve(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// What a failed request comes to. The message never contains the URL (whose query may carry
/// secrets).
#[derive(Debug)]
pub(crate) enum Failure {
    /// The policy refused the target: no retry can help.
    Refused(String),
    /// A timeout, a connection error, a name not resolved yet: worth another try.
    Passing(String),
}

/// Classifies a failed request: the policy's refusal of the target (found among the causes,
/// where the client's resolver put it) is final, anything else passes.
pub(crate) fn failure(e: reqwest::Error) -> Failure {
    let e = e.without_url();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<TargetError>() {
            return match refused {
                TargetError::Forbidden { .. } | TargetError::Invalid(_) => {
                    Failure::Refused(format!("refused: {refused}"))
                }
                TargetError::Unresolved { .. } => Failure::Passing(refused.to_string()),
            };
        }
        cause = c.source();
    }
    if e.is_timeout() {
        return Failure::Passing("the endpoint did not answer in time".into());
    }
    Failure::Passing(format!("cannot reach the endpoint: {}", causes(&e)))
}

/// An error and its causes, `: `-separated, each said once.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cause = c.source();
    }
    out
}
