//! Operator tools over the EVENTS stream itself (not through the API): export to CloudEvents JSON
//! Lines and import from them.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bus::jetstream::DeliverPolicy;
use bus::Bus;
use chrono::{DateTime, Utc};
use events::{Envelope, JobEvent};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

/// Parses `10m`, `2h`, `7d`, `30s` (that long ago) or an RFC 3339 time.
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| {
        anyhow::anyhow!("`{s}` is neither a duration like 10m or 2h nor an RFC 3339 time")
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("`{s}`: use s, m, h or d, e.g. 10m"),
    };
    Ok(Utc::now() - chrono::Duration::seconds(secs))
}

/// The sequence of the first event stored at or after `time` (the stream's end + 1 if none).
pub async fn first_seq_since(bus: &Bus, time: DateTime<Utc>) -> anyhow::Result<u64> {
    let mut stream = bus.events_stream().await?;
    let last = stream.info().await?.state.last_sequence;
    let start = DeliverPolicy::ByStartTime {
        start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
            time.timestamp_nanos_opt().unwrap_or(0).into(),
        )?,
    };
    let (mut messages, pending) =
        bus::ordered::ordered(stream, bus.ns().all_events(), start).await?;
    if pending == 0 {
        return Ok(last + 1);
    }
    match messages.next().await {
        Some(Ok(msg)) => Ok(msg
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence),
        _ => Ok(last + 1),
    }
}

/// Where an export starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// The first event.
    All,
    /// This stream sequence.
    Seq(u64),
    /// The first event stored at or after this time.
    Time(DateTime<Utc>),
}

/// Writes the events from `start` up to the stream's end at call time (or `until`) as CloudEvents
/// JSON Lines, in stream order, in constant memory. Returns how many were written.
pub async fn export(
    bus: &Bus,
    start: Start,
    until: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut stream = bus.events_stream().await?;
    let last = stream.info().await?.state.last_sequence;
    let deliver_policy = match start {
        Start::All => DeliverPolicy::All,
        Start::Seq(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq,
        },
        Start::Time(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                t.timestamp_nanos_opt().unwrap_or(0).into(),
            )?,
        },
    };
    let (mut messages, pending) =
        bus::ordered::ordered(stream, bus.ns().all_events(), deliver_policy).await?;
    if last == 0 || pending == 0 {
        return Ok(0);
    }
    let (mut written, started, mut reported) = (0u64, Instant::now(), Instant::now());
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let published = info.published;
        if seq > last || until.is_some_and(|u| published.unix_timestamp() > u.timestamp()) {
            break;
        }
        // Binary-mode events are written in the structured form, like all others.
        if bus::decode::is_binary(msg.headers.as_ref()) {
            let ev = bus::decode_event(msg.headers.as_ref(), &msg.payload)
                .with_context(|| format!("event {seq} is not a conveyor CloudEvent"))?;
            out.write_all(&ev.to_json())?;
        } else {
            out.write_all(&msg.payload)?;
        }
        out.write_all(b"\n")?;
        written += 1;
        if reported.elapsed() > Duration::from_secs(2) {
            let rate = written as f64 / started.elapsed().as_secs_f64();
            eprintln!("exported {written} events ({rate:.0}/s), at sequence {seq} of {last}");
            reported = Instant::now();
        }
        if seq >= last || pending == 0 {
            break;
        }
    }
    out.flush()?;
    Ok(written)
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Events stored.
    pub stored: u64,
    /// Events the stream already had (same event id within its duplicate window).
    pub duplicates: u64,
}

/// Publishes every line of `input` (a CloudEvents JSON Lines export) to this namespace's EVENTS
/// stream, each with its CloudEvent id as `Nats-Msg-Id`, pipelined and in order.
pub async fn import(bus: &Bus, input: impl BufRead) -> anyhow::Result<Imported> {
    let mut result = Imported::default();
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = Envelope::<JobEvent>::from_json(line.as_bytes())
            .with_context(|| format!("line {}: not a conveyor CloudEvent", n + 1))?;
        // Sent here, in file order; only the acks are awaited out of order.
        let ack = bus
            .send(
                bus.ns().event_subject(&ev),
                line.into_bytes(),
                &ev.id.to_string(),
            )
            .await?;
        in_flight.push(std::future::IntoFuture::into_future(ack));
        // Bounded pipelining: a few hundred publishes awaiting their acks at most.
        while in_flight.len() >= 256 {
            count(&mut result, in_flight.next().await)?;
        }
        if (n + 1) % 50_000 == 0 {
            let rate = (n + 1) as f64 / started.elapsed().as_secs_f64();
            eprintln!("imported {} events ({rate:.0}/s)", n + 1);
        }
    }
    while let Some(r) = in_flight.next().await {
        count(&mut result, Some(r))?;
    }
    Ok(result)
}

fn count<E: std::error::Error + Send + Sync + 'static>(
    result: &mut Imported,
    ack: Option<Result<bus::jetstream::PublishAck, E>>,
) -> anyhow::Result<()> {
    if let Some(ack) = ack {
        if ack
            .context("an imported event was not acknowledged")?
            .duplicate
        {
            result.duplicates += 1;
        } else {
            result.stored += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = parse_time("10m").unwrap();
        assert!((Utc::now() - t).num_seconds() >= 599);
        assert!(parse_time("2026-11-23T10:00:00Z").is_ok());
        assert!(parse_time("soon").is_err());
        assert!(parse_time("10y").is_err());
    }
}

/// What `conveyor events tail --direct` prints.
#[derive(Debug, Default, Clone)]
pub struct TailFilter {
    /// Only this tenant (a narrower subject filter).
    pub tenant: Option<events::Tenant>,
    /// Only these short types (`succeeded`); empty for all.
    pub types: Vec<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this job.
    pub job: Option<String>,
}

/// Prints events straight from JetStream, in stream order, from `start` (default: the first
/// event, or only new ones with `follow`); without `follow`, stops at the stream's end as of now.
pub async fn tail(
    bus: &Bus,
    start: Option<Start>,
    follow: bool,
    filter: &TailFilter,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut stream = bus.events_stream().await?;
    let last = stream.info().await?.state.last_sequence;
    let deliver_policy = match start {
        Some(Start::Seq(seq)) => DeliverPolicy::ByStartSequence {
            start_sequence: seq,
        },
        Some(Start::Time(t)) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                t.timestamp_nanos_opt().unwrap_or(0).into(),
            )?,
        },
        Some(Start::All) | None if !follow => DeliverPolicy::All,
        _ => DeliverPolicy::New,
    };
    let subject = match &filter.tenant {
        Some(t) => bus.ns().tenant_events(t),
        None => bus.ns().all_events(),
    };
    let (mut messages, pending) = bus::ordered::ordered(stream, subject, deliver_policy).await?;
    if !follow && (last == 0 || pending == 0) {
        return Ok(());
    }
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if !follow && seq > last {
            break;
        }
        if let Ok(ev) = bus::decode_event(msg.headers.as_ref(), &msg.payload) {
            let keep = (filter.types.is_empty()
                || filter.types.iter().any(|t| t == ev.payload.name()))
                && filter.kind.as_deref().is_none_or(|k| k == ev.kind.as_str())
                && filter
                    .job
                    .as_deref()
                    .is_none_or(|j| j == ev.job.to_string());
            if keep {
                out.write_all(&ev.to_json())?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
        }
        if !follow && (seq >= last || pending == 0) {
            break;
        }
    }
    Ok(())
}
