//! Bearer-token authentication: JWTs with `sub`, a tenant claim, `scope`, `exp`, `iss`, `aud`.
//!
//! Tokens are verified with one algorithm, pinned by configuration: HS256 with a shared secret
//! (development, or a gateway that mints tokens), or RS256/ES256 with the public keys an
//! identity provider (Keycloak, Ory, Auth0, Cognito) publishes as a JWKS document. A token whose
//! header names another algorithm, or `none`, is refused before any key is looked at, so an
//! HS256 token "signed" with a provider's public key never verifies. `jku`, `x5u` and embedded
//! `jwk` headers are ignored: keys only ever come from the configured JWKS URL.
//!
//! JWKS keys are cached by `kid`. An unknown `kid` (the provider rotated its keys) refreshes the
//! cache, at most once per `jwks_refresh_min`, and one refresh at a time, so a flood of tokens
//! with made-up key ids costs the provider one request per interval. The whole set is also
//! refreshed once it is older than `jwks_max_age`; if the provider is unreachable, the keys
//! already cached keep working.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use events::Tenant;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use crate::error::ApiError;
use crate::AppState;

/// Scope to submit and cancel jobs.
pub const JOBS_WRITE: &str = "jobs:write";
/// Scope to read jobs.
pub const JOBS_READ: &str = "jobs:read";
/// Scope to read event streams.
pub const EVENTS_READ: &str = "events:read";
/// Scope for operations.
pub const ADMIN: &str = "admin";

/// The largest JWKS document read from a provider.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The one accepted algorithm: `HS256`, `RS256` or `ES256`.
    pub algorithm: Algorithm,
    /// HS256 shared secret.
    pub secret: String,
    /// Where RS256/ES256 public keys are published (a JWKS document).
    pub jwks_url: Option<String>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// The claim that names the tenant (`tenant`, or a provider's namespaced custom claim).
    pub tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Fewest time between two refreshes of the JWKS caused by unknown key ids.
    pub jwks_refresh_min: Duration,
    /// Age after which the cached JWKS is fetched again.
    pub jwks_max_age: Duration,
}

impl JwtSettings {
    /// HS256 with `secret`, issuer and audience `conveyor`: development and tests.
    pub fn hs256(secret: &str) -> Self {
        Self {
            algorithm: Algorithm::HS256,
            secret: secret.to_owned(),
            jwks_url: None,
            issuer: "conveyor".into(),
            audience: "conveyor".into(),
            tenant_claim: "tenant".into(),
            leeway_secs: 60,
            jwks_refresh_min: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(600),
        }
    }
}

/// The claims conveyor mints for development tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject (user or service).
    pub sub: String,
    /// Tenant.
    pub tenant: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
}

/// Mints an HS256 token (for `conveyor token`, `conveyor dev` and tests).
pub fn mint(jwt: &JwtSettings, sub: &str, tenant: &Tenant, scope: &str, ttl_secs: u64) -> String {
    let claims = Claims {
        sub: sub.to_owned(),
        tenant: tenant.to_string(),
        scope: scope.to_owned(),
        exp: now_secs() + ttl_secs,
        iss: jwt.issuer.clone(),
        aud: jwt.audience.clone(),
    };
    encode(jwt, &claims)
}

/// Signs arbitrary claims with the HS256 secret (tests use it for expired tokens).
pub fn encode(jwt: &JwtSettings, claims: &impl Serialize) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(jwt.secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Whose data this caller sees: always from the token, never from the request.
    pub tenant: Tenant,
    /// Who.
    pub sub: String,
    /// When the token expires (Unix seconds): live streams close then.
    pub exp: u64,
    scopes: Vec<String>,
}

impl Auth {
    /// Fails with 403 unless the token has `scope` (or `admin`).
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token lacks the `{scope}` scope"
            )))
        }
    }

    /// Whether the token has `scope` (or `admin`).
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == ADMIN)
    }
}

/// Verifies tokens with the configured algorithm and keys.
#[derive(Debug)]
pub struct Verifier {
    settings: JwtSettings,
    keys: Keys,
}

enum Keys {
    Secret(DecodingKey),
    Jwks(Jwks),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(..)"),
            Self::Jwks(jwks) => jwks.fmt(f),
        }
    }
}

impl Verifier {
    /// A verifier for `settings`; fails on a configuration that cannot verify anything.
    pub fn new(settings: JwtSettings) -> Result<Self, String> {
        let keys = match settings.algorithm {
            Algorithm::HS256 => {
                if settings.secret.is_empty() {
                    return Err("HS256 needs a secret (CONVEYOR_JWT_SECRET)".into());
                }
                Keys::Secret(DecodingKey::from_secret(settings.secret.as_bytes()))
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let url = settings.jwks_url.clone().ok_or_else(|| {
                    format!(
                        "{:?} needs the identity provider's key set URL (CONVEYOR_JWKS_URL)",
                        settings.algorithm
                    )
                })?;
                let parsed =
                    url::Url::parse(&url).map_err(|e| format!("CONVEYOR_JWKS_URL: {e}"))?;
                if !matches!(parsed.scheme(), "https" | "http") {
                    return Err("CONVEYOR_JWKS_URL must be an https:// (or http://) URL".into());
                }
                Keys::Jwks(Jwks::new(url)?)
            }
            other => {
                return Err(format!(
                    "unsupported JWT algorithm {other:?}: use HS256, RS256 or ES256"
                ))
            }
        };
        Ok(Self { settings, keys })
    }

    /// The settings it verifies with.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Verifies a bearer token: 401 for a bad token, 503 if the provider's keys cannot be had.
    pub async fn verify(&self, token: &str) -> Result<Auth, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
        if header.alg != self.settings.algorithm {
            return Err(ApiError::Unauthorized(format!(
                "invalid token: signed with {:?}, but this server accepts only {:?}",
                header.alg, self.settings.algorithm
            )));
        }
        let key = match &self.keys {
            Keys::Secret(key) => key.clone(),
            Keys::Jwks(jwks) => jwks.key(&self.settings, header.kid.as_deref()).await?,
        };
        let mut validation = Validation::new(self.settings.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_secs;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
        self.auth_from(&data.claims)
    }

    fn auth_from(&self, claims: &Map<String, Value>) -> Result<Auth, ApiError> {
        let bad = |what: String| ApiError::Unauthorized(format!("invalid token: {what}"));
        let tenant = claims
            .get(&self.settings.tenant_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("no `{}` claim", self.settings.tenant_claim)))?;
        let tenant = Tenant::parse(tenant).map_err(|e| bad(e.to_string()))?;
        Ok(Auth {
            tenant,
            sub: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
            scopes: scopes(claims),
        })
    }
}

/// Scopes from `scope` (space-separated, OAuth 2.0), `scp` (Okta, Entra ID) or `permissions`
/// (Auth0 RBAC), as a string or an array.
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp", "permissions"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    out
}

/// The provider's keys, cached by key id.
#[derive(Debug)]
struct Jwks {
    url: String,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// One refresh at a time; waiters find the refreshed cache.
    refreshing: Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys published without a `kid`: used for tokens without one.
    anonymous: Vec<DecodingKey>,
    fetched_at: Option<Instant>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous.len())
            .field("fetched_at", &self.fetched_at)
            .finish()
    }
}

impl KeyCache {
    fn find(&self, kid: Option<&str>) -> Option<DecodingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            // No `kid`: only unambiguous when the provider has a single key.
            None => match (self.anonymous.as_slice(), self.by_kid.len()) {
                ([one], 0) => Some(one.clone()),
                ([], 1) => self.by_kid.values().next().cloned(),
                _ => None,
            },
        }
    }
}

impl Jwks {
    fn new(url: String) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            url,
            http,
            cache: RwLock::default(),
            refreshing: Mutex::new(()),
        })
    }

    async fn key(
        &self,
        settings: &JwtSettings,
        kid: Option<&str>,
    ) -> Result<DecodingKey, ApiError> {
        let (found, fetched_at) = {
            let cache = self.cache.read().await;
            (cache.find(kid), cache.fetched_at)
        };
        let stale = fetched_at.is_none_or(|t| t.elapsed() >= settings.jwks_max_age);
        if let Some(key) = found.as_ref().filter(|_| !stale) {
            return Ok(key.clone());
        }
        // Unknown kid, or an old set: refresh, unless another request just did (or an unknown
        // kid refreshed it less than `jwks_refresh_min` ago).
        let may_refresh = fetched_at.is_none_or(|t| t.elapsed() >= settings.jwks_refresh_min);
        if may_refresh {
            let _one = self.refreshing.lock().await;
            let latest = self.cache.read().await.fetched_at;
            if latest == fetched_at {
                self.refresh(settings).await;
            }
        }
        let cache = self.cache.read().await;
        if let Some(key) = cache.find(kid) {
            return Ok(key);
        }
        if cache.fetched_at.is_none() {
            return Err(ApiError::Unavailable(
                "the identity provider's signing keys cannot be fetched; retry shortly".into(),
            ));
        }
        Err(ApiError::Unauthorized(match kid {
            Some(kid) => format!("invalid token: unknown key id `{kid}`"),
            None => "invalid token: no key id, and the provider has several keys".into(),
        }))
    }

    /// Fetches the key set; on failure keeps the keys it had (and logs why).
    async fn refresh(&self, settings: &JwtSettings) {
        match self.fetch(settings.algorithm).await {
            Ok(fresh) => {
                tracing::info!(url = %self.url, keys = fresh.by_kid.len() + fresh.anonymous.len(), "JWKS refreshed");
                *self.cache.write().await = fresh;
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the cached keys")
            }
        }
    }

    async fn fetch(&self, alg: Algorithm) -> Result<KeyCache, String> {
        let res = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status()));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err("JWKS document too large".into());
        }
        let body = res.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("JWKS document too large".into());
        }
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut cache = KeyCache {
            fetched_at: Some(Instant::now()),
            ..Default::default()
        };
        // Keys of other types, algorithms or uses (encryption keys) are skipped, not fatal.
        for jwk in set
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        {
            if !usable(&jwk, alg) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    cache.by_kid.insert(kid, key);
                }
                None => cache.anonymous.push(key),
            }
        }
        Ok(cache)
    }
}

/// Whether a published key can verify `alg` signatures.
fn usable(jwk: &Jwk, alg: Algorithm) -> bool {
    let for_signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    let alg_ok = jwk
        .common
        .key_algorithm
        .is_none_or(|a| a.to_string() == format!("{alg:?}"));
    let kty_ok = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        _ => false,
    };
    for_signing && alg_ok && kty_ok
}

/// Extracts the bearer token of a request: the `Authorization` header, or, on `/v1/ws` only
/// (browsers cannot set headers on a WebSocket), the `access_token` query parameter.
fn bearer(parts: &Parts) -> Result<String, ApiError> {
    let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        if parts.uri.path() == "/v1/ws" {
            if let Some(token) = parts.uri.query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| v.into_owned())
            }) {
                return Ok(token);
            }
        }
        return Err(ApiError::Unauthorized(
            "missing `Authorization: Bearer <token>` header".into(),
        ));
    };
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into()))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        state.verifier.verify(&token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt() -> JwtSettings {
        JwtSettings {
            leeway_secs: 0,
            ..JwtSettings::hs256("s3cret")
        }
    }

    fn verify(settings: &JwtSettings, token: &str) -> Result<Auth, ApiError> {
        let v = Verifier::new(settings.clone()).unwrap();
        futures::executor::block_on(v.verify(token))
    }

    fn acme() -> Tenant {
        Tenant::parse("acme").unwrap()
    }

    #[test]
    fn minted_tokens_verify_and_carry_scopes() {
        let t = mint(&jwt(), "me", &acme(), "jobs:read", 60);
        let auth = verify(&jwt(), &t).unwrap();
        assert_eq!(auth.tenant.as_str(), "acme");
        assert!(auth.require(JOBS_READ).is_ok());
        assert!(matches!(
            auth.require(JOBS_WRITE),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let other = JwtSettings::hs256("other");
        let t = mint(&other, "me", &acme(), "admin", 60);
        assert!(verify(&jwt(), &t).is_err(), "wrong key");
        let wrong_aud = JwtSettings {
            audience: "x".into(),
            ..jwt()
        };
        let t = mint(&wrong_aud, "me", &acme(), "admin", 60);
        assert!(verify(&jwt(), &t).is_err(), "wrong audience");
        let wrong_iss = JwtSettings {
            issuer: "x".into(),
            ..jwt()
        };
        let t = mint(&wrong_iss, "me", &acme(), "admin", 60);
        assert!(verify(&jwt(), &t).is_err(), "wrong issuer");
        // alg "none": header {"alg":"none"} and no signature.
        let t = mint(&jwt(), "me", &acme(), "admin", 60);
        let payload = t.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(verify(&jwt(), &none).is_err(), "alg none");
        assert!(verify(&jwt(), "garbage").is_err());
    }

    #[test]
    fn time_claims_are_checked_with_the_leeway() {
        let s = JwtSettings {
            leeway_secs: 60,
            ..jwt()
        };
        let claims = |exp: u64, nbf: Option<u64>| {
            let mut c = json!({"sub": "me", "tenant": "acme", "scope": "admin",
                               "exp": exp, "iss": "conveyor", "aud": "conveyor"});
            if let Some(nbf) = nbf {
                c["nbf"] = json!(nbf);
            }
            c
        };
        let now = now_secs();
        assert!(
            verify(&s, &encode(&s, &claims(now - 30, None))).is_ok(),
            "inside the leeway"
        );
        assert!(
            verify(&s, &encode(&s, &claims(now - 120, None))).is_err(),
            "expired"
        );
        assert!(
            verify(&s, &encode(&s, &claims(now + 600, Some(now + 300)))).is_err(),
            "not yet valid"
        );
        let no_exp = json!({"sub": "me", "tenant": "acme", "iss": "conveyor", "aud": "conveyor"});
        assert!(verify(&s, &encode(&s, &no_exp)).is_err(), "missing exp");
    }

    #[test]
    fn a_token_of_another_algorithm_is_refused_before_any_key_is_used() {
        // An RS256 deployment gets an HS256 token (e.g. "signed" with the provider's public
        // key): refused on the header alone, no JWKS fetched.
        let rs = JwtSettings {
            algorithm: Algorithm::RS256,
            jwks_url: Some("http://127.0.0.1:9/jwks".into()),
            ..jwt()
        };
        let t = mint(&jwt(), "me", &acme(), "admin", 60);
        match verify(&rs, &t) {
            Err(ApiError::Unauthorized(m)) => assert!(m.contains("accepts only RS256"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(Verifier::new(JwtSettings {
            algorithm: Algorithm::ES256,
            jwks_url: None,
            ..jwt()
        })
        .is_err());
    }

    #[test]
    fn scopes_come_from_scope_scp_or_permissions() {
        let c = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(scopes(&c(json!({"scope": "a b"}))), ["a", "b"]);
        assert_eq!(scopes(&c(json!({"scp": ["a", "b"]}))), ["a", "b"]);
        assert_eq!(
            scopes(&c(json!({"permissions": ["jobs:read"]}))),
            ["jobs:read"]
        );
    }

    #[test]
    fn a_custom_tenant_claim() {
        let s = JwtSettings {
            tenant_claim: "https://example.com/tenant".into(),
            ..jwt()
        };
        let t = encode(
            &s,
            &json!({"sub": "me", "https://example.com/tenant": "acme", "scope": "admin",
                    "exp": now_secs() + 60, "iss": "conveyor", "aud": "conveyor"}),
        );
        assert_eq!(verify(&s, &t).unwrap().tenant.as_str(), "acme");
        let plain = mint(&jwt(), "me", &acme(), "admin", 60);
        assert!(verify(&s, &plain).is_err(), "no custom tenant claim");
    }
}
