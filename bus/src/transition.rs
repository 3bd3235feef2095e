//! Publishing a step of a job's lifecycle ([`events::lifecycle::Transition`]) in the one safe
//! order: each event stored (acknowledged by JetStream) before the next, and the command only
//! after all of them. A job's next step therefore never runs before the fact that queued it is in
//! the log, and a step interrupted half-way is completed by running it again: every message
//! carries its deterministic id, so what was stored the first time is not stored twice.

use async_nats::jetstream::publish::PublishAck;
use events::lifecycle::Transition;
use events::{streams, Envelope, JobId, JobKind, Payload, Tenant, TraceParent};

use crate::{Bus, Result};

/// What the envelopes of a job's transition carry besides their payload.
#[derive(Debug, Clone)]
pub struct JobEnvelope {
    /// CloudEvents `source` of the publishing role.
    pub source: &'static str,
    /// The job.
    pub job: JobId,
    /// Its tenant.
    pub tenant: Tenant,
    /// Its kind.
    pub kind: JobKind,
    /// The trace the step continues.
    pub trace: Option<TraceParent>,
}

impl JobEnvelope {
    /// What `source` publishes about the job of `envelope`, in its trace.
    pub fn of<P: Payload>(source: &'static str, envelope: &Envelope<P>) -> Self {
        Self {
            source,
            job: envelope.job,
            tenant: envelope.tenant.clone(),
            kind: envelope.kind.clone(),
            trace: envelope.traceparent.clone(),
        }
    }

    /// An envelope of the job carrying `payload`.
    pub fn wrap<P: Payload>(&self, payload: P) -> Envelope<P> {
        Envelope::new(
            self.source,
            self.job,
            self.tenant.clone(),
            self.kind.clone(),
            payload,
        )
        .with_trace(self.trace.clone())
    }
}

impl Bus {
    /// Publishes `transition`'s events in order, then its command, awaiting each ack before the
    /// next publish. Returns the events' acks, in order. A terminal event carries the
    /// [`streams::WEBHOOK_HEADER`] when the transition knows whether the job has a webhook.
    pub async fn publish_transition(
        &self,
        to: &JobEnvelope,
        transition: Transition,
    ) -> Result<Vec<PublishAck>> {
        let mut acks = Vec::with_capacity(transition.events.len());
        for event in transition.events {
            let webhook = transition
                .webhook
                .filter(|_| event.payload.is_terminal())
                .map(|w| (streams::WEBHOOK_HEADER, if w { "1" } else { "0" }));
            let mut envelope = to.wrap(event.payload);
            envelope.time = transition.at;
            let ack = self
                .publish_event_with(&envelope, &event.msg_id, webhook)
                .await?;
            acks.push(ack);
        }
        if let Some(command) = transition.command {
            self.publish_command(&to.wrap(command.payload), &command.msg_id)
                .await?;
        }
        Ok(acks)
    }
}
