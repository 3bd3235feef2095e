//! The webhook URLs of submissions, vetted against server-side request forgery in two steps.
//!
//! 1. [`WebhookTargets::parse`], during validation: the checks that need no lookup (form,
//!    scheme, an address or `localhost` as host). Cheap, so it comes before the tenant's rate
//!    limit and quota.
//! 2. [`WebhookTargets::resolve`], only for a request the rate limit and quota let through: each
//!    distinct host name of the request is resolved once, all of them at the same time, under one
//!    deadline for the whole request, with the asynchronous resolver of [`bus::webhook_dns`] (no
//!    thread of tokio's blocking pool is held, so a name server that never answers costs a
//!    socket and a timer, not a thread).
//!
//! A tenant has at most `per_tenant` lookups in flight in this process. Further lookups wait for
//! a slot within the same deadline; a host that got none by then is answered `429` with
//! `Retry-After` (nothing is wrong with it: try again), while a host whose lookup ran out of time
//! is `422`, as is one that does not resolve or resolves to a refused address.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::webhook_dns::{ResolverSetupError, TargetPolicy};
use events::webhooks::url::TargetSettings;
use events::Tenant;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::ApiError;

/// How long the lookups of one request may take in all.
const DEADLINE: Duration = Duration::from_secs(3);

/// The webhook target policy of the API, and each tenant's lookup slots.
pub(crate) struct WebhookTargets {
    policy: TargetPolicy,
    allow_private: bool,
    per_tenant: usize,
    /// The lookup slots of the tenants that have lookups in flight. A std mutex: held only for a
    /// map operation, never across an await.
    tenants: Mutex<HashMap<Tenant, Arc<Semaphore>>>,
}

impl std::fmt::Debug for WebhookTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTargets")
            .field("policy", &self.policy)
            .field("per_tenant", &self.per_tenant)
            .finish_non_exhaustive()
    }
}

/// Why a webhook host was not accepted; the same for every job of a batch with that host.
#[derive(Debug, Clone)]
pub(crate) enum Refused {
    /// It does not resolve, or not in time, or to a refused address (422).
    Host(String),
    /// The tenant's lookup slots stayed taken until the deadline (429: try again).
    Busy(String),
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Host(detail) => ApiError::Unprocessable(detail),
            Refused::Busy(detail) => ApiError::TooManyRequests {
                detail,
                retry_after_secs: 1,
            },
        }
    }
}

/// One request's hold on its tenant's lookup slots; forgets an idle tenant when dropped.
struct TenantSlots<'a> {
    owner: &'a WebhookTargets,
    tenant: &'a Tenant,
    slots: Arc<Semaphore>,
}

impl Drop for TenantSlots<'_> {
    fn drop(&mut self) {
        let mut tenants = self.owner.tenants.lock().expect("tenant map poisoned");
        // Clones are only made under this lock: two references are the map's and ours, so no
        // other request of the tenant holds (or is about to take) its slots.
        if Arc::strong_count(&self.slots) == 2 {
            tenants.remove(self.tenant);
        }
    }
}

impl WebhookTargets {
    pub(crate) fn new(
        settings: &TargetSettings,
        per_tenant: usize,
    ) -> Result<Self, ResolverSetupError> {
        Ok(Self {
            policy: TargetPolicy::new(settings)?,
            allow_private: settings.allow_private,
            per_tenant: per_tenant.max(1),
            tenants: Mutex::default(),
        })
    }

    /// The checks that need no lookup. Returns the host name still to resolve, if any (none
    /// when every address is allowed: there is nothing a lookup could refuse).
    pub(crate) fn parse(&self, url: &str) -> Result<Option<String>, ApiError> {
        let target = self
            .policy
            .parse(url)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        if self.allow_private {
            return Ok(None);
        }
        Ok(target.domain().map(str::to_owned))
    }

    /// Resolves each distinct name of `hosts` once, concurrently, under one deadline, with at
    /// most `per_tenant` lookups of `tenant` in flight; what each name came to.
    pub(crate) async fn resolve(
        &self,
        tenant: &Tenant,
        hosts: impl IntoIterator<Item = String>,
    ) -> HashMap<String, Result<(), Refused>> {
        let hosts: HashSet<String> = hosts.into_iter().collect();
        if hosts.is_empty() {
            return HashMap::new();
        }
        let deadline = Instant::now() + DEADLINE;
        let slots = self.slots(tenant);
        let slots = &slots;
        let lookups = hosts.into_iter().map(|host| async move {
            let outcome = self.resolve_one(&slots.slots, &host, deadline).await;
            (host, outcome)
        });
        futures::future::join_all(lookups)
            .await
            .into_iter()
            .collect()
    }

    async fn resolve_one(
        &self,
        slots: &Semaphore,
        host: &str,
        deadline: Instant,
    ) -> Result<(), Refused> {
        let Ok(slot) = tokio::time::timeout_at(deadline, slots.acquire()).await else {
            metrics::counter!("conveyor_rejected_requests_total", "reason" => "webhook_lookups")
                .increment(1);
            return Err(Refused::Busy(format!(
                "webhook host {host} was not looked up: this tenant has too many webhook host lookups in flight; retry shortly"
            )));
        };
        let looked_up = tokio::time::timeout_at(deadline, self.policy.resolve(host)).await;
        drop(slot);
        match looked_up {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Refused::Host(e.to_string())),
            Err(_) => Err(Refused::Host(format!(
                "webhook host {host} did not resolve in time"
            ))),
        }
    }

    fn slots<'a>(&'a self, tenant: &'a Tenant) -> TenantSlots<'a> {
        let slots = self
            .tenants
            .lock()
            .expect("tenant map poisoned")
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone();
        TenantSlots {
            owner: self,
            tenant,
            slots,
        }
    }
}
