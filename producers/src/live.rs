//! Live event fan-out for SSE and WebSocket subscribers.
//!
//! One **tail** per API process follows the EVENTS stream with an ordered consumer, while anyone
//! subscribes here, and publishes each event of a followed tenant, decoded once, into that
//! tenant's bounded `broadcast` channel. Subscribers hold a receiver of their tenant's channel
//! and filter by type, kind and job; an idle subscriber costs a receiver, not a JetStream
//! consumer, and other tenants' events never wake it. Every subscriber reads the stream's last
//! sequence after taking its receiver; the tail delivers whatever comes after (a stopped tail is
//! started from there). A subscriber that resumes (`Last-Event-ID`, `?after=`) first **catches
//! up** from the stream itself (direct gets by subject, from the resume point to that last
//! sequence), then switches to the broadcast, skipping what it already sent: no gap and no
//! duplicate, however old the resume point and across restarts of the process.
//!
//! A subscriber that reads too slowly falls behind the broadcast's capacity; it then gets an
//! [`Item::Resume`] carrying the last sequence it covered, and its stream ends, so the client
//! resumes from there. The same happens when the server shuts down or the token expires. The
//! tail never waits for a subscriber.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bus::jetstream::DeliverPolicy;
use bus::Bus;
use events::{JobEvent, JobId, Tenant};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscribeError {
    /// The event log cannot be read.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// The resume point is past the last event stored.
    #[error("resume point {after} is beyond the end of the event log (last sequence {last})")]
    BeyondEnd {
        /// The resume point asked for.
        after: u64,
        /// The log's last sequence.
        last: u64,
    },
}

/// One event as subscribers see it.
#[derive(Debug)]
pub(crate) struct LiveEvent {
    /// EVENTS stream sequence: the SSE `id`.
    pub(crate) seq: u64,
    pub(crate) tenant: Tenant,
    pub(crate) job: JobId,
    pub(crate) kind: String,
    /// Short name (`succeeded`).
    pub(crate) name: &'static str,
    pub(crate) terminal: bool,
    /// The CloudEvent, JSON.
    pub(crate) json: String,
}

impl LiveEvent {
    fn from_message(
        seq: u64,
        headers: Option<&bus::jetstream::HeaderMap>,
        payload: &bytes::Bytes,
    ) -> Option<Self> {
        let bus::Decoded { envelope: ev, json } = bus::decode::<JobEvent>(headers, payload).ok()?;
        let json = String::from_utf8(json.into()).ok()?;
        Some(Self {
            seq,
            name: ev.payload.name(),
            terminal: ev.payload.is_terminal(),
            tenant: ev.tenant,
            job: ev.job,
            kind: ev.kind.to_string(),
            json,
        })
    }

    /// The SSE `event:` name (`job.succeeded`).
    pub(crate) fn event_name(&self) -> String {
        format!("job.{}", self.name)
    }
}

/// What a subscription wants. The tenant always comes from the caller's token.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) tenant: Tenant,
    /// Short names (`succeeded`); empty means all.
    pub(crate) types: Vec<String>,
    pub(crate) kind: Option<String>,
    pub(crate) job: Option<JobId>,
}

impl Filter {
    /// Parses a `type=` list: `job.succeeded`, `dev.conveyor.job.succeeded` or `succeeded`.
    pub(crate) fn parse_types(list: &str) -> Result<Vec<String>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                let short = t
                    .strip_prefix("dev.conveyor.")
                    .unwrap_or(t)
                    .strip_prefix("job.")
                    .unwrap_or(t.strip_prefix("dev.conveyor.").unwrap_or(t));
                if JobEvent::NAMES.contains(&short) {
                    Ok(short.to_owned())
                } else {
                    Err(format!("unknown event type `{t}`"))
                }
            })
            .collect()
    }

    fn matches(&self, ev: &LiveEvent) -> bool {
        ev.tenant == self.tenant
            && (self.types.is_empty() || self.types.iter().any(|t| t == ev.name))
            && self.kind.as_deref().is_none_or(|k| k == ev.kind)
            && self.job.is_none_or(|j| j == ev.job)
    }

    /// The narrowest subject covering the filter, for catch-up reads.
    fn subject(&self, bus: &Bus) -> String {
        match self.job {
            Some(job) => bus.ns().job_events(&self.tenant, job),
            None => bus.ns().tenant_events(&self.tenant),
        }
    }
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event(Arc<LiveEvent>),
    /// The subscription ends; the client resumes after this sequence (everything up to it was
    /// sent or did not match).
    Resume {
        after: u64,
        reason: Ended,
    },
}

/// Why a live stream ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The subscriber read too slowly and fell behind the buffer.
    FellBehind,
    /// The event log could not be read.
    ReadFailed,
    /// The server is shutting down.
    ServerStopping,
    /// The caller's token expired.
    TokenExpired,
}

impl Ended {
    /// What the client is told.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::FellBehind => "this client fell behind; reconnect with Last-Event-ID to resume",
            Self::ReadFailed => "the event log could not be read; reconnect with Last-Event-ID to resume",
            Self::ServerStopping => "the server is shutting down; reconnect (to another server) with Last-Event-ID to resume",
            Self::TokenExpired => "the token expired; reconnect with a new token and Last-Event-ID to resume",
        }
    }
}

/// A future that ends a subscription (shutdown, token expiry) with its reason.
pub(crate) type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = Ended> + Send>>;

/// The process's fan-out hub: one bounded broadcast channel per tenant with subscribers, so an
/// event only wakes the subscribers of its own tenant. Its tail runs only while someone
/// subscribes: an API process that nobody follows reads nothing from the log.
#[derive(Debug, Clone)]
pub(crate) struct Hub {
    capacity: usize,
    /// A std mutex: held only for map and flag updates, never across an await.
    state: Arc<std::sync::Mutex<HubState>>,
    /// Wakes the tail when a subscriber arrives while it is stopped.
    wake: Arc<Notify>,
}

#[derive(Debug, Default)]
struct HubState {
    tenants: HashMap<Tenant, broadcast::Sender<Arc<LiveEvent>>>,
    /// Whether the tail is following the log.
    running: bool,
    /// While it is not: where it must start (one past the stream's end as the earliest waiting
    /// subscriber read it, so nothing falls between that subscriber's catch-up and the tail).
    start: Option<u64>,
}

impl HubState {
    fn receivers(&self) -> usize {
        self.tenants
            .values()
            .map(broadcast::Sender::receiver_count)
            .sum()
    }
}

/// How long the tail keeps following the log after its last subscriber left.
const TAIL_IDLE: Duration = Duration::from_secs(5);

impl Hub {
    /// A hub buffering `capacity` events per tenant for the slowest subscriber.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Default::default(),
            wake: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().expect("hub state poisoned")
    }

    fn receiver(&self, tenant: &Tenant) -> broadcast::Receiver<Arc<LiveEvent>> {
        let capacity = self.capacity;
        self.lock()
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    /// A subscriber has read the stream's end, `last`: the tail must deliver what comes after.
    fn needs_after(&self, last: u64) {
        let mut state = self.lock();
        if !state.running {
            state.start = Some(state.start.map_or(last + 1, |s| s.min(last + 1)));
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Whether anyone follows `tenant` here (when nobody does, its events are not even decoded).
    fn followed(&self, tenant: &str) -> bool {
        let Ok(tenant) = Tenant::parse(tenant) else {
            return false;
        };
        self.lock()
            .tenants
            .get(&tenant)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Hands an event to its tenant's subscribers, if any; forgets tenants nobody follows.
    fn publish(&self, ev: Arc<LiveEvent>) {
        let mut state = self.lock();
        if let Some(tx) = state.tenants.get(&ev.tenant) {
            if tx.send(ev.clone()).is_err() {
                state.tenants.remove(&ev.tenant);
            }
        }
    }

    /// Runs the tail until `shutdown`: it starts when a subscriber arrives, follows EVENTS into
    /// the broadcast (restarting after errors from the last event it saw), and stops once nobody
    /// has subscribed for a while.
    pub(crate) async fn run_tail(self, bus: Bus, shutdown: CancellationToken) {
        loop {
            let start = loop {
                {
                    let mut state = self.lock();
                    if let Some(start) = state.start.take() {
                        state.running = true;
                        break start;
                    }
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
            };
            let mut next = start;
            loop {
                match self.tail_once(&bus, &mut next, &shutdown).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "event tail interrupted; resuming");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Follows EVENTS from `next` until `shutdown` or until nobody has subscribed for
    /// [`TAIL_IDLE`] (then `Ok`, and the tail is marked stopped).
    async fn tail_once(
        &self,
        bus: &Bus,
        next: &mut u64,
        shutdown: &CancellationToken,
    ) -> bus::Result<()> {
        let stream = bus.events_stream().await?;
        let (mut messages, _) = bus::ordered::ordered(
            stream,
            bus.ns().all_events(),
            DeliverPolicy::ByStartSequence {
                start_sequence: *next,
            },
        )
        .await?;
        let mut idle_since: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let msg = tokio::select! {
                m = messages.next() => m,
                _ = check.tick() => {
                    // Stop once nobody has subscribed for a while. Decided under the lock, so a
                    // subscriber arriving now either keeps the tail running or finds it stopped
                    // and asks for it again.
                    let mut state = self.lock();
                    if state.receivers() > 0 {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= TAIL_IDLE {
                        state.running = false;
                        state.tenants.clear();
                        return Ok(());
                    }
                    continue;
                }
                _ = shutdown.cancelled() => return Ok(()),
            };
            let msg = msg.ok_or(bus::Error::Ended("the events tail"))??;
            let seq = msg.info().map_err(bus::Error::consumer)?.stream_sequence;
            *next = seq + 1;
            // The subject names the tenant: skip the decoding of events nobody here follows.
            let followed = events::subjects::parse_event_subject(bus.ns(), &msg.subject)
                .is_none_or(|(tenant, _, _)| self.followed(tenant));
            if !followed {
                continue;
            }
            if let Some(ev) = LiveEvent::from_message(seq, msg.headers.as_ref(), &msg.payload) {
                self.publish(Arc::new(ev));
            }
        }
    }

    /// A subscription: events after `after` (catch-up from the stream, then live), or only live
    /// ones when `after` is `None`. With `until_terminal`, it ends after the job's terminal event.
    /// A resume point beyond the log's end names nothing this server sent: refused.
    pub(crate) async fn subscribe(
        &self,
        bus: Bus,
        filter: Filter,
        after: Option<u64>,
        until_terminal: bool,
        stop: Stop,
    ) -> Result<impl Stream<Item = Item> + Send + 'static, SubscribeError> {
        // Subscribe before reading the stream's end, so nothing falls between the two: what is
        // beyond the end read here comes through the tail (which is asked to start if it is not
        // running).
        let rx = self.receiver(&filter.tenant);
        // Fetching the handle reads the stream's info: its end as of now.
        let stream = bus.events_stream().await?;
        let last = stream.cached_info().state.last_sequence;
        if let Some(after) = after.filter(|a| *a > last) {
            return Err(SubscribeError::BeyondEnd { after, last });
        }
        self.needs_after(last);
        // Live only: what came before does not concern this subscriber.
        let from = after.unwrap_or(last);
        let state = Sub {
            subject: filter.subject(&bus),
            filter,
            rx,
            last_sent: from,
            covered: from,
            catchup: after.map(|after| (stream, after + 1)),
            catchup_to: last,
            until_terminal,
            done: false,
            stop,
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        }))
    }
}

struct Sub {
    filter: Filter,
    subject: String,
    rx: broadcast::Receiver<Arc<LiveEvent>>,
    last_sent: u64,
    /// Every event up to here was either sent or did not match: where a client resumes.
    covered: u64,
    /// The stream and the next sequence to read while catching up.
    catchup: Option<(bus::jetstream::Stream, u64)>,
    catchup_to: u64,
    until_terminal: bool,
    done: bool,
    stop: Stop,
}

impl Sub {
    fn end(&mut self, reason: Ended) -> Item {
        self.done = true;
        Item::Resume {
            after: self.covered,
            reason,
        }
    }

    fn emit(&mut self, ev: Arc<LiveEvent>) -> Item {
        self.last_sent = ev.seq;
        self.covered = self.covered.max(ev.seq);
        if self.until_terminal && ev.terminal {
            self.done = true;
        }
        Item::Event(ev)
    }

    async fn next_item(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        while let Some((stream, from)) = self.catchup.as_mut() {
            if let Some(reason) = (&mut self.stop).now_or_never() {
                return Some(self.end(reason));
            }
            if *from > self.catchup_to {
                self.catchup = None;
                break;
            }
            match bus::next_message(stream, self.subject.clone(), *from).await {
                Ok(Some(msg)) if msg.sequence <= self.catchup_to => {
                    *from = msg.sequence + 1;
                    self.covered = self.covered.max(msg.sequence);
                    let ev =
                        LiveEvent::from_message(msg.sequence, Some(&msg.headers), &msg.payload);
                    if let Some(ev) = ev.filter(|ev| self.filter.matches(ev)) {
                        return Some(self.emit(Arc::new(ev)));
                    }
                }
                Ok(_) => self.catchup = None,
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up read failed; asking the client to resume");
                    return Some(self.end(Ended::ReadFailed));
                }
            }
        }
        loop {
            let received = tokio::select! {
                r = self.rx.recv() => r,
                reason = &mut self.stop => return Some(self.end(reason)),
            };
            match received {
                Ok(ev) if ev.seq > self.last_sent && self.filter.matches(&ev) => {
                    return Some(self.emit(ev));
                }
                Ok(ev) => {
                    // Not for this subscriber. Only move `covered` once past the catch-up
                    // range, where every earlier event has been looked at.
                    if ev.seq > self.catchup_to {
                        self.covered = self.covered.max(ev.seq);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(self.end(Ended::FellBehind));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, tenant: &str) -> Arc<LiveEvent> {
        Arc::new(LiveEvent {
            seq,
            tenant: Tenant::parse(tenant).unwrap(),
            job: JobId::new(),
            kind: "noop".into(),
            name: "submitted",
            terminal: false,
            json: "{}".into(),
        })
    }

    fn live_sub(hub: &Hub, tenant: &str) -> Sub {
        Sub {
            filter: Filter {
                tenant: Tenant::parse(tenant).unwrap(),
                types: Vec::new(),
                kind: None,
                job: None,
            },
            subject: String::new(),
            rx: hub.receiver(&Tenant::parse(tenant).unwrap()),
            last_sent: 0,
            covered: 0,
            catchup: None,
            catchup_to: 0,
            until_terminal: false,
            done: false,
            stop: Box::pin(futures::future::pending()),
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_where_to_resume_and_others_go_on() {
        let hub = Hub::new(4);
        let mut slow = live_sub(&hub, "acme");
        let mut fast = live_sub(&hub, "acme");
        hub.publish(event(1, "acme"));
        hub.publish(event(2, "globex"));
        for expected in [1] {
            match fast.next_item().await {
                Some(Item::Event(ev)) => assert_eq!(ev.seq, expected),
                other => panic!("{other:?}"),
            }
        }
        match slow.next_item().await {
            Some(Item::Event(ev)) => assert_eq!(ev.seq, 1),
            other => panic!("{other:?}"),
        }
        // The slow one stops reading; more events than the buffer holds go by.
        for seq in 3..=10 {
            hub.publish(event(seq, "acme"));
        }
        match slow.next_item().await {
            Some(Item::Resume { after, reason }) => {
                assert_eq!((after, reason), (1, Ended::FellBehind))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            slow.next_item().await.is_none(),
            "the stream ends after the resume hint"
        );
        // Sending never waited for it, and a subscriber that keeps up is unaffected.
        let mut keeping_up = live_sub(&hub, "acme");
        hub.publish(event(11, "acme"));
        match keeping_up.next_item().await {
            Some(Item::Event(ev)) => assert_eq!(ev.seq, 11),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stopped_subscription_says_where_to_resume() {
        let hub = Hub::new(16);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut sub = live_sub(&hub, "acme");
        sub.stop = Box::pin(async move {
            let _ = rx.await;
            Ended::ServerStopping
        });
        hub.publish(event(7, "acme"));
        assert!(matches!(sub.next_item().await, Some(Item::Event(ev)) if ev.seq == 7));
        tx.send(()).unwrap();
        match sub.next_item().await {
            Some(Item::Resume { after, reason }) => {
                assert_eq!((after, reason), (7, Ended::ServerStopping))
            }
            other => panic!("{other:?}"),
        }
        assert!(sub.next_item().await.is_none());
    }

    #[test]
    fn type_filters() {
        assert_eq!(
            Filter::parse_types("job.succeeded, dev.conveyor.job.failed,cancelled").unwrap(),
            ["succeeded", "failed", "cancelled"]
        );
        assert!(Filter::parse_types("job.exploded").is_err());
    }
}
