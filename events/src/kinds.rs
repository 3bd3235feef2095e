//! Payloads of the built-in job kinds, with their validation. The API validates a submission
//! with [`validate_builtin`] before publishing (422 on failure); the handlers parse the same types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
}
