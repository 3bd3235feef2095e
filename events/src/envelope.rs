//! The CloudEvents 1.0 envelope and its encodings.
//!
//! # Content mode on NATS
//! conveyor publishes in **structured** content mode: the message payload is the whole CloudEvent
//! as JSON (`application/cloudevents+json`), as in the CloudEvents NATS binding v1.0.2. The same
//! bytes are what SSE clients and webhook receivers get, so nothing is re-encoded on the way out.
//! When reading, **binary** mode (attributes as `ce-*` headers, `data` as the payload, as in the
//! later binding draft) is accepted too, so events written by other CloudEvents tools can be
//! imported.
//!
//! The envelope is typed ([`Envelope<P>`]) and serialises straight to the CloudEvents JSON format;
//! [`Envelope::to_cloudevent`] converts it to the `cloudevents-sdk` core [`cloudevents::Event`]
//! for interoperability. We validate what the SDK does not: non-empty `id` and `source`, RFC 3339
//! `time`, extension names and the W3C `traceparent` format.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::ids::{IdError, JobId, JobKind, Tenant};

/// The CloudEvents spec version we speak.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of a structured-mode CloudEvent.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Prefix of every conveyor event and command type.
pub const TYPE_PREFIX: &str = "dev.conveyor.";

/// Why bytes could not be read as a conveyor CloudEvent. Such a message is poison: it is
/// terminated (never retried) and logged with this reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed CloudEvent: {0}")]
    Json(#[from] serde_json::Error),
    /// A required attribute is missing or empty.
    #[error("missing or empty CloudEvent attribute `{0}`")]
    Missing(&'static str),
    /// `specversion` is not 1.0.
    #[error("unsupported specversion {0:?}")]
    SpecVersion(String),
    /// The `type` is not one this build knows.
    #[error("unsupported event type {0:?}")]
    UnknownType(String),
    /// An attribute does not have a valid value.
    #[error("invalid attribute `{0}`: {1}")]
    Invalid(&'static str, String),
    /// A conveyor id in the event (tenant, kind, job id) is invalid.
    #[error(transparent)]
    Id(#[from] IdError),
}

/// The body of a CloudEvent: a domain event or a command. Its wire `type` is explicit and stable,
/// never derived from Rust names, because renaming it would break every stored event.
pub trait Payload: Sized {
    /// The full CloudEvents `type`, e.g. `dev.conveyor.job.succeeded`.
    fn event_type(&self) -> &'static str;
    /// The schema version of the data; decoding upcasts older versions here.
    fn event_version(&self) -> u32 {
        1
    }
    /// The `data` member.
    fn to_data(&self) -> Value;
    /// Rebuilds the payload from its `type` and `data`.
    fn from_data(event_type: &str, data: Value) -> Result<Self, DecodeError>;
}

/// A W3C trace context `traceparent` value, validated (`00-<32 hex>-<16 hex>-<2 hex>`, ids not
/// all zero). An invalid one from a client is dropped and a new trace started, never copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TraceParent(String);

impl TraceParent {
    /// Validates a `traceparent` header value.
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split('-').collect();
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let ok = parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0');
        ok.then(|| Self(s.to_owned()))
    }

    /// A new sampled trace with random ids (derived from a UUIDv4's randomness).
    pub fn generate() -> Self {
        let trace = Uuid::new_v4().simple().to_string();
        let span = &Uuid::new_v4().simple().to_string()[..16];
        Self(format!("00-{trace}-{span}-01"))
    }

    /// The same trace with a new span id: what a consumer puts on the events it publishes.
    pub fn child(&self) -> Self {
        let span = &Uuid::new_v4().simple().to_string()[..16];
        Self(format!("00-{}-{span}-{}", self.trace_id(), &self.0[53..55]))
    }

    /// Builds one from a trace id (32 hex digits), a span id (16) and trace flags; `None` if
    /// they do not make a valid `traceparent`.
    pub fn from_parts(trace_id: &str, span_id: &str, flags: u8) -> Option<Self> {
        Self::parse(&format!("00-{trace_id}-{span_id}-{flags:02x}"))
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The 16-hex-digit id of the span it names (the publisher's span).
    pub fn span_id(&self) -> &str {
        &self.0[36..52]
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.0[53..55], 16).unwrap_or(0)
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CloudEvent about one job. `subject` is the job id; the extensions `tenant`, `jobkind` and
/// `traceparent` let consumers filter and trace without decoding `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<P> {
    /// Unique event id (UUIDv7).
    pub id: Uuid,
    /// Which component produced it, e.g. `/conveyor/api`.
    pub source: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The job it is about (CloudEvents `subject`).
    pub job: JobId,
    /// The tenant that owns the job (extension `tenant`).
    pub tenant: Tenant,
    /// The job's kind (extension `jobkind`).
    pub kind: JobKind,
    /// W3C trace context (extension `traceparent`).
    pub traceparent: Option<TraceParent>,
    /// The typed body.
    pub payload: P,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    subject: String,
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<String>,
    tenant: String,
    jobkind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default)]
    data: Value,
}

impl<P: Payload> Envelope<P> {
    /// A new event with a fresh UUIDv7 id, stamped now.
    pub fn new(
        source: impl Into<String>,
        job: JobId,
        tenant: Tenant,
        kind: JobKind,
        payload: P,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            source: source.into(),
            time: Utc::now(),
            job,
            tenant,
            kind,
            traceparent: None,
            payload,
        }
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, traceparent: Option<TraceParent>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// The full CloudEvents `type`.
    pub fn event_type(&self) -> &'static str {
        self.payload.event_type()
    }

    fn to_wire(&self) -> Wire {
        Wire {
            specversion: SPEC_VERSION.to_owned(),
            id: self.id.to_string(),
            source: self.source.clone(),
            ty: self.payload.event_type().to_owned(),
            subject: self.job.to_string(),
            time: self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            datacontenttype: Some("application/json".to_owned()),
            tenant: self.tenant.to_string(),
            jobkind: self.kind.to_string(),
            traceparent: self.traceparent.as_ref().map(|t| t.0.clone()),
            data: self.payload.to_data(),
        }
    }

    /// The structured-mode encoding: the CloudEvents JSON format.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_wire()).expect("a CloudEvent always serialises")
    }

    /// The event as a JSON value (for read models and APIs).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self.to_wire()).expect("a CloudEvent always serialises")
    }

    /// Decodes a structured-mode CloudEvent.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: Wire = serde_json::from_slice(bytes)?;
        Self::from_wire(wire)
    }

    /// Decodes a binary-mode CloudEvent: `header` looks up a NATS header (`ce-id`, `ce-type`, …)
    /// and `data` is the message payload (JSON).
    pub fn from_binary<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        data: &[u8],
    ) -> Result<Self, DecodeError> {
        let get = |name: &'static str| header(name).map(str::to_owned);
        let data = if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(data)?
        };
        Self::from_wire(Wire {
            specversion: get("ce-specversion").ok_or(DecodeError::Missing("specversion"))?,
            id: get("ce-id").unwrap_or_default(),
            source: get("ce-source").unwrap_or_default(),
            ty: get("ce-type").unwrap_or_default(),
            subject: get("ce-subject").unwrap_or_default(),
            time: get("ce-time").unwrap_or_default(),
            datacontenttype: get("content-type"),
            tenant: get("ce-tenant").unwrap_or_default(),
            jobkind: get("ce-jobkind").unwrap_or_default(),
            traceparent: get("ce-traceparent"),
            data,
        })
    }

    fn from_wire(w: Wire) -> Result<Self, DecodeError> {
        if w.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(w.specversion));
        }
        let non_empty = |v: &str, name: &'static str| {
            if v.is_empty() {
                Err(DecodeError::Missing(name))
            } else {
                Ok(())
            }
        };
        non_empty(&w.id, "id")?;
        non_empty(&w.source, "source")?;
        non_empty(&w.ty, "type")?;
        non_empty(&w.subject, "subject")?;
        non_empty(&w.time, "time")?;
        let id = Uuid::parse_str(&w.id)
            .map_err(|_| DecodeError::Invalid("id", "expected a UUID".into()))?;
        let time = DateTime::parse_from_rfc3339(&w.time)
            .map_err(|e| DecodeError::Invalid("time", e.to_string()))?
            .with_timezone(&Utc);
        let traceparent = match w.traceparent {
            Some(t) => Some(
                TraceParent::parse(&t)
                    .ok_or_else(|| DecodeError::Invalid("traceparent", t.clone()))?,
            ),
            None => None,
        };
        Ok(Self {
            id,
            source: w.source,
            time,
            job: w.subject.parse()?,
            tenant: Tenant::parse(&w.tenant)?,
            kind: JobKind::parse(&w.jobkind)?,
            traceparent,
            payload: P::from_data(&w.ty, w.data)?,
        })
    }

    /// The event as the `cloudevents-sdk` core type.
    pub fn to_cloudevent(&self) -> cloudevents::Event {
        serde_json::from_slice(&self.to_json()).expect("our JSON is a valid CloudEvent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobEvent, Progressed};
    use cloudevents::AttributesReader;

    fn sample() -> Envelope<JobEvent> {
        Envelope::new(
            "/conveyor/worker",
            JobId::new(),
            Tenant::parse("acme").unwrap(),
            JobKind::parse("sleep").unwrap(),
            JobEvent::Progressed(Progressed {
                attempt: 1,
                current: 2,
                total: Some(5),
                message: Some("step 2".into()),
            }),
        )
        .with_trace(Some(TraceParent::generate()))
    }

    #[test]
    fn structured_round_trip() {
        let ev = sample();
        let back = Envelope::<JobEvent>::from_json(&ev.to_json()).unwrap();
        // Time is encoded with microsecond precision.
        assert_eq!(back.id, ev.id);
        assert_eq!(back.payload, ev.payload);
        assert_eq!(back.traceparent, ev.traceparent);
        assert_eq!(back.tenant, ev.tenant);
    }

    #[test]
    fn the_sdk_reads_our_events() {
        let ev = sample();
        let ce = ev.to_cloudevent();
        assert_eq!(ce.id(), ev.id.to_string());
        assert_eq!(ce.ty(), "dev.conveyor.job.progressed");
        assert_eq!(ce.subject(), Some(ev.job.to_string().as_str()));
        assert_eq!(
            ce.extension("tenant").map(|v| v.to_string()),
            Some("acme".to_owned())
        );
    }

    #[test]
    fn binary_mode_is_accepted() {
        let ev = sample();
        let wire = ev.to_wire();
        let headers = [
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", wire.id.clone()),
            ("ce-source", wire.source.clone()),
            ("ce-type", wire.ty.clone()),
            ("ce-subject", wire.subject.clone()),
            ("ce-time", wire.time.clone()),
            ("ce-tenant", wire.tenant.clone()),
            ("ce-jobkind", wire.jobkind.clone()),
        ];
        let data = serde_json::to_vec(&wire.data).unwrap();
        let back = Envelope::<JobEvent>::from_binary(
            |name| {
                headers
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.as_str())
            },
            &data,
        )
        .unwrap();
        assert_eq!(back.id, ev.id);
        assert_eq!(back.payload, ev.payload);
    }

    #[test]
    fn poison_is_refused_with_a_reason() {
        let ok = String::from_utf8(sample().to_json()).unwrap();
        let cases = [
            ("garbage", "\u{0}\u{1}not json".to_owned()),
            (
                "empty id",
                ok.replacen("\"id\":\"", "\"id\":\"\",\"x\":\"", 1),
            ),
            ("spec", ok.replace("\"1.0\"", "\"0.3\"")),
            (
                "type",
                ok.replace("dev.conveyor.job.progressed", "dev.conveyor.job.exploded"),
            ),
        ];
        for (name, bytes) in cases {
            assert!(
                Envelope::<JobEvent>::from_json(bytes.as_bytes()).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn traceparent_validation() {
        let t = TraceParent::generate();
        assert!(TraceParent::parse(t.as_str()).is_some());
        assert_eq!(t.child().trace_id(), t.trace_id());
        assert_ne!(t.child(), t);
        for bad in [
            "",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
    }
}
