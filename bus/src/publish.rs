//! Publishing CloudEvents: structured content mode, `Nats-Msg-Id` set so that a retried publish
//! is stored once, and JetStream's ack awaited (or handed back for pipelining).

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use events::{Command, Envelope, JobEvent};

use crate::error::Failure;
use crate::{Bus, Error, Result};

impl Bus {
    /// Publishes a domain event and waits for JetStream's ack. Returns the ack (its `sequence`
    /// is the event's stream sequence; `duplicate` is set when `msg_id` was already stored).
    pub async fn publish_event(&self, ev: &Envelope<JobEvent>, msg_id: &str) -> Result<PublishAck> {
        self.publish_event_with(ev, msg_id, None).await
    }

    /// [`Bus::publish_event`] with a NATS header besides the usual ones.
    pub async fn publish_event_with(
        &self,
        ev: &Envelope<JobEvent>,
        msg_id: &str,
        header: Option<(&str, &str)>,
    ) -> Result<PublishAck> {
        let subject = self.ns.event_subject(ev);
        self.publish_to("events", subject, ev.to_json(), msg_id, header)
            .await
    }

    /// Publishes a command and waits for JetStream's ack.
    pub async fn publish_command(
        &self,
        cmd: &Envelope<Command>,
        msg_id: &str,
    ) -> Result<PublishAck> {
        let subject = self.ns.command_subject(cmd);
        self.publish_to("commands", subject, cmd.to_json(), msg_id, None)
            .await
    }

    /// Publishes to `stream` (the metric's label) and waits for JetStream's ack, timing it.
    async fn publish_to(
        &self,
        stream: &'static str,
        subject: String,
        payload: Vec<u8>,
        msg_id: &str,
        header: Option<(&str, &str)>,
    ) -> Result<PublishAck> {
        let started = std::time::Instant::now();
        let pending = self
            .send_with(subject.clone(), payload, msg_id, header)
            .await?;
        let result = pending.await;
        metrics::histogram!("conveyor_publish_duration_seconds", "stream" => stream)
            .record(started.elapsed().as_secs_f64());
        acked(subject, result)
    }

    /// Sends a publish and returns the future of its ack, so a caller can pipeline publishes
    /// (sent in order) and await the acks together ([`PendingAck`] is a future).
    pub async fn send(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: &str,
    ) -> Result<PendingAck> {
        let ack = self
            .send_with(subject.clone(), payload, msg_id, None)
            .await?;
        Ok(PendingAck { subject, ack })
    }

    async fn send_with(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: &str,
        header: Option<(&str, &str)>,
    ) -> Result<PublishAckFuture> {
        if self.fail_fast && !self.is_connected() {
            return Err(Error::Disconnected);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        headers.insert("Content-Type", events::envelope::STRUCTURED_CONTENT_TYPE);
        if let Some((name, value)) = header {
            headers.insert(name, value);
        }
        self.js
            .send_publish(
                subject.clone(),
                PublishMessage::build()
                    .payload(Bytes::from(payload))
                    .headers(headers),
            )
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxAckPending => Error::Busy,
                _ => Error::Publish {
                    subject,
                    source: e.into(),
                    full: false,
                },
            })
    }
}

/// A sent publish whose ack has not been awaited yet (see [`Bus::send`]).
#[derive(Debug)]
pub struct PendingAck {
    subject: String,
    ack: PublishAckFuture,
}

impl std::future::IntoFuture for PendingAck {
    type Output = Result<PublishAck>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { acked(self.subject, self.ack.await) })
    }
}

fn acked(
    subject: String,
    result: std::result::Result<PublishAck, PublishError>,
) -> Result<PublishAck> {
    result.map_err(|e| {
        let source = Failure::from(e);
        // "maximum messages exceeded" on a DiscardNew stream.
        let full = source.api_code() == Some(ErrorCode::STREAM_STORE_FAILED.0);
        Error::Publish {
            subject,
            source,
            full,
        }
    })
}
