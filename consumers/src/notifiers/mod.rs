//! Notifiers: side effects of events that must never run during a replay. Each has its own
//! durable consumers, retry policy and dead letters.

pub mod webhook;
