//! The ordered reader of EVENTS (`bus::ordered`) that the projector, the API's live tail and the
//! log tools follow: it must outlive its consumer without skipping or repeating a message.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use futures::{Stream, StreamExt};

use crate::BUILD;
use testkit::publish_numbered;
use testkit::services::OwnNats;

/// The next `count` payloads, as numbers.
async fn read(
    reader: &mut (impl Stream<Item = bus::Result<async_nats::jetstream::Message>> + Unpin),
    count: usize,
) -> Vec<u32> {
    let mut got = Vec::new();
    while got.len() < count {
        let msg = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .unwrap_or_else(|_| panic!("the reader stalled after {got:?}"))
            .expect("the reader never ends")
            .expect("a message");
        got.push(std::str::from_utf8(&msg.payload).unwrap().parse().unwrap());
    }
    got
}

#[tokio::test]
async fn the_ordered_reader_outlives_its_consumer_and_a_server_restart_without_gap_or_repeat() {
    let mut nats = OwnNats::start(BUILD).await;
    let ns = events::Namespace::parse(&format!(
        "o{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap();
    let bus = bus::Bus::connect(&bus::BusSettings::new(&nats.url(), ns.clone(), "test"))
        .await
        .unwrap();
    bus.provision_streams().await.unwrap();
    publish_numbered(&bus, 1..=50).await;

    let stream = bus.events_stream().await.unwrap();
    let (mut reader, pending) = bus::ordered::ordered(stream, ns.all_events(), DeliverPolicy::All)
        .await
        .unwrap();
    assert_eq!(pending, 50, "the reader starts with every message pending");
    assert_eq!(read(&mut reader, 20).await, (1..=20).collect::<Vec<_>>());

    // 1. Its consumer is deleted under it: it carries on from message 21.
    let stream = bus.events_stream().await.unwrap();
    let names: Vec<String> = stream
        .consumers()
        .map(|c| c.unwrap())
        .filter(|c| std::future::ready(c.config.durable_name.is_none()))
        .map(|c| c.name)
        .collect()
        .await;
    assert_eq!(names.len(), 1, "one ephemeral consumer reads: {names:?}");
    stream.delete_consumer(&names[0]).await.unwrap();
    assert_eq!(read(&mut reader, 30).await, (21..=50).collect::<Vec<_>>());

    // 2. The server dies (and its in-memory consumer with it) and comes back; what is published
    // afterwards arrives, with nothing skipped or repeated.
    nats.kill().await;
    nats.restart().await;
    publish_numbered(&bus, 51..=80).await;
    assert_eq!(read(&mut reader, 30).await, (51..=80).collect::<Vec<_>>());
    let more = tokio::time::timeout(Duration::from_secs(3), reader.next()).await;
    assert!(more.is_err(), "nothing after 80: {more:?}");
}
