//! conveyor's JetStream I/O, shared by the API, the workers, the projector and the tools.
//!
//! Everything is idempotent: provisioning creates what is missing, reads back what the server
//! stored and refuses to start on a mismatch (older servers silently ignore fields they do not
//! know); publishing sets `Nats-Msg-Id` so a retried publish is stored once.
//!
//! # Layout
//! - [`connect`]: settings, the server list, connecting with the version and JetStream checks;
//! - [`provision`]: streams, durable consumers and buckets, with patient retries;
//! - [`attempt`]: what runners of an attempt share (result store, ended check, acks by subject);
//! - [`buckets`]: handles on the streams, consumers, key-value buckets and the object store;
//! - [`publish`]: publishing events and commands;
//! - [`mod@decode`]: decoding CloudEvents, in either content mode;
//! - [`consume`]: the pull loop every durable consumer's handler runs in;
//! - [`ordered`]: reading a stream in order without acknowledgements;
//! - [`trace`]: W3C trace context across messages;
//! - [`error`]: typed errors, classified as passing or lasting.

pub mod attempt;
pub mod buckets;
pub mod connect;
pub mod consume;
pub mod decode;
pub mod error;
pub mod ordered;
pub mod provision;
pub mod publish;
pub mod schedule;
pub mod trace;
pub mod transition;
pub mod webhook_dns;

pub use buckets::{create_once, entry, last_message, next_message, put_if};
pub use connect::{server_addrs, BusSettings};
pub use decode::{decode, decode_command, decode_event, Decoded};
pub use error::{Error, Result};

/// The async-nats types callers handle directly: messages they acknowledge themselves (the
/// worker heartbeats long jobs), the handles [`Bus`] returns, and where a reader starts.
pub mod jetstream {
    pub use async_nats::jetstream::consumer::pull::Batch;
    pub use async_nats::jetstream::consumer::{Consumer, DeliverPolicy};
    pub use async_nats::jetstream::kv::{Entry as KvEntry, Operation as KvOperation, Store};
    pub use async_nats::jetstream::message::StreamMessage;
    pub use async_nats::jetstream::object_store::ObjectStore;
    pub use async_nats::jetstream::publish::PublishAck;
    pub use async_nats::jetstream::stream::Stream;
    pub use async_nats::jetstream::{AckKind, Message};
    pub use async_nats::{Client, HeaderMap};

    /// A durable pull consumer.
    pub type PullConsumer = Consumer<async_nats::jetstream::consumer::pull::Config>;
}

/// A connected JetStream client scoped to one namespace.
#[derive(Debug, Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    ns: events::Namespace,
    replicas: usize,
    fail_fast: bool,
}
