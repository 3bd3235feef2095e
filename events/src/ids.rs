//! Validated newtypes for the names that cross the wire: job ids, tenants, kinds, namespaces.
//! Each is checked once at the edge, so handlers receive values that are already valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// A tenant must match `[a-z0-9][a-z0-9_-]{0,63}`.
    #[error("invalid tenant {0:?}: expected [a-z0-9][a-z0-9_-]{{0,63}}")]
    Tenant(String),
    /// A kind is one or more dot-separated words `[a-z][a-z0-9_]*`, at most 64 characters.
    #[error("invalid job kind {0:?}: expected dot-separated words of [a-z][a-z0-9_]*, at most 64 characters")]
    Kind(String),
    /// A namespace must match `[a-z][a-z0-9_]{0,31}`.
    #[error("invalid namespace {0:?}: expected [a-z][a-z0-9_]{{0,31}}")]
    Namespace(String),
    /// A job id is a UUID.
    #[error("invalid job id {0:?}: expected a UUID")]
    JobId(String),
}

/// A job's id: a UUIDv7, so ids sort by creation time (keyset pagination relies on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl JobId {
    /// An id derived from `name` (the same name, the same id), time-ordered like every job id:
    /// its timestamp is `at_ms`, the rest a digest of `name`. For jobs whose submission may be
    /// repeated and must keep their id (a schedule's tick, a batch's members).
    pub fn derived(at_ms: u64, name: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(name.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[..6].copy_from_slice(&at_ms.to_be_bytes()[2..]);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        Self(Uuid::from_bytes(bytes))
    }

    /// The `n`th of ids derived together from `name` (`n` below 4096): like
    /// [`JobId::derived`], but with `n` in the 12 bits after the timestamp, so ids of one
    /// timestamp sort in the order of `n`.
    pub fn derived_nth(at_ms: u64, name: &str, n: u16) -> Self {
        let mut bytes = *Self::derived(at_ms, name).0.as_bytes();
        let n = n.min(0x0fff);
        bytes[6] = 0x70 | (n >> 8) as u8;
        bytes[7] = (n & 0xff) as u8;
        Self(Uuid::from_bytes(bytes))
    }

    /// The millisecond timestamp of a time-ordered id.
    pub fn timestamp_ms(&self) -> u64 {
        let b = self.0.as_bytes();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&b[..6]);
        u64::from_be_bytes(ms)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::JobId(s.to_owned()))
    }
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident, $check:ident, $err:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if $check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::$err(s.to_owned()))
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn valid_tenant(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if is_lower_alnum(c))
        && s.len() <= 64
        && chars.all(|c| is_lower_alnum(c) || c == '_' || c == '-')
}

fn valid_kind(s: &str) -> bool {
    s.len() <= 64
        && s.split('.').all(|word| {
            let mut chars = word.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
                && chars.all(|c| is_lower_alnum(c) || c == '_')
        })
}

fn valid_namespace(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 32
        && chars.all(|c| is_lower_alnum(c) || c == '_')
}

string_newtype!(
    /// A tenant: every job, event and read belongs to exactly one, taken from the caller's token.
    Tenant,
    valid_tenant,
    Tenant
);
string_newtype!(
    /// A job kind, such as `sleep` or `report.job_stats`: selects the handler that runs the job.
    JobKind,
    valid_kind,
    Kind
);
string_newtype!(
    /// The prefix of every stream, subject and consumer, so environments and tests can share one
    /// NATS server without seeing each other.
    Namespace,
    valid_namespace,
    Namespace
);

impl JobKind {
    /// The kind as a single subject token and consumer-name part (dots become `_`).
    pub fn token(&self) -> String {
        self.0.replace('.', "_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_repeat_and_sort_in_their_order() {
        let at = 1_764_000_000_000;
        assert_eq!(JobId::derived(at, "a"), JobId::derived(at, "a"));
        assert_ne!(JobId::derived(at, "a"), JobId::derived(at, "b"));
        assert_eq!(JobId::derived(at, "a").timestamp_ms(), at);
        let ids: Vec<JobId> = (0..1000)
            .map(|n| JobId::derived_nth(at, "page", n))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in the order of n");
        assert_eq!(ids[7], JobId::derived_nth(at, "page", 7));
        assert_eq!(ids[7].0.get_version_num(), 7);
        assert!(JobId::derived_nth(at + 1, "page", 0) > ids[999]);
    }

    #[test]
    fn tenants() {
        assert!(Tenant::parse("acme").is_ok());
        assert!(Tenant::parse("a-b_c9").is_ok());
        assert!(Tenant::parse("").is_err());
        assert!(Tenant::parse("-a").is_err());
        assert!(Tenant::parse("Acme").is_err());
        assert!(Tenant::parse("a.b").is_err());
        assert!(Tenant::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn kinds() {
        assert!(JobKind::parse("sleep").is_ok());
        assert!(JobKind::parse("report.job_stats").is_ok());
        assert_eq!(
            JobKind::parse("report.job_stats").unwrap().token(),
            "report_job_stats"
        );
        for bad in ["", "a..b", ".a", "a.", "Sleep", "a b", "a>", "a*", "9a"] {
            assert!(JobKind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces() {
        assert!(Namespace::parse("conveyor").is_ok());
        assert!(Namespace::parse("test_0193abc").is_ok());
        assert!(Namespace::parse("a.b").is_err());
        assert!(Namespace::parse("a-b").is_err());
    }

    #[test]
    fn job_ids_are_time_ordered() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
        assert!("nope".parse::<JobId>().is_err());
    }
}
