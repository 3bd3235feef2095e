//! What the scheduler needs of JetStream: a fresh hold on every waiting run command, how many
//! released commands of a kind no worker has taken yet, the released commands still in the
//! stream (the attempts under way, when a scheduler takes over), and releasing a command.

use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::ErrorCode;
use events::{streams, Command, Envelope, JobId, JobKind};
use futures::TryStreamExt;

use crate::publish::PendingAck;
use crate::{Bus, Error, Result};

/// Where the released run commands of a kind stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Released and not yet taken by a worker.
    pub waiting: u64,
    /// Deliveries to workers so far (a counter: its growth is the rate workers take them).
    pub taken: u64,
}

impl Bus {
    /// The scheduler's consumer of waiting run commands, made anew: every command still waiting
    /// is delivered to this caller at once, whatever an earlier active scheduler held.
    pub async fn fresh_scheduler_consumer(&self) -> Result<Consumer<pull::Config>> {
        let spec = streams::scheduler_consumer(&self.ns);
        let stream = self.commands_stream().await?;
        if let Err(e) = stream.delete_consumer(&spec.durable).await {
            let failure = crate::error::Failure::from(e);
            if failure.api_code() != Some(ErrorCode::CONSUMER_NOT_FOUND.0) {
                return Err(Error::Consumer(failure));
            }
        }
        self.ensure_consumer(&spec).await?;
        self.pull_consumer(&spec).await
    }

    /// Whether the scheduler's consumer is still `mine` (a scheduler that took over since has
    /// made its own): what fences off a scheduler that lost its leadership without noticing yet.
    pub async fn holds_scheduler_consumer(&self, mine: &Consumer<pull::Config>) -> Result<bool> {
        let stream = self.commands_stream().await?;
        match stream.consumer_info(streams::SCHEDULER_CONSUMER).await {
            Ok(info) => Ok(info.created == mine.cached_info().created),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::consumer(e)),
        }
    }

    /// How the workers of `kind` take its released run commands; `None` while no worker has made
    /// the kind's consumer (nothing would take them).
    pub async fn released_flow(&self, kind: &JobKind) -> Result<Option<Flow>> {
        let durable = format!("worker-{}", kind.token());
        let stream = self.commands_stream().await?;
        match stream.consumer_info(&durable).await {
            Ok(info) => Ok(Some(Flow {
                waiting: info.num_pending,
                taken: info.delivered.consumer_sequence,
            })),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
            Err(e) => {
                let failure = crate::error::Failure::from(e);
                if failure.api_code() == Some(ErrorCode::CONSUMER_NOT_FOUND.0) {
                    Ok(None)
                } else {
                    Err(Error::Consumer(failure))
                }
            }
        }
    }

    /// The released run commands still in the stream: the attempts waiting for a worker or under
    /// way (a command is removed when its attempt's outcome is stored).
    pub async fn released_commands(&self) -> Result<Vec<Envelope<Command>>> {
        let stream = self.commands_stream().await?;
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(self.ns.released_commands())
            .await
            .map_err(Error::stream)?
            .try_collect()
            .await
            .map_err(Error::stream)?;
        let mut commands = Vec::with_capacity(subjects.len());
        for (subject, _) in subjects {
            if let Some(msg) = crate::last_message(&stream, subject).await? {
                if let Ok(cmd) = crate::decode_command(Some(&msg.headers), &msg.payload) {
                    commands.push(cmd);
                }
            }
        }
        Ok(commands)
    }

    /// Releases a waiting run command to the workers of its kind (`msg_id`: the release's own,
    /// so a repeated release is stored once). Returns the ack's future, to pipeline releases.
    pub async fn release(
        &self,
        kind: &JobKind,
        job: JobId,
        body: Vec<u8>,
        msg_id: &str,
    ) -> Result<PendingAck> {
        self.send(self.ns.run_command_of(kind, job), body, msg_id)
            .await
    }
}

/// How long ago `msg` was stored in its stream.
pub fn age(msg: &async_nats::jetstream::Message) -> Option<std::time::Duration> {
    let published = msg.info().ok()?.published;
    let age = time::OffsetDateTime::now_utc() - published;
    age.try_into().ok()
}

impl Bus {
    /// Whether the log shows attempt `attempt` (or a later one) of `job` started.
    pub async fn attempt_begun(
        &self,
        events: &async_nats::jetstream::stream::Stream,
        tenant: &events::Tenant,
        job: JobId,
        attempt: u32,
    ) -> Result<bool> {
        let subject = self.ns.job_event(tenant, job, "started");
        let Some(msg) = crate::last_message(events, subject).await? else {
            return Ok(false);
        };
        Ok(matches!(
            crate::decode_event(Some(&msg.headers), &msg.payload).map(|e| e.payload),
            Ok(events::JobEvent::Started(s)) if s.attempt >= attempt
        ))
    }
}
