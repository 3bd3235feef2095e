//! Webhook signatures, per [Standard Webhooks](https://www.standardwebhooks.com/): a receiver
//! gets `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, several space-separated during a
//! secret rotation). The secret is `whsec_<base64 key>`; each tenant has its own, derived from the
//! deployment's master secret, so one tenant's secret never verifies another's deliveries.
//!
//! Which URLs may be targets is [`url`]'s concern.
//!
//! A receiver in Rust verifies with [`verify`]:
//!
//! ```
//! use events::webhooks::{sign, verify};
//! let secret = events::webhooks::tenant_secret("master", "acme");
//! let body = br#"{"type":"dev.conveyor.job.succeeded"}"#;
//! let sig = sign(&secret, "msg_1", 1_700_000_000, body).unwrap();
//! assert!(verify(&secret, "msg_1", "1700000000", &sig, body, 1_700_000_010).is_ok());
//! assert!(verify(&secret, "msg_1", "1700000000", &sig, b"tampered", 1_700_000_010).is_err());
//! ```

pub mod url;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A delivery that exhausted its attempts (or was refused), kept for operators to list and
/// re-drive, under the key `<tenant>.<job>` of the `<NS>_WEBHOOK_FAILURES` bucket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedDelivery {
    /// The job.
    pub job: String,
    /// Its tenant.
    pub tenant: String,
    /// Its kind.
    pub kind: String,
    /// The target.
    pub url: String,
    /// EVENTS sequence of the terminal event that was being delivered.
    pub event_seq: u64,
    /// Attempts made.
    pub attempts: u64,
    /// The last error.
    pub last_error: String,
    /// When it was given up (RFC 3339).
    pub failed_at: String,
}

/// How far a delivery's timestamp may be from the receiver's clock (replay protection).
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Why a delivery did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The secret is not `whsec_<base64>`.
    #[error("invalid webhook secret")]
    Secret,
    /// The timestamp is not a number, or too far from now.
    #[error("webhook timestamp missing, malformed or outside the tolerance")]
    Timestamp,
    /// No signature matches.
    #[error("no matching webhook signature")]
    Signature,
}

/// The signing secret of a tenant: `whsec_` + base64 of HMAC-SHA256(master, tenant).
pub fn tenant_secret(master: &str, tenant: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(master.as_bytes()).expect("HMAC takes any key");
    mac.update(b"conveyor-webhook-secret:");
    mac.update(tenant.as_bytes());
    format!("whsec_{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| VerifyError::Secret)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` header value for a delivery.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, VerifyError> {
    let tag = mac(&key(secret)?, id, timestamp, body)
        .finalize()
        .into_bytes();
    Ok(format!("v1,{}", STANDARD.encode(tag)))
}

/// Verifies a delivery from its three headers and raw body, at Unix time `now`. Compares in
/// constant time and rejects timestamps more than [`TOLERANCE_SECS`] away.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Timestamp)?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(VerifyError::Timestamp);
    }
    let key = key(secret)?;
    for sig in signatures.split_whitespace() {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(b64) else {
            continue;
        };
        if mac(&key, id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        // The example from the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let header = format!("v1,bm9wZQ== {sig}");
        assert!(verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            &header,
            body,
            1614265331
        )
        .is_ok());
        assert_eq!(
            verify(
                secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &sig,
                body,
                1614265330 + 301
            ),
            Err(VerifyError::Timestamp)
        );
        assert_eq!(
            verify(secret, "other", "1614265330", &sig, body, 1614265330),
            Err(VerifyError::Signature)
        );
    }

    #[test]
    fn tenants_get_different_secrets() {
        assert_ne!(tenant_secret("m", "a"), tenant_secret("m", "b"));
        assert_eq!(tenant_secret("m", "a"), tenant_secret("m", "a"));
        assert!(tenant_secret("m", "a").starts_with("whsec_"));
    }
}
