//! The web dashboard: plain HTML, CSS and JavaScript modules from `dashboard/`, embedded in the
//! binary and served at `/` with assets under `/ui/<version>/`.
//!
//! The dashboard is a client of the public API like any other: the user pastes a token, and
//! every call it makes goes through the same routes, scopes and tenant checks.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::AppState;

/// Same-origin scripts, styles and connections only: no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../../../dashboard/index.html");

macro_rules! files {
    ($($name:literal => $type:expr),* $(,)?) => {
        &[$(($name, $type, include_bytes!(concat!("../../../dashboard/", $name)) as &[u8])),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every asset: name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = files![
    "app.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "app.js" => JS,
    "api.js" => JS,
    "chart.js" => JS,
    "dom.js" => JS,
    "jobfold.js" => JS,
    "metrics.js" => JS,
    "schema.js" => JS,
    "sse.js" => JS,
    "view-events.js" => JS,
    "view-job.js" => JS,
    "view-jobs.js" => JS,
    "view-ops.js" => JS,
    "view-signin.js" => JS,
];

/// A hash of every file. Asset URLs carry it, so browsers may cache them for good and never mix
/// files of two builds.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    hash.update(INDEX);
    for (name, _, bytes) in FILES {
        hash.update(name);
        hash.update(bytes);
    }
    hex::encode(&hash.finalize()[..6])
});

static PAGE: LazyLock<String> = LazyLock::new(|| INDEX.replace("{{version}}", &VERSION));

/// The dashboard is not part of the API: its routes are not in the OpenAPI document.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/", get(index))
        .route("/ui/{version}/{file}", get(asset))
}

fn headers(content_type: &'static str, cache: &'static str) -> [(HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

/// The page: revalidated on every load, so a new build's assets are picked up at once.
async fn index() -> Response {
    (
        headers("text/html; charset=utf-8", "no-cache"),
        PAGE.as_str(),
    )
        .into_response()
}

async fn asset(Path((version, file)): Path<(String, String)>) -> Result<Response, ApiError> {
    let (_, content_type, bytes) = FILES
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::NotFound(format!("no dashboard file `{file}`")))?;
    // A page of another build (another API process mid-deploy) still gets the file, uncached.
    let cache = if version == *VERSION {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Ok((headers(content_type, cache), *bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module added to `dashboard/` but not to [`FILES`] would 404 in the browser.
    #[test]
    fn every_dashboard_file_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboard");
        for entry in std::fs::read_dir(dir).expect("dashboard/ exists") {
            let name = entry.expect("a directory entry").file_name();
            let name = name.to_str().expect("a UTF-8 name");
            if name == "index.html" || name == "package.json" {
                continue;
            }
            assert!(
                FILES.iter().any(|(file, _, _)| *file == name),
                "dashboard/{name} is not listed in FILES"
            );
        }
        assert!(PAGE.contains(&format!("/ui/{}/app.js", *VERSION)));
    }
}
