//! Stream and consumer definitions, as data. The `bus` crate turns them into JetStream configs,
//! creates them idempotently and reads back what the server stored, refusing to start on a
//! mismatch. **Durable consumer names are contracts**: renaming one makes a fresh consumer that
//! starts over, so treat a rename like a migration.

use std::time::Duration;

use crate::ids::{JobKind, Namespace};

/// How long JetStream remembers `Nats-Msg-Id`s for deduplication. Long enough to cover a worker
/// that crashes, waits out its ack wait and is redelivered several times.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The largest message the streams accept (a job payload plus its envelope).
pub const MAX_MESSAGE_BYTES: i32 = 1024 * 1024;

/// NATS header on a terminal event saying whether its job has a webhook (`1`) or not (`0`).
/// Absent (events of older versions): the webhook fan-in looks the job up.
pub const WEBHOOK_HEADER: &str = "Conveyor-Webhook";

/// Name of the durable consumer that turns cancel commands into markers and broadcasts.
pub const CANCELLER_CONSUMER: &str = "canceller";
/// Name of the durable consumer that turns terminal events into webhook deliveries.
pub const WEBHOOK_FANIN_CONSUMER: &str = "webhook-fanin";
/// Name of the durable consumer that delivers webhooks.
pub const WEBHOOK_DELIVERY_CONSUMER: &str = "webhooks";
/// Name of the durable consumer through which the active scheduler holds the waiting run
/// commands.
pub const SCHEDULER_CONSUMER: &str = "scheduler";
/// Durable name of the submissions audit on EVENTS.
pub const SUBMISSIONS_AUDIT_CONSUMER: &str = "submissions-audit";

/// Retention of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep by limits (age, count): replayable. Always used for domain events, never Interest,
    /// which acknowledges and then drops messages no consumer wants.
    Limits,
    /// Delete on ack: the command queue.
    WorkQueue,
}

/// A stream, as conveyor wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Captured subjects.
    pub subjects: Vec<String>,
    /// Retention policy.
    pub retention: Retention,
    /// Refuse new messages when full (commands), rather than evicting old ones.
    pub discard_new: bool,
    /// Message count limit (-1: none).
    pub max_msgs: i64,
    /// Deduplication window.
    pub duplicate_window: Duration,
    /// Replicas (1 on a single server, 3 in a cluster).
    pub replicas: usize,
}

/// A durable pull consumer, as conveyor wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Stream it reads.
    pub stream: String,
    /// Durable name.
    pub durable: String,
    /// Subject filters (several need nats-server 2.10).
    pub filters: Vec<String>,
    /// Redelivery after this long without an ack or progress heartbeat.
    pub ack_wait: Duration,
    /// How many messages may be unacknowledged at once across all pullers.
    pub max_ack_pending: i64,
}

/// The EVENTS stream.
pub fn events_stream(ns: &Namespace, replicas: usize) -> StreamSpec {
    StreamSpec {
        name: ns.events_stream(),
        subjects: vec![ns.all_events()],
        retention: Retention::Limits,
        discard_new: false,
        max_msgs: -1,
        duplicate_window: DUPLICATE_WINDOW,
        replicas,
    }
}

/// The COMMANDS stream. Bounded: a full queue refuses publishes (the API answers 503) instead of
/// silently evicting accepted work.
pub fn commands_stream(ns: &Namespace, replicas: usize) -> StreamSpec {
    StreamSpec {
        name: ns.commands_stream(),
        subjects: vec![ns.all_commands()],
        retention: Retention::WorkQueue,
        discard_new: true,
        max_msgs: 10_000_000,
        duplicate_window: DUPLICATE_WINDOW,
        replicas,
    }
}

/// The worker consumer of one kind, shared by every worker process that serves the kind.
pub fn worker_consumer(ns: &Namespace, kind: &JobKind, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec {
        stream: ns.commands_stream(),
        durable: format!("worker-{}", kind.token()),
        filters: vec![ns.run_commands(kind)],
        ack_wait,
        // Delayed and backing-off jobs wait as pending messages, so this bounds how many may
        // wait, not how many run: each process bounds running jobs with its own semaphore.
        max_ack_pending: 100_000,
    }
}

/// The scheduler's consumer of waiting run commands. It holds every waiting command unacknowledged
/// until it releases it, so its ack wait is long (a new active scheduler recreates the consumer
/// rather than waiting it out) and `max_ack_pending` bounds how many waiting jobs it weighs at
/// once: beyond that, the oldest arrivals wait in the stream, in order.
pub fn scheduler_consumer(ns: &Namespace) -> ConsumerSpec {
    ConsumerSpec {
        stream: ns.commands_stream(),
        durable: SCHEDULER_CONSUMER.to_owned(),
        filters: vec![ns.wait_commands()],
        // Under the duplicate window, so a command redelivered after a lost ack is released
        // again with the same id and stored once.
        ack_wait: Duration::from_secs(5 * 60),
        max_ack_pending: 250_000,
    }
}

/// The canceller consumer.
pub fn canceller_consumer(ns: &Namespace, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec {
        stream: ns.commands_stream(),
        durable: CANCELLER_CONSUMER.to_owned(),
        filters: vec![ns.cancel_commands()],
        ack_wait,
        max_ack_pending: 10_000,
    }
}

/// The webhook fan-in: reads terminal events and queues a delivery for jobs with a webhook.
/// Created with the streams, so it sees every terminal event from the start.
pub fn webhook_fanin_consumer(ns: &Namespace) -> ConsumerSpec {
    ConsumerSpec {
        stream: ns.events_stream(),
        durable: WEBHOOK_FANIN_CONSUMER.to_owned(),
        filters: ns.terminal_events(),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
    }
}

/// The submissions audit: reads every `job.submitted` and `job.redriven` to make sure its job
/// has the run command that follows it. Created with the streams, so it sees every one.
pub fn submissions_audit_consumer(ns: &Namespace) -> ConsumerSpec {
    ConsumerSpec {
        stream: ns.events_stream(),
        durable: SUBMISSIONS_AUDIT_CONSUMER.to_owned(),
        filters: vec![ns.submitted_events(), ns.redriven_events()],
        ack_wait: Duration::from_secs(60),
        max_ack_pending: 10_000,
    }
}

/// The webhook deliveries queue's consumer.
pub fn webhook_delivery_consumer(ns: &Namespace, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec {
        stream: ns.commands_stream(),
        durable: WEBHOOK_DELIVERY_CONSUMER.to_owned(),
        filters: vec![ns.webhook_commands()],
        ack_wait,
        // Retries wait as pending messages (delayed NAKs), so this bounds waiting deliveries.
        max_ack_pending: 100_000,
    }
}
