//! The contract of conveyor, as data: the CloudEvents envelope, domain events and commands,
//! subjects, and the definitions of the JetStream streams and consumers.
//!
//! This crate does no I/O (no tokio, sqlx or async-nats), so every role (`producers`,
//! `consumers`, tools) depends on it and on nothing of each other's.
//!
//! ```
//! use events::{Envelope, JobEvent, Namespace, Tenant, JobId, job::CancelRequested};
//! let ns = Namespace::parse("conveyor").unwrap();
//! let tenant = Tenant::parse("acme").unwrap();
//! let job = JobId::new();
//! let ev = Envelope::new("/conveyor/api", job, tenant, "noop".parse().unwrap(),
//!     JobEvent::CancelRequested(CancelRequested { reason: None }));
//! let bytes = ev.to_json();
//! let back: Envelope<JobEvent> = Envelope::from_json(&bytes).unwrap();
//! assert_eq!(back.id, ev.id);
//! assert_eq!(ns.event_subject(&ev), format!("conveyor.events.acme.job.{job}.cancel_requested"));
//! ```

pub mod command;
pub mod envelope;
pub mod ids;
pub mod job;
pub mod kinds;
pub mod lifecycle;
pub mod pause;
pub mod retry;
pub mod schedule;
pub mod streams;
pub mod subjects;
pub mod webhooks;

pub use command::Command;
pub use envelope::{DecodeError, Envelope, Payload, TraceParent};
pub use ids::{IdError, JobId, JobKind, Namespace, Tenant};
pub use job::{JobEvent, JobStatus};
pub use retry::RetryPolicy;
