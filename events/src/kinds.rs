//! Job kinds: the entries of the kind registry, and the payloads of the built-in kinds with their
//! validation. The API validates a submission with [`validate_builtin`] before publishing (422 on
//! failure); the handlers parse the same types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An entry of the kind registry (`<NS>_KINDS`, keyed by kind): what serves the kind, recorded by
/// a Rust worker at start, by a worker of the worker protocol, or by an operator for a push kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The kind.
    pub kind: String,
    /// JSON Schema of its payload, when it declares one.
    #[serde(default)]
    pub schema: Option<Value>,
    /// For a push kind: the endpoint conveyor's workers POST each job to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushEndpoint>,
    /// The tenant whose worker registered it (the worker protocol, with a tenant's token); no
    /// other tenant's worker may register it again. `None`: the deployment's (a Rust worker, an
    /// operator, a worker serving every tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Where a push kind's jobs are delivered: a signed POST per attempt, with no worker process of
/// the user's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEndpoint {
    /// The URL (vetted like a webhook target).
    pub url: String,
    /// Time limit of one POST.
    pub timeout_ms: u64,
    /// The kind's signing secret (`whsec_…`, Standard Webhooks), which the endpoint verifies.
    pub secret: String,
}

/// `sleep`: waits `ms` in all, reporting progress `steps` times; cancellable between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// Total time, at most one hour.
    pub ms: u64,
    /// Progress reports (1 to 10,000).
    #[serde(default = "one")]
    pub steps: u32,
}

/// `flaky`: fails the first `fail_times` attempts, then succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flaky {
    /// Attempts that fail (at most 100).
    pub fail_times: u32,
}

/// `fail`: always fails (retryably, unless `fatal`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// Error message to fail with.
    #[serde(default)]
    pub message: Option<String>,
    /// Fail with a fatal error: dead-lettered without retries.
    #[serde(default)]
    pub fatal: bool,
    /// Panic instead of returning an error (exercises the worker's panic containment: a panic
    /// is a retryable failure, and the process goes on).
    #[serde(default)]
    pub panic: bool,
}

/// `fan_out`: submits `count` children of `kind` with `payload`, waits for them holding no worker,
/// then ends with their counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanOut {
    /// The children's kind (default `noop`).
    #[serde(default = "noop")]
    pub kind: String,
    /// How many (1 to 100).
    pub count: u32,
    /// Each child's payload.
    #[serde(default)]
    pub payload: Value,
}

fn noop() -> String {
    "noop".into()
}

impl FanOut {
    /// Parses and validates.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        let s: Self = parse(payload)?;
        if !(1..=100).contains(&s.count) {
            return Err("count must be between 1 and 100".into());
        }
        crate::ids::JobKind::parse(&s.kind).map_err(|e| e.to_string())?;
        // One level only: a fan-out of fan-outs (or of batches) would multiply one submission
        // into more jobs than the tenant's rate allows.
        if matches!(s.kind.as_str(), "fan_out" | "batch") {
            return Err(format!("kind `{}` cannot be fanned out", s.kind));
        }
        Ok(s)
    }
}

/// `report.job_stats`: counts the tenant's jobs by kind and status over the last `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStatsReport {
    /// Window length in seconds (default one day, at most 366 days).
    #[serde(default = "one_day")]
    pub window_secs: u64,
}

fn one() -> u32 {
    1
}

fn one_day() -> u64 {
    86_400
}

fn parse<T: serde::de::DeserializeOwned>(payload: &Value) -> Result<T, String> {
    let v = if payload.is_null() {
        Value::Object(Default::default())
    } else {
        payload.clone()
    };
    serde_json::from_value(v).map_err(|e| e.to_string())
}

impl Sleep {
    /// Parses and validates.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        let s: Self = parse(payload)?;
        if s.ms > 3_600_000 {
            return Err("ms must be at most 3600000 (one hour)".into());
        }
        if !(1..=10_000).contains(&s.steps) {
            return Err("steps must be between 1 and 10000".into());
        }
        Ok(s)
    }
}

impl Flaky {
    /// Parses and validates.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        let s: Self = parse(payload)?;
        if s.fail_times > 100 {
            return Err("fail_times must be at most 100".into());
        }
        Ok(s)
    }
}

impl Fail {
    /// Parses and validates.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        parse(payload)
    }
}

impl JobStatsReport {
    /// Parses and validates.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        let s: Self = parse(payload)?;
        if s.window_secs == 0 || s.window_secs > 366 * 86_400 {
            return Err("window_secs must be between 1 and 31622400".into());
        }
        Ok(s)
    }
}

/// The JSON Schema of a built-in kind's payload (what `GET /v1/kinds` publishes, so clients can
/// build forms and validate before submitting). `None` when `kind` is not built in.
pub fn builtin_schema(kind: &str) -> Option<Value> {
    let object = |properties: Value, required: &[&str]| {
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": ["object", "null"],
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    };
    Some(match kind {
        "noop" => serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "Succeeds at once; the result is `echo`.",
            "type": ["object", "null"],
            "properties": { "echo": { "description": "Returned as the result." } },
        }),
        "sleep" => object(
            serde_json::json!({
                "ms": { "type": "integer", "minimum": 0, "maximum": 3_600_000,
                        "description": "Total time to sleep, in ms." },
                "steps": { "type": "integer", "minimum": 1, "maximum": 10_000, "default": 1,
                           "description": "Progress reports along the way." },
            }),
            &["ms"],
        ),
        "flaky" => object(
            serde_json::json!({
                "fail_times": { "type": "integer", "minimum": 0, "maximum": 100,
                                "description": "Attempts that fail before one succeeds." },
            }),
            &["fail_times"],
        ),
        "fail" => object(
            serde_json::json!({
                "message": { "type": "string", "description": "Error message." },
                "fatal": { "type": "boolean", "default": false,
                           "description": "Dead-letter at once, without retries." },
                "panic": { "type": "boolean", "default": false,
                           "description": "Panic in the handler instead of returning an error." },
            }),
            &[],
        ),
        "fan_out" => object(
            serde_json::json!({
                "kind": { "type": "string", "default": "noop",
                          "not": { "enum": ["fan_out", "batch"] },
                          "description": "The children's kind (not `fan_out` or `batch`)." },
                "count": { "type": "integer", "minimum": 1, "maximum": 100,
                           "description": "How many children." },
                "payload": { "description": "Each child's payload." },
            }),
            &["count"],
        ),
        "batch" => serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "A batch's callback when none is named: its result is the members' counts.",
            "type": ["object", "null"],
        }),
        "report.job_stats" => object(
            serde_json::json!({
                "window_secs": { "type": "integer", "minimum": 1, "maximum": 31_622_400,
                                 "default": 86_400, "description": "How far back to count." },
            }),
            &[],
        ),
        _ => return None,
    })
}

/// How deeply a payload may nest (objects and arrays).
pub const MAX_PAYLOAD_DEPTH: usize = 32;

/// Checks a payload against the structural limits every kind shares: nesting depth at most
/// [`MAX_PAYLOAD_DEPTH`]. (Size is bounded by the request body limit.)
pub fn check_limits(payload: &Value) -> Result<(), String> {
    let mut stack = vec![(payload, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > MAX_PAYLOAD_DEPTH {
            return Err(format!(
                "the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
            ));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// Validates the payload of a built-in kind. `None` when `kind` is not built in (a user's kind,
/// whose handler validates its own input).
pub fn validate_builtin(kind: &str, payload: &Value) -> Option<Result<(), String>> {
    Some(match kind {
        "noop" => Ok(()),
        "sleep" => Sleep::from_payload(payload).map(drop),
        "flaky" => Flaky::from_payload(payload).map(drop),
        "fail" => Fail::from_payload(payload).map(drop),
        "report.job_stats" => JobStatsReport::from_payload(payload).map(drop),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation() {
        assert_eq!(validate_builtin("sleep", &json!({"ms": 10})), Some(Ok(())));
        assert!(matches!(
            validate_builtin("sleep", &json!({"ms": "x"})),
            Some(Err(_))
        ));
        assert!(matches!(
            validate_builtin("sleep", &json!({"ms": 1, "steps": 0})),
            Some(Err(_))
        ));
        assert!(matches!(
            validate_builtin("sleep", &json!({"ms": 1, "bogus": 1})),
            Some(Err(_))
        ));
        assert_eq!(validate_builtin("noop", &Value::Null), Some(Ok(())));
        assert_eq!(
            validate_builtin("flaky", &json!({"fail_times": 2})),
            Some(Ok(()))
        );
        assert_eq!(
            validate_builtin("report.job_stats", &Value::Null),
            Some(Ok(()))
        );
        assert_eq!(validate_builtin("custom", &Value::Null), None);
        assert_eq!(Sleep::from_payload(&json!({"ms": 5})).unwrap().steps, 1);
    }

    #[test]
    fn every_builtin_kind_has_a_schema() {
        for kind in crate::job::builtin_kinds() {
            let schema = builtin_schema(kind.as_str()).expect("a schema");
            assert!(schema["type"].is_array(), "{kind}");
        }
        assert_eq!(builtin_schema("custom"), None);
    }

    #[test]
    fn depth_limit() {
        let mut deep = json!(1);
        for _ in 0..MAX_PAYLOAD_DEPTH {
            deep = json!([deep]);
        }
        assert!(check_limits(&deep).is_ok());
        assert!(check_limits(&json!({ "a": deep })).is_err());
        assert!(check_limits(&json!({"a": [1, {"b": "c"}]})).is_ok());
    }
}
