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
            catalog.insert(kind, true, schema);
        }
        for kind in extra {
            if !catalog.contains(kind) {
                catalog.insert(kind.clone(), false, None);
            }
        }
        catalog
    }

    pub(crate) fn contains(&self, kind: &JobKind) -> bool {
        self.kinds
            .read()
            .expect("catalog poisoned")
            .contains_key(kind)
    }

    /// Whether `kind` is one of conveyor's own.
    pub(crate) fn is_builtin(kind: &JobKind) -> bool {
        events::kinds::builtin_schema(kind.as_str()).is_some()
    }

    /// Accepts `kind`, registered by a worker of the worker protocol, at once on this process
    /// (the others learn of it from the registry). Refuses a schema that is not a JSON Schema.
    pub(crate) fn register(
        &self,
        kind: &JobKind,
        schema: Option<Value>,
    ) -> Result<KindInfo, String> {
        if let Some(s) = &schema {
            jsonschema::validator_for(s)
                .map_err(|e| format!("`schema` is not a valid JSON Schema: {e}"))?;
        }
        self.insert(kind.clone(), false, schema);
        let kinds = self.kinds.read().expect("catalog poisoned");
        Ok(kinds[kind].info.clone())
    }

    fn insert(&self, kind: JobKind, builtin: bool, schema: Option<Value>) {
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
            let registered: Value = serde_json::from_slice(&entry.value).unwrap_or(Value::Null);
            let schema = registered.get("schema").filter(|s| !s.is_null()).cloned();
            let builtin = events::kinds::builtin_schema(kind.as_str()).is_some();
            if !builtin {
                tracing::debug!(%kind, "kind registered by a worker");
                self.insert(kind, false, schema);
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
            unknown.contains("known kinds: fail, flaky, image.resize"),
            "{unknown}"
        );

        c.insert(
            resize.clone(),
            false,
            Some(json!({"type": "object", "required": ["width"],
                        "properties": {"width": {"type": "integer", "minimum": 1}}})),
        );
        assert!(c.validate(&resize, &json!({"width": 10})).is_ok());
        let e = c.validate(&resize, &json!({"width": 0})).unwrap_err();
        assert!(e.contains("/width"), "{e}");
        assert!(c.validate(&resize, &json!({})).is_err());
        assert_eq!(c.list().len(), 6);
    }
}
