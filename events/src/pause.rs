//! Paused kinds, as the pauses bucket holds them: one key per pause, `all.<kind>` for every
//! tenant or `tenant.<tenant>.<kind>` for one; a key present means paused. Waiting jobs of a
//! paused kind stay queued and none starts; running ones finish.

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

/// The key of a pause of `kind` for `tenant` (`None`: every tenant).
pub fn key(kind: &JobKind, tenant: Option<&Tenant>) -> String {
    match tenant {
        None => format!("all.{kind}"),
        Some(t) => format!("tenant.{t}.{kind}"),
    }
}

/// The kind and tenant of a pause key (`None`: not one).
pub fn parse(key: &str) -> Option<(JobKind, Option<Tenant>)> {
    if let Some(kind) = key.strip_prefix("all.") {
        return Some((JobKind::parse(kind).ok()?, None));
    }
    let (tenant, kind) = key.strip_prefix("tenant.")?.split_once('.')?;
    Some((
        JobKind::parse(kind).ok()?,
        Some(Tenant::parse(tenant).ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_dotted_kinds() {
        let kind = JobKind::parse("report.job_stats").unwrap();
        let acme = Tenant::parse("acme").unwrap();
        assert_eq!(parse(&key(&kind, None)), Some((kind.clone(), None)));
        assert_eq!(parse(&key(&kind, Some(&acme))), Some((kind, Some(acme))));
        assert_eq!(parse("other"), None);
    }
}
