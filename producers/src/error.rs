//! The one error type of the API, rendered as RFC 9457 `application/problem+json`.
//! 4xx carry a message for the client; 5xx carry a generic one, and the cause is logged once here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON or a bad parameter.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or invalid token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid token without the scope.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource for this tenant.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 409: a worker's lease is gone (expired, or the job already reported on): the worker
    /// drops the job.
    #[error("{0}")]
    LeaseLost(String),
    /// 413: body too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: unknown kind, invalid payload or option.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: a rate limit or quota; retry after `retry_after_secs`.
    #[error("{detail}")]
    TooManyRequests {
        /// What was exceeded.
        detail: String,
        /// When to come back.
        retry_after_secs: u64,
    },
    /// 431: request headers too large.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 503: NATS or Postgres unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 503: something this request needs cannot be had before `retry_after_secs` (the
    /// identity provider's keys, say).
    #[error("{detail}")]
    UnavailableFor {
        /// What is missing.
        detail: String,
        /// When it may be there.
        retry_after_secs: u64,
    },
    /// 503: this process is at its capacity; retry later (or on another process).
    #[error("{0}")]
    Overloaded(String),
    /// 500: a bug. The cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// Any other status, as answered by the HTTP framework itself (no route, wrong method).
    #[error("{1}")]
    Other(StatusCode, String),
}

/// Result with the API error.
pub type ApiResult<T> = Result<T, ApiError>;

/// The problem+json body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong this time, and how to fix it.
    pub detail: String,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::LeaseLost(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unavailable(_) | Self::UnavailableFor { .. } | Self::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Other(status, _) => *status,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::LeaseLost(_) => "lease-lost",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::Unprocessable(_) => "unprocessable",
            Self::TooManyRequests { .. } => "too-many-requests",
            Self::HeadersTooLarge(_) => "headers-too-large",
            Self::Unavailable(_) | Self::UnavailableFor { .. } => "unavailable",
            Self::Overloaded(_) => "overloaded",
            Self::Internal(_) => "internal",
            Self::Other(status, _) if *status == StatusCode::METHOD_NOT_ALLOWED => {
                "method-not-allowed"
            }
            Self::Other(..) => "request-refused",
        }
    }

    /// The error for a status the framework answered with, and what it said.
    pub fn from_status(status: StatusCode, detail: String) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest(detail),
            StatusCode::NOT_FOUND => Self::NotFound(detail),
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(detail),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(detail),
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable(detail),
            // A bare 500 from the framework: its text is not for clients.
            StatusCode::INTERNAL_SERVER_ERROR => Self::Internal(detail),
            other => Self::Other(other, detail),
        }
    }

    /// A 503 for a database failure: logged here, generic to the client.
    pub fn db(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "database unavailable");
        Self::Unavailable("the read models are unavailable; retry shortly".into())
    }

    /// A key-value bucket's failure, as [`ApiError::bus`] answers it.
    pub fn bucket(e: impl Into<bus::error::Failure>) -> Self {
        Self::bus(bus::Error::bucket(e))
    }

    /// A 503 for a JetStream failure.
    pub fn bus(e: bus::Error) -> Self {
        match e {
            bus::Error::Busy => {
                metrics::counter!("conveyor_rejected_requests_total", "reason" => "publishes_in_flight")
                    .increment(1);
                Self::Overloaded(
                    "too many submissions in flight on this server; retry shortly".into(),
                )
            }
            bus::Error::Publish { full: true, .. } => {
                tracing::warn!(error = %e, "the command queue is full");
                Self::Unavailable("the job queue is full; retry later".into())
            }
            e => {
                tracing::warn!(error = %e, "JetStream unavailable");
                Self::Unavailable("the event bus is unavailable; retry shortly".into())
            }
        }
    }
}

impl ApiError {
    /// The problem+json body of this error (an internal error's cause is logged, not shown).
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            Self::Internal(cause) => {
                tracing::error!(error.message = %cause, "internal error");
                "an internal error occurred".to_owned()
            }
            other => other.to_string(),
        };
        Problem {
            kind: format!("https://conveyor.dev/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.problem();
        let mut res = (status, axum::Json(body)).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unavailable(_) | Self::Overloaded(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::TooManyRequests {
                retry_after_secs, ..
            }
            | Self::UnavailableFor {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res
    }
}
