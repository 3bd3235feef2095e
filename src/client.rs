//! A small client of the HTTP API, behind `conveyor jobs …`.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

/// An answer other than 2xx: its status, the problem's detail, and how long the server asked
/// to wait before trying again (`Retry-After`, on 429 and 503).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {detail}")]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The problem's `detail` (or the body).
    pub detail: String,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
}

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

    /// Sends a request and returns the JSON body; an answer other than 2xx is an
    /// [`ApiFailure`].
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
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
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
            Err(ApiFailure {
                status: status.as_u16(),
                detail,
                retry_after,
            }
            .into())
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (the stream sequence).
    pub id: Option<String>,
    /// `event:`.
    pub event: String,
    /// `data:` lines, joined by newlines.
    pub data: String,
}

/// Splits a server-sent-events byte stream into events (comments and `retry:` are skipped).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
    current: SseEvent,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(pos) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=pos).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let ev = std::mem::take(&mut self.current);
                if !ev.data.is_empty() || !ev.event.is_empty() {
                    out.push(ev);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = value.to_owned(),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                _ => {}
            }
        }
        out
    }
}

impl Client {
    /// Follows an SSE endpoint, calling `on_event` for each event until it returns `false`, the
    /// server ends the stream, nothing arrives for `idle` (when given), or an error occurs.
    pub async fn follow(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        idle: Option<std::time::Duration>,
        mut on_event: impl FnMut(SseEvent) -> bool,
    ) -> anyhow::Result<()> {
        use futures::StreamExt;
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.with_context(|| {
            format!("cannot reach the API at {}: is `conveyor dev` or `conveyor api` running? (set CONVEYOR_URL)", self.base)
        })?;
        if !res.status().is_success() {
            let status = res.status();
            let json: Value = res.json().await.unwrap_or(Value::Null);
            let detail = json
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return Err(ApiFailure {
                status: status.as_u16(),
                detail,
                retry_after: None,
            }
            .into());
        }
        let mut parser = SseParser::default();
        let mut body = res.bytes_stream();
        loop {
            let next = match idle {
                Some(idle) => match tokio::time::timeout(idle, body.next()).await {
                    Ok(next) => next,
                    Err(_) => return Ok(()),
                },
                None => body.next().await,
            };
            let Some(chunk) = next else { break };
            for ev in parser.feed(&chunk.context("reading the event stream")?) {
                if !on_event(ev) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_splits_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nid: 7\nevent: job.succ").is_empty());
        let evs = p.feed(b"eeded\ndata: {\"a\":1}\n\nevent: resume\ndata: x\r\n\r\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].id.as_deref(), Some("7"));
        assert_eq!(evs[0].event, "job.succeeded");
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].event, "resume");
    }
}
