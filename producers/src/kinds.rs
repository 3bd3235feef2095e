//! The kinds this API accepts, with their payload schemas.
//!
//! Three sources: the built-in kinds (validated by their Rust types in `events::kinds`), the
//! kinds named in the configuration (`CONVEYOR_KINDS`: accepted before any worker serving them
//! has started), and the kind registry in JetStream (`<NS>_KINDS`), where every worker records the
//! kinds it serves and the JSON Schema its handler declares. The API follows the registry, so a
//! new worker's kinds are accepted, and their payloads validated, without restarting the API.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bus::Bus;
use events::JobKind;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How many schema violations a 422 lists.
const MAX_REPORTED_VIOLATIONS: usize = 5;

/// One accepted kind, as `GET /v1/kinds` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct KindInfo {
    /// The kind, e.g. `sleep`.
    kind: String,
    /// Whether conveyor's own workers serve it.
    builtin: bool,
    /// JSON Schema of the payload, when the kind declares one.
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
    /// For a push kind: where its jobs are delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<PushInfo>,
}

/// A push kind's endpoint, as `GET /v1/kinds` shows it (its query and user information, which may
/// carry secrets, left out).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct PushInfo {
    url: String,
    timeout_ms: u64,
}

/// Who runs an accepted kind's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServedBy {
    /// conveyor's own workers: a built-in kind, or a push kind.
    Conveyor,
    /// Users' workers: a Rust handler of their own, or a worker of the worker protocol.
    Workers,
}

#[derive(Clone)]
struct Entry {
    info: KindInfo,
    validator: Option<Arc<jsonschema::Validator>>,
}

/// The accepted kinds; cheap to share.
#[derive(Clone)]
pub(crate) struct Catalog {
    kinds: Arc<RwLock<BTreeMap<JobKind, Entry>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds = self.kinds.read().expect("catalog poisoned");
        f.debug_list().entries(kinds.keys()).finish()
    }
}

impl Catalog {
    /// The built-in kinds plus `extra` (configured kinds, without a schema until a worker
    /// registers one).
    pub(crate) fn new(extra: &[JobKind]) -> Self {
        let catalog = Self {
            kinds: Default::default(),
        };
        for kind in events::job::builtin_kinds() {
            let schema = events::kinds::builtin_schema(kind.as_str());
            catalog.insert(kind, true, schema, None);
        }
        for kind in extra {
            if !catalog.contains(kind) {
                catalog.insert(kind.clone(), false, None, None);
            }
        }
        catalog
    }

    /// Who runs `kind`'s jobs, if it is accepted.
    pub(crate) fn served_by(&self, kind: &JobKind) -> Option<ServedBy> {
        let kinds = self.kinds.read().expect("catalog poisoned");
        kinds.get(kind).map(|e| {
            if e.info.builtin || e.info.push.is_some() {
                ServedBy::Conveyor
            } else {
                ServedBy::Workers
            }
        })
    }

    fn contains(&self, kind: &JobKind) -> bool {
        self.kinds
            .read()
            .expect("catalog poisoned")
            .contains_key(kind)
    }

    /// Whether `kind` is one of conveyor's own.
    pub(crate) fn is_builtin(kind: &JobKind) -> bool {
        events::kinds::builtin_schema(kind.as_str()).is_some()
    }

    /// Whether `schema` is a JSON Schema; the error is the message of a 422.
    pub(crate) fn check_schema(schema: &Value) -> Result<(), String> {
        jsonschema::validator_for(schema)
            .map(drop)
            .map_err(|e| format!("`schema` is not a valid JSON Schema: {e}"))
    }

    /// Accepts a kind just recorded in the registry at once on this process (the others learn
    /// of it from the registry).
    pub(crate) fn register(&self, entry: &events::kinds::Registered) -> Option<KindInfo> {
        let kind = JobKind::parse(&entry.kind).ok()?;
        self.insert(
            kind.clone(),
            false,
            entry.schema.clone(),
            entry.push.as_ref(),
        );
        let kinds = self.kinds.read().expect("catalog poisoned");
        Some(kinds[&kind].info.clone())
    }

    fn insert(
        &self,
        kind: JobKind,
        builtin: bool,
        schema: Option<Value>,
        push: Option<&events::kinds::PushEndpoint>,
    ) {
        // Every kind's payload is checked against its schema, so a caller gets the list of
        // violations; a built-in kind's Rust type then checks what a schema cannot say.
        let validator = match &schema {
            Some(s) => match jsonschema::validator_for(s) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "the kind's schema is not a valid JSON Schema; payloads are not checked");
                    None
                }
            },
            _ => None,
        };
        let entry = Entry {
            info: KindInfo {
                kind: kind.to_string(),
                builtin,
                schema,
                push: push.map(|p| PushInfo {
                    url: events::webhooks::url::redact(&p.url),
                    timeout_ms: p.timeout_ms,
                }),
            },
            validator,
        };
        self.kinds
            .write()
            .expect("catalog poisoned")
            .insert(kind, entry);
    }

    /// Every accepted kind, sorted.
    pub(crate) fn list(&self) -> Vec<KindInfo> {
        let kinds = self.kinds.read().expect("catalog poisoned");
        kinds.values().map(|e| e.info.clone()).collect()
    }

    /// Checks that `kind` is accepted and `payload` fits its schema; the error is the message
    /// of a 422.
    pub(crate) fn validate(&self, kind: &JobKind, payload: &Value) -> Result<(), String> {
        events::kinds::check_limits(payload)?;
        let entry = {
            let kinds = self.kinds.read().expect("catalog poisoned");
            match kinds.get(kind) {
                Some(e) => e.clone(),
                None => {
                    let known: Vec<&str> = kinds.keys().map(JobKind::as_str).collect();
                    return Err(format!(
                        "unknown job kind `{kind}`; known kinds: {}",
                        known.join(", ")
                    ));
                }
            }
        };
        if let Some(validator) = &entry.validator {
            let violations: Vec<String> = validator
                .iter_errors(payload)
                .take(MAX_REPORTED_VIOLATIONS)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            if !violations.is_empty() {
                return Err(format!(
                    "invalid payload for `{kind}`: {}",
                    violations.join("; ")
                ));
            }
        }
        if entry.info.builtin {
            if let Some(Err(e)) = events::kinds::validate_builtin(kind.as_str(), payload) {
                return Err(format!("invalid payload for `{kind}`: {e}"));
            }
        }
        Ok(())
    }

    /// Follows the kind registry until `shutdown`, adding the kinds workers register;
    /// reconnects after errors.
    pub(crate) async fn follow(self, bus: Bus, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.follow_once(&bus, &shutdown).await {
                tracing::debug!(error = %e, "kind registry watch interrupted; resuming");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }

    async fn follow_once(&self, bus: &Bus, shutdown: &CancellationToken) -> bus::Result<()> {
        let kv = bus.kinds().await?;
        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(bus::Error::bucket)?;
        loop {
            let entry = tokio::select! {
                e = watch.next() => e,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let entry = entry
                .ok_or(bus::Error::Ended("the kind registry's watch"))?
                .map_err(bus::Error::bucket)?;
            let Ok(kind) = JobKind::parse(&entry.key) else {
                continue;
            };
            let Ok(registered) = serde_json::from_slice::<events::kinds::Registered>(&entry.value)
            else {
                continue;
            };
            let schema = registered.schema.filter(|s| !s.is_null());
            if !Self::is_builtin(&kind) {
                tracing::debug!(%kind, "kind registered");
                self.insert(kind, false, schema, registered.push.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_configured_and_registered_kinds() {
        let c = Catalog::new(&[JobKind::parse("image.resize").unwrap()]);
        let sleep = JobKind::parse("sleep").unwrap();
        assert!(c.validate(&sleep, &json!({"ms": 5})).is_ok());
        assert!(c.validate(&sleep, &json!({"ms": "x"})).is_err());
        let resize = JobKind::parse("image.resize").unwrap();
        assert!(
            c.validate(&resize, &json!({"anything": 1})).is_ok(),
            "no schema yet"
        );
        let unknown = c
            .validate(&JobKind::parse("nope").unwrap(), &Value::Null)
            .unwrap_err();
        assert!(
            unknown.contains("known kinds: batch, fail, fan_out, flaky, image.resize"),
            "{unknown}"
        );

        c.insert(
            resize.clone(),
            false,
            Some(json!({"type": "object", "required": ["width"],
                        "properties": {"width": {"type": "integer", "minimum": 1}}})),
            None,
        );
        assert!(c.validate(&resize, &json!({"width": 10})).is_ok());
        let e = c.validate(&resize, &json!({"width": 0})).unwrap_err();
        assert!(e.contains("/width"), "{e}");
        assert!(c.validate(&resize, &json!({})).is_err());
        assert_eq!(c.list().len(), 8);
    }
}
