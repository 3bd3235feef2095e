//! Bearer-token authentication: JWTs with `sub`, a tenant claim, `scope`, `exp`, `iss`, `aud`.
//!
//! Tokens are verified with one algorithm, pinned by configuration: HS256 with a shared secret
//! (development, or a gateway that mints tokens), or RS256/ES256 with the public keys an
//! identity provider (Keycloak, Ory, Auth0, Cognito) publishes as a JWKS document. A token whose
//! header names another algorithm, or `none`, is refused before any key is looked at, so an
//! HS256 token "signed" with a provider's public key never verifies. `jku`, `x5u` and embedded
//! `jwk` headers are ignored: keys only ever come from the configured JWKS URL.
//!
//! JWKS keys are cached by `kid`, and at most one fetch of the set is under way at a time. A
//! token whose key is cached is verified at once, always: when the set is older than
//! `jwks_max_age` it is refreshed in the background, and if the provider fails, hangs or is
//! gone, the cached keys keep working. An unknown `kid` (the provider rotated its keys, or
//! someone made one up) starts a fetch only if the last one, successful or not, ended at least
//! `jwks_refresh_min` ago, so a flood of such tokens costs the provider one request per interval
//! whatever it answers. Such a request waits for the fetch under way, never longer than
//! `jwks_fetch_timeout` (which also bounds the fetch); then it gets 401 if the provider's
//! current keys lack its `kid`, or 503 with `Retry-After` (the time until the next fetch may
//! start) when the keys cannot be had: never fetched yet, or the last fetch failed.
//!
//! The JWKS URL must be `https://`, or plain `http://` on loopback, unless `jwks_allow_http`
//! (`CONVEYOR_JWKS_ALLOW_HTTP=true`) accepts plain http elsewhere: [`Verifier::new`] refuses
//! anything else, before any fetch. Redirects are followed (three at most) only where the
//! configured URL could have pointed, and never from https to http.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use events::Tenant;
use futures::FutureExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::AppState;

/// Scope to submit and cancel jobs.
pub const JOBS_WRITE: &str = "jobs:write";
/// Scope to read jobs.
pub const JOBS_READ: &str = "jobs:read";
/// Scope to read event streams.
pub const EVENTS_READ: &str = "events:read";
/// Scope for a tenant's own operations (its dead letters and failed webhooks); it includes the
/// tenant's other scopes.
pub const ADMIN: &str = "admin";
/// Scope of a worker in another language (the worker protocol): it leases, runs and reports the
/// jobs of its token's tenant, of the kinds its `kinds` claim names (any kind without one).
pub const WORKER: &str = "worker";
/// Scope of a worker serving every tenant (an operator's shared workers). Like `operator`, not
/// included in `admin`.
pub const WORKER_ANY_TENANT: &str = "worker:any-tenant";
/// Scope for platform-wide operations, which concern every tenant (projections, rebuilds,
/// consumers). Not included in `admin`, and including no tenant scope.
pub const OPERATOR: &str = "operator";

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
    /// Age after which the cached JWKS is fetched again (in the background: the cached keys
    /// keep answering meanwhile).
    pub jwks_max_age: Duration,
    /// Longest a JWKS fetch may take, and so the longest a request waits for one.
    pub jwks_fetch_timeout: Duration,
    /// Accept a plain `http://` JWKS URL outside loopback (keys anyone on the path could swap).
    pub jwks_allow_http: bool,
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
            jwks_fetch_timeout: Duration::from_secs(5),
            jwks_allow_http: false,
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
    /// The job kinds a worker token is limited to (none: any kind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
}

/// Mints an HS256 token (for `conveyor token`, `conveyor dev` and tests).
pub fn mint(jwt: &JwtSettings, sub: &str, tenant: &Tenant, scope: &str, ttl_secs: u64) -> String {
    mint_for_kinds(jwt, sub, tenant, scope, &[], ttl_secs)
}

/// [`mint`], limited to the job kinds `kinds` (a worker's token; empty: any kind).
pub fn mint_for_kinds(
    jwt: &JwtSettings,
    sub: &str,
    tenant: &Tenant,
    scope: &str,
    kinds: &[String],
    ttl_secs: u64,
) -> String {
    let claims = Claims {
        sub: sub.to_owned(),
        tenant: tenant.to_string(),
        scope: scope.to_owned(),
        exp: now_secs() + ttl_secs,
        iss: jwt.issuer.clone(),
        aud: jwt.audience.clone(),
        kinds: kinds.to_vec(),
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
    /// The `kinds` claim: the only kinds a worker token covers (`None`: every kind).
    kinds: Option<Vec<String>>,
}

impl Auth {
    /// Fails with 403 unless the token may read the tenant's jobs (`jobs:read` or `jobs:write`).
    pub fn require_reader(&self) -> Result<(), ApiError> {
        if self.has(JOBS_READ) || self.has(JOBS_WRITE) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this token lacks the `jobs:read` or `jobs:write` scope".into(),
            ))
        }
    }

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

    /// Whether the token has `scope`; `admin` stands for every tenant scope, never for the
    /// platform-wide `operator` and `worker:any-tenant`.
    pub fn has(&self, scope: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s == scope || (s == ADMIN && scope != OPERATOR && scope != WORKER_ANY_TENANT))
    }

    /// Whether a worker with this token may run jobs of `kind` (its `kinds` claim).
    pub fn covers_kind(&self, kind: &str) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }
}

/// Verifies tokens with the configured algorithm and keys.
#[derive(Debug)]
pub struct Verifier {
    settings: JwtSettings,
    keys: Keys,
}

enum Keys {
    Secret(Arc<DecodingKey>),
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
                Keys::Secret(Arc::new(DecodingKey::from_secret(
                    settings.secret.as_bytes(),
                )))
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
                jwks_url_allowed(&parsed, settings.jwks_allow_http)
                    .map_err(|why| format!("CONVEYOR_JWKS_URL={url} is refused: {why}"))?;
                Keys::Jwks(Jwks::new(url, &settings)?)
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
        let header = jsonwebtoken::decode_header(token).map_err(refused)?;
        if header.alg != self.settings.algorithm {
            return Err(ApiError::Unauthorized(format!(
                "invalid token: signed with {:?}, but this server accepts only {:?}",
                header.alg, self.settings.algorithm
            )));
        }
        let key = match &self.keys {
            Keys::Secret(key) => Arc::clone(key),
            Keys::Jwks(jwks) => jwks.key(header.kid.as_deref()).await?,
        };
        let mut validation = Validation::new(self.settings.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_secs;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(refused)?;
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
            kinds: match claims.get("kinds") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(
                    s.split([' ', ','])
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ),
                Some(Value::Array(items)) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                ),
                Some(_) => return Err(bad("`kinds` is neither a list nor a string".into())),
            },
        })
    }
}

/// A 401 saying in words what is wrong with a token.
fn refused(e: jsonwebtoken::errors::Error) -> ApiError {
    use jsonwebtoken::errors::ErrorKind;
    let what = match e.kind() {
        ErrorKind::InvalidSignature => {
            "the signature does not verify (signed with another key or secret)".to_owned()
        }
        ErrorKind::ExpiredSignature => "it has expired (`exp` is past); get a new one".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (`nbf` is in the future)".to_owned(),
        ErrorKind::InvalidAudience => "wrong audience (`aud`)".to_owned(),
        ErrorKind::InvalidIssuer => "wrong issuer (`iss`)".to_owned(),
        ErrorKind::InvalidSubject => "wrong subject (`sub`)".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the `{claim}` claim is missing"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "it is signed with an algorithm this server does not accept".to_owned()
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "it is not a JWT (three base64url parts separated by dots)".to_owned()
        }
        ErrorKind::Json(e) => format!("its header or claims are not valid JSON ({e})"),
        _ => e.to_string(),
    };
    ApiError::Unauthorized(format!("invalid token: {what}"))
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

/// Redirects followed when fetching the JWKS, each checked by [`redirect_allowed`].
const MAX_JWKS_REDIRECTS: usize = 3;

/// Whether the key set may be fetched from `url`: `https`, or plain `http` on loopback (a
/// provider on the same host, tests), or plain `http` anywhere when `allow_http` says so.
/// Keys fetched over plain http from elsewhere can be swapped by anyone on the path, and
/// whoever swaps them mints tokens for every tenant.
fn jwks_url_allowed(url: &url::Url, allow_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback(url) => Ok(()),
        "http" => Err(
            "plain http outside loopback lets anyone on the path swap the signing keys; use \
             https://, or set CONVEYOR_JWKS_ALLOW_HTTP=true on a network you trust"
                .into(),
        ),
        other => Err(format!("`{other}` is not https")),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether a JWKS fetch may follow a redirect from `from` to `to`. Never from https to plain
/// http (the key set would travel unauthenticated although an https URL was configured),
/// and a redirect's target must pass the check the configured URL passed at start-up, so a
/// redirect cannot lead where the configuration could not. Redirects are still followed (a
/// few, checked) rather than refused outright: providers behind a load balancer or a moved
/// realm answer with one, and an https redirect carries the same guarantees as the URL.
fn redirect_allowed(from: &url::Url, to: &url::Url, allow_http: bool) -> Result<(), String> {
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(format!("refused a redirect from https to {to}"));
    }
    jwks_url_allowed(to, allow_http).map_err(|why| format!("refused a redirect to {to}: {why}"))
}

/// The provider's keys, cached by key id, and the one fetch of them that may be under way.
///
/// A request never waits for a fetch when its key is cached, even if the set is older than
/// `jwks_max_age`: it is answered at once and the refresh runs in the background. A request
/// with an unknown key id (or before any key was fetched) waits for the fetch under way, or
/// starts one if the last one, whatever its outcome, ended at least `jwks_refresh_min` ago;
/// it waits at most `jwks_fetch_timeout`, which also bounds the fetch itself. So a provider
/// that fails, hangs or is gone costs it one fetch per interval and the API one short wait,
/// however many requests come.
#[derive(Debug)]
struct Jwks {
    shared: Arc<JwksShared>,
}

#[derive(Debug)]
struct JwksShared {
    url: String,
    http: reqwest::Client,
    algorithm: Algorithm,
    refresh_min: Duration,
    max_age: Duration,
    fetch_timeout: Duration,
    /// A std mutex: held only to read or swap a few fields, never across an `.await`.
    state: std::sync::Mutex<FetchState>,
    /// Bumped each time a fetch ends, whatever its outcome: what waiting requests watch.
    ended: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct FetchState {
    keys: KeyCache,
    /// When the last successful fetch ended.
    fetched_at: Option<Instant>,
    /// When the last fetch ended, successful or not: the next may start `refresh_min` later.
    attempted_at: Option<Instant>,
    /// The fetch under way, if any (aborted when the verifier is dropped).
    in_flight: Option<tokio::task::AbortHandle>,
}

impl FetchState {
    /// Whether the last fetch failed: it ended later than the last successful one.
    fn failing(&self) -> bool {
        self.attempted_at != self.fetched_at
    }

    /// Whether a fetch may start at `now`: none is under way, and the last one ended at least
    /// `refresh_min` ago.
    fn may_fetch(&self, now: Instant, refresh_min: Duration) -> bool {
        self.in_flight.is_none()
            && self
                .attempted_at
                .is_none_or(|t| now.saturating_duration_since(t) >= refresh_min)
    }

    /// Whether the keys are older than `max_age` (or were never fetched).
    fn stale(&self, now: Instant, max_age: Duration) -> bool {
        self.fetched_at
            .is_none_or(|t| now.saturating_duration_since(t) >= max_age)
    }

    /// Whole seconds (at least 1) until a fetch may be under way or done again.
    fn retry_after_secs(&self, now: Instant, refresh_min: Duration) -> u64 {
        let wait = match (&self.in_flight, self.attempted_at) {
            (None, Some(t)) => refresh_min.saturating_sub(now.saturating_duration_since(t)),
            _ => Duration::ZERO,
        };
        wait.as_secs_f64().ceil().max(1.0) as u64
    }
}

#[derive(Default)]
struct KeyCache {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// Keys published without a `kid`: used for tokens without one.
    anonymous: Vec<Arc<DecodingKey>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous.len())
            .finish()
    }
}

impl KeyCache {
    fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            // No `kid`: only unambiguous when the provider has a single key.
            None => match (self.anonymous.as_slice(), self.by_kid.len()) {
                ([one], 0) => Some(Arc::clone(one)),
                ([], 1) => self.by_kid.values().next().cloned(),
                _ => None,
            },
        }
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
}

impl Jwks {
    fn new(url: String, settings: &JwtSettings) -> Result<Self, String> {
        let allow_http = settings.jwks_allow_http;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` starts with the URL first asked for.
            if attempt.previous().len() > MAX_JWKS_REDIRECTS {
                return attempt.error("too many redirects");
            }
            let Some(from) = attempt.previous().last() else {
                return attempt.follow();
            };
            match redirect_allowed(from, attempt.url(), allow_http) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(why),
            }
        });
        // No proxy: the URL's checks (https, or http on loopback) hold only if the request
        // goes where the URL says.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(settings.jwks_fetch_timeout)
            .timeout(settings.jwks_fetch_timeout)
            .redirect(redirects)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            shared: Arc::new(JwksShared {
                url,
                http,
                algorithm: settings.algorithm,
                refresh_min: settings.jwks_refresh_min,
                max_age: settings.jwks_max_age,
                fetch_timeout: settings.jwks_fetch_timeout,
                state: std::sync::Mutex::default(),
                ended: watch::Sender::new(0),
            }),
        })
    }

    /// The key for `kid`: cached at once, or after waiting (at most one fetch timeout) for the
    /// fetch an unknown key id may start.
    async fn key(&self, kid: Option<&str>) -> Result<Arc<DecodingKey>, ApiError> {
        let shared = &self.shared;
        let mut ended = {
            let mut state = shared.lock();
            let now = Instant::now();
            let found = state.keys.find(kid);
            let wanted = found.is_none() || state.stale(now, shared.max_age);
            if wanted && state.may_fetch(now, shared.refresh_min) {
                let task = tokio::spawn(Arc::clone(shared).fetch_and_store());
                state.in_flight = Some(task.abort_handle());
            }
            if let Some(key) = found {
                return Ok(key);
            }
            if state.in_flight.is_none() {
                return Err(shared.missing(&state, kid));
            }
            // Subscribed under the lock, so the end of the fetch under way is always seen.
            shared.ended.subscribe()
        };
        // The fetch is bounded by the same timeout; this bound only guards the guard.
        let _ = tokio::time::timeout(shared.fetch_timeout, ended.changed()).await;
        let state = shared.lock();
        state
            .keys
            .find(kid)
            .ok_or_else(|| shared.missing(&state, kid))
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        if let Some(task) = self.shared.lock().in_flight.take() {
            task.abort();
        }
    }
}

impl JwksShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        // Nothing panics while holding it; if something did, the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why no key verifies a token with `kid`: 401 when the provider's current keys are known
    /// and lack it; 503 (with when to retry) when they cannot be had just now.
    fn missing(&self, state: &FetchState, kid: Option<&str>) -> ApiError {
        if state.fetched_at.is_none() || state.failing() || state.in_flight.is_some() {
            return ApiError::UnavailableFor {
                detail: "the identity provider's signing keys cannot be fetched; retry shortly"
                    .into(),
                retry_after_secs: state.retry_after_secs(Instant::now(), self.refresh_min),
            };
        }
        ApiError::Unauthorized(match kid {
            Some(kid) => format!("invalid token: unknown key id `{kid}`"),
            None => "invalid token: no key id, and the provider has several keys".into(),
        })
    }

    /// One fetch, spawned by [`Jwks::key`] (at most one at a time, and bounded by the client's
    /// timeout); its outcome is recorded either way, so a failing provider is not asked again
    /// before `refresh_min` has passed. On failure the cached keys stay.
    async fn fetch_and_store(self: Arc<Self>) {
        // A panic must still end the fetch, or no other would ever start.
        let result = std::panic::AssertUnwindSafe(self.fetch())
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err("the fetch panicked".into()));
        let now = Instant::now();
        let outcome = {
            let mut state = self.lock();
            state.in_flight = None;
            state.attempted_at = Some(now);
            result.map(|keys| {
                state.fetched_at = Some(now);
                state.keys = keys;
                state.keys.len()
            })
        };
        self.ended.send_modify(|n| *n = n.wrapping_add(1));
        match outcome {
            Ok(keys) => tracing::info!(url = %self.url, keys, "JWKS fetched"),
            Err(e) => tracing::warn!(
                url = %self.url,
                error = %e,
                retry_in_ms = self.refresh_min.as_millis() as u64,
                "JWKS fetch failed; keeping the cached keys"
            ),
        }
    }

    async fn fetch(&self) -> Result<KeyCache, String> {
        let res = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| chain(&e))?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status()));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err("JWKS document too large".into());
        }
        let body = res.bytes().await.map_err(|e| chain(&e))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("JWKS document too large".into());
        }
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut cache = KeyCache::default();
        // Keys of other types, algorithms or uses (encryption keys) are skipped, not fatal.
        for jwk in set
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        {
            if !usable(&jwk, self.algorithm) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    cache.by_kid.insert(kid, Arc::new(key));
                }
                None => cache.anonymous.push(Arc::new(key)),
            }
        }
        Ok(cache)
    }
}

/// An error and its causes on one line (reqwest puts the reason of a refused redirect or a
/// timeout in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
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

    fn rs256_at(url: &str) -> JwtSettings {
        JwtSettings {
            algorithm: Algorithm::RS256,
            jwks_url: Some(url.into()),
            ..jwt()
        }
    }

    #[test]
    fn a_plain_http_jwks_url_is_refused_outside_loopback_unless_allowed() {
        let err = Verifier::new(rs256_at("http://idp.example.com/certs")).unwrap_err();
        assert!(
            err.starts_with("CONVEYOR_JWKS_URL=http://idp.example.com/certs is refused")
                && err.contains("CONVEYOR_JWKS_ALLOW_HTTP=true")
                && !err.contains('\n'),
            "{err}"
        );
        assert!(Verifier::new(rs256_at("ftp://idp.example.com/certs")).is_err());
        for ok in [
            "https://idp.example.com/certs",
            "http://127.0.0.1:8080/certs",
            "http://127.1.2.3/certs",
            "http://[::1]:8080/certs",
            "http://localhost:8080/certs",
        ] {
            assert!(Verifier::new(rs256_at(ok)).is_ok(), "{ok}");
        }
        let allowed = JwtSettings {
            jwks_allow_http: true,
            ..rs256_at("http://idp.example.com/certs")
        };
        assert!(Verifier::new(allowed).is_ok());
    }

    #[test]
    fn redirects_never_go_from_https_to_http_nor_where_the_url_could_not() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let https = u("https://idp.example.com/certs");
        let loopback = u("http://127.0.0.1:8080/certs");
        for allow_http in [false, true] {
            assert!(redirect_allowed(&https, &u("https://cdn.example.com/k"), allow_http).is_ok());
            for to in [
                "http://idp.example.com/certs",
                "http://127.0.0.1:8080/certs",
            ] {
                let err = redirect_allowed(&https, &u(to), allow_http).unwrap_err();
                assert!(err.contains("from https to"), "{err}");
            }
            assert!(redirect_allowed(&loopback, &u("http://localhost:1/k"), allow_http).is_ok());
            assert!(redirect_allowed(&loopback, &u("file:///etc/passwd"), allow_http).is_err());
        }
        let elsewhere = u("http://idp.example.com/certs");
        assert!(redirect_allowed(&loopback, &elsewhere, false).is_err());
        assert!(redirect_allowed(&loopback, &elsewhere, true).is_ok());
    }

    #[test]
    fn fetches_are_spaced_by_the_interval_whatever_their_outcome() {
        let (min, max_age) = (Duration::from_secs(30), Duration::from_secs(600));
        let t0 = Instant::now();
        let mut s = FetchState::default();
        assert!(
            s.may_fetch(t0, min) && s.stale(t0, max_age),
            "nothing fetched yet"
        );
        assert_eq!(s.retry_after_secs(t0, min), 1);
        // A failed attempt counts as much as a successful one.
        s.attempted_at = Some(t0);
        assert!(!s.may_fetch(t0 + Duration::from_secs(29), min));
        assert_eq!(s.retry_after_secs(t0 + Duration::from_millis(100), min), 30);
        assert_eq!(
            s.retry_after_secs(t0 + Duration::from_millis(29_500), min),
            1
        );
        assert!(s.may_fetch(t0 + min, min));
        assert!(s.stale(t0 + min, max_age), "still never fetched");
        s.fetched_at = Some(t0);
        assert!(!s.stale(t0 + min, max_age));
        assert!(s.stale(t0 + max_age, max_age));
    }

    /// A JWKS endpoint on 127.0.0.1 that counts its requests; `answer` makes each response.
    async fn provider(
        answer: impl Fn(u16) -> axum::response::Response + Clone + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counted = Arc::clone(&hits);
        let app = axum::Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            async move { answer(port) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://127.0.0.1:{port}/certs"), hits)
    }

    #[tokio::test]
    async fn a_failing_provider_is_asked_once_per_interval() {
        use axum::response::IntoResponse;
        let (url, hits) = provider(|_| axum::http::StatusCode::BAD_GATEWAY.into_response()).await;
        let settings = JwtSettings {
            jwks_refresh_min: Duration::from_secs(3600),
            ..rs256_at(&url)
        };
        let Keys::Jwks(jwks) = Verifier::new(settings).unwrap().keys else {
            unreachable!()
        };
        let answers = futures::future::join_all(
            (0..50).map(|i| jwks.key(Some(if i % 2 == 0 { "k" } else { "x" }))),
        )
        .await;
        for a in answers {
            match a {
                Err(ApiError::UnavailableFor {
                    retry_after_secs, ..
                }) => assert!((1..=3600).contains(&retry_after_secs)),
                other => panic!("{:?}", other.map(|_| ())),
            }
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_redirect_is_followed_only_where_the_configuration_allows() {
        use axum::response::IntoResponse;
        // The provider on 127.0.0.1 sends `/certs` to 0.0.0.0 (the same server, but not a
        // loopback address), which answers with an empty key set.
        let (url, hits) = provider(|port| {
            (
                axum::http::StatusCode::FOUND,
                [(
                    axum::http::header::LOCATION,
                    format!("http://0.0.0.0:{port}/moved"),
                )],
                "",
            )
                .into_response()
        })
        .await;
        for allow_http in [false, true] {
            let before = hits.load(std::sync::atomic::Ordering::SeqCst);
            let settings = JwtSettings {
                jwks_allow_http: allow_http,
                ..rs256_at(&url)
            };
            let Keys::Jwks(jwks) = Verifier::new(settings).unwrap().keys else {
                unreachable!()
            };
            let err = jwks.shared.fetch().await.unwrap_err();
            let followed = hits.load(std::sync::atomic::Ordering::SeqCst) - before - 1;
            if allow_http {
                assert!(followed > 0, "{err}");
            } else {
                assert_eq!(followed, 0, "{err}");
                assert!(
                    err.contains("refused a redirect to http://0.0.0.0"),
                    "{err}"
                );
            }
        }
    }
}
