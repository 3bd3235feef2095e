//! Paused kinds, as the pauses bucket holds them: one key per pause, `all.<kind>` for every
//! tenant (an operator's), `op.<tenant>.<kind>` for one tenant by an operator, and
//! `tenant.<tenant>.<kind>` by the tenant itself (so neither lifts the other's); a key present
//! means paused. Waiting jobs of a paused kind stay queued and none starts; running ones finish.
//! Beside them, each tenant's share of the workers ([`TenantShare`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobKind, Tenant};

/// A pause's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// When it was paused.
    pub since: DateTime<Utc>,
    /// Who paused it (the token's subject).
    pub by: String,
}

/// A tenant's share of every kind's workers, as the shares bucket holds it (key: the tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantShare {
    /// Releases per turn among the tenants with waiting jobs of a kind (1 to 100; 1 by default).
    pub weight: u32,
    /// The most of its jobs of one kind running at once (`None`: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
}

impl TenantShare {
    /// The weights a tenant may have.
    pub const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=100;
}

/// Who paused a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The tenant, for its own jobs.
    Tenant,
    /// An operator (for one tenant, or for every tenant).
    Operator,
}

/// The key of a pause of `kind` for `tenant` (`None`: every tenant, an operator's).
pub fn key(kind: &JobKind, tenant: Option<&Tenant>, by: By) -> String {
    match (tenant, by) {
        (None, _) => format!("all.{kind}"),
        (Some(t), By::Operator) => format!("op.{t}.{kind}"),
        (Some(t), By::Tenant) => format!("tenant.{t}.{kind}"),
    }
}

/// The kind, tenant and author of a pause key (`None`: not one).
pub fn parse(key: &str) -> Option<(JobKind, Option<Tenant>, By)> {
    if let Some(kind) = key.strip_prefix("all.") {
        return Some((JobKind::parse(kind).ok()?, None, By::Operator));
    }
    let (by, rest) = if let Some(rest) = key.strip_prefix("tenant.") {
        (By::Tenant, rest)
    } else {
        (By::Operator, key.strip_prefix("op.")?)
    };
    let (tenant, kind) = rest.split_once('.')?;
    Some((
        JobKind::parse(kind).ok()?,
        Some(Tenant::parse(tenant).ok()?),
        by,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_dotted_kinds() {
        let kind = JobKind::parse("report.job_stats").unwrap();
        let acme = Tenant::parse("acme").unwrap();
        assert_eq!(
            parse(&key(&kind, None, By::Operator)),
            Some((kind.clone(), None, By::Operator))
        );
        for by in [By::Tenant, By::Operator] {
            assert_eq!(
                parse(&key(&kind, Some(&acme), by)),
                Some((kind.clone(), Some(acme.clone()), by))
            );
        }
        assert_ne!(
            key(&kind, Some(&acme), By::Tenant),
            key(&kind, Some(&acme), By::Operator)
        );
        assert_eq!(parse("other"), None);
    }
}
