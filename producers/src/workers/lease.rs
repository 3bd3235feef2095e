//! The lease token of a job handed to a worker over HTTP: everything any API process needs to
//! act on the job for that worker, signed so that the worker can neither forge nor alter it.
//!
//! The API keeps no state of its own about leases: the token names the `run` command (its stream
//! sequence and the reply subject that acknowledges it), the attempt, its deadline and the
//! lease's expiry. The key derives from the webhook master secret, which every API process of a
//! deployment has, so any of them accepts any other's leases.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use events::command::RunJob;
use events::{JobId, JobKind, Tenant, TraceParent};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Acknowledgement subjects of JetStream (`$JS.ACK.<stream>.<consumer>.…`): the only subjects a
/// lease may name.
const ACK_PREFIX: &str = "$JS.ACK.";

/// One job's lease, as its token carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub(crate) job: JobId,
    pub(crate) tenant: Tenant,
    pub(crate) kind: JobKind,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    #[serde(default)]
    pub(crate) generation: u32,
    pub(crate) timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) webhook: Option<bool>,
    /// The run command's sequence in the COMMANDS stream.
    pub(crate) seq: u64,
    /// Which delivery of the command this lease holds (1 for the first).
    pub(crate) delivered: u64,
    /// Its acknowledgement subject.
    pub(crate) reply: String,
    /// When `job.started` was appended.
    pub(crate) started: DateTime<Utc>,
    /// When the lease runs out unless a heartbeat extends it.
    pub(crate) expires: DateTime<Utc>,
    /// The ack wait of the kind's consumer, which each heartbeat extends the lease by (less a
    /// tenth).
    pub(crate) lease_ms: u64,
    /// The worker's name, as in `job.started`.
    pub(crate) worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<String>,
}

impl Lease {
    /// When the attempt's `timeout_ms` runs out.
    pub(crate) fn deadline(&self) -> DateTime<Utc> {
        self.started + chrono::Duration::milliseconds(self.timeout_ms as i64)
    }

    /// The attempt as its run command described it, with the payload and scheduling of `held`
    /// (the command itself, which a retry needs: the token does not carry them).
    pub(crate) fn run(&self, held: Option<RunJob>) -> RunJob {
        let (payload, scheduling, workflow, round, upstream) = held
            .map(|r| (r.payload, r.scheduling, r.workflow, r.round, r.upstream))
            .unwrap_or_default();
        RunJob {
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            run_at: None,
            payload,
            generation: self.generation,
            webhook: self.webhook,
            scheduling,
            workflow,
            round,
            upstream,
        }
    }

    pub(crate) fn traceparent(&self) -> Option<TraceParent> {
        self.trace.as_deref().and_then(TraceParent::parse)
    }
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("the lease token is malformed")]
    Malformed,
    #[error("the lease token's signature does not verify (it was altered, or made by another deployment)")]
    Forged,
}

/// Signs and verifies lease tokens.
#[derive(Clone)]
pub(crate) struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer whose key derives from `master` (the webhook master secret), apart from every
    /// other key derived from it.
    pub(crate) fn new(master: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(master.as_bytes()).expect("any key length");
        mac.update(b"conveyor lease token v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("any key length")
    }

    /// The token of `lease`: its JSON and the JSON's MAC, each base64url, joined by a dot.
    pub(crate) fn sign(&self, lease: &Lease) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(lease).expect("a lease serialises"));
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// The lease of a token this deployment signed.
    pub(crate) fn verify(&self, token: &str) -> Result<Lease, TokenError> {
        let (body, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).map_err(|_| TokenError::Forged)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let lease: Lease = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if !lease.reply.starts_with(ACK_PREFIX) {
            return Err(TokenError::Malformed);
        }
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            job: JobId::new(),
            tenant: Tenant::parse("acme").unwrap(),
            kind: JobKind::parse("report.monthly").unwrap(),
            attempt: 1,
            max_attempts: 3,
            generation: 0,
            timeout_ms: 1000,
            webhook: Some(false),
            seq: 42,
            delivered: 1,
            reply: "$JS.ACK.C_COMMANDS.worker-report_monthly.1.42.1.0.0".into(),
            started: Utc::now(),
            expires: Utc::now(),
            lease_ms: 30_000,
            worker: "w".into(),
            trace: None,
        }
    }

    #[test]
    fn a_signed_lease_verifies_and_an_altered_one_does_not() {
        let signer = Signer::new("master secret of at least thirty-two bytes");
        let token = signer.sign(&lease());
        assert_eq!(signer.verify(&token).unwrap().seq, 42);

        let (body, tag) = token.split_once('.').unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        json["tenant"] = "other".into();
        let altered = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).unwrap())
        );
        assert_eq!(signer.verify(&altered), Err(TokenError::Forged));
        let other = Signer::new("another deployment's master secret, also long");
        assert_eq!(other.verify(&token), Err(TokenError::Forged));
        assert_eq!(signer.verify("garbage"), Err(TokenError::Malformed));
    }
}
