//! A small client of the HTTP API, behind `conveyor jobs …`.

use anyhow::{anyhow, Context as _};
use serde_json::Value;

/// An API endpoint and a bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// Sends a request and returns the JSON body, or the problem's detail as the error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.with_context(|| {
            format!("cannot reach the API at {}: is `conveyor dev` or `conveyor api` running? (set CONVEYOR_URL)", self.base)
        })?;
        let status = res.status();
        let text = res.text().await.context("reading the response")?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(json)
        } else {
            let detail = json
                .get("detail")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| json.to_string());
            Err(anyhow!("{} {detail}", status.as_u16()))
        }
    }
}
