//! Bearer-token authentication: JWTs with `sub`, `tenant`, `scope`, `exp`, `iss`, `aud`.
//! HS256 with a shared secret; the algorithm is pinned (a token claiming another, or `none`,
//! is refused).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use events::Tenant;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// HS256 shared secret.
    pub secret: String,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// The claims conveyor reads.
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: sub.to_owned(),
        tenant: tenant.to_string(),
        scope: scope.to_owned(),
        exp: now + ttl_secs,
        iss: jwt.issuer.clone(),
        aud: jwt.audience.clone(),
    };
    encode(jwt, &claims)
}

/// Signs arbitrary claims with the HS256 secret (tests use it for expired tokens).
pub fn encode(jwt: &JwtSettings, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(jwt.secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
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
        if self.scopes.iter().any(|s| s == scope || s == ADMIN) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token lacks the `{scope}` scope"
            )))
        }
    }
}

/// Verifies a bearer token.
pub fn verify(jwt: &JwtSettings, token: &str) -> Result<Auth, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[&jwt.issuer]);
    validation.set_audience(&[&jwt.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = jwt.leeway_secs;
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(jwt.secret.as_bytes()),
        &validation,
    )
    .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
    let tenant = Tenant::parse(&data.claims.tenant)
        .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
    Ok(Auth {
        tenant,
        sub: data.claims.sub,
        exp: data.claims.exp,
        scopes: data
            .claims
            .scope
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // Browsers cannot set headers on a WebSocket: `/v1/ws` also takes `?access_token=`.
            if parts.uri.path() == "/v1/ws" {
                if let Some(token) = parts.uri.query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "access_token")
                        .map(|(_, v)| v.into_owned())
                }) {
                    return verify(&state.settings.jwt, &token);
                }
            }
            return Err(ApiError::Unauthorized(
                "missing `Authorization: Bearer <token>` header".into(),
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into())
            })?;
        verify(&state.settings.jwt, token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> JwtSettings {
        JwtSettings {
            secret: "s3cret".into(),
            issuer: "conveyor".into(),
            audience: "conveyor".into(),
            leeway_secs: 0,
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_scopes() {
        let t = mint(
            &jwt(),
            "me",
            &Tenant::parse("acme").unwrap(),
            "jobs:read",
            60,
        );
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
        let other = JwtSettings {
            secret: "other".into(),
            ..jwt()
        };
        let t = mint(&other, "me", &Tenant::parse("acme").unwrap(), "admin", 60);
        assert!(verify(&jwt(), &t).is_err(), "wrong key");
        let wrong_aud = JwtSettings {
            audience: "x".into(),
            ..jwt()
        };
        let t = mint(
            &wrong_aud,
            "me",
            &Tenant::parse("acme").unwrap(),
            "admin",
            60,
        );
        assert!(verify(&jwt(), &t).is_err(), "wrong audience");
        // alg "none": header {"alg":"none"} and no signature.
        let t = mint(&jwt(), "me", &Tenant::parse("acme").unwrap(), "admin", 60);
        let payload = t.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(verify(&jwt(), &none).is_err(), "alg none");
        assert!(verify(&jwt(), "garbage").is_err());
    }
}
