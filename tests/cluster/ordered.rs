//! The ordered reader of EVENTS (`bus::ordered`, what the projector and the live tail follow)
//! when the node leading the stream dies: its consumer (R1, on the leader) dies too, without a
//! word to the client, and the reader must notice and go on from the next message.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;

use crate::nodes::NatsCluster;
use testkit::publish_numbered;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordered_reader_follows_events_across_the_loss_of_the_stream_leader() {
    let mut cluster = NatsCluster::start(false).await;
    let ns = events::Namespace::parse(&format!(
        "o{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap();
    let mut settings = bus::BusSettings::new(&cluster.urls(), ns.clone(), "test");
    settings.replicas = 3;
    let bus = bus::Bus::connect(&settings).await.unwrap();
    bus.provision_streams().await.unwrap();
    publish_numbered(&bus, 1..=10).await;
    let stream = bus.events_stream().await.unwrap();
    let (mut reader, _) = bus::ordered::ordered(stream, ns.all_events(), DeliverPolicy::All)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut read = async |until: u32| {
        while got.last().is_none_or(|n| *n < until) {
            let msg = tokio::time::timeout(Duration::from_secs(60), reader.next())
                .await
                .unwrap_or_else(|_| panic!("the reader stalled after {got:?}"))
                .expect("the reader never ends")
                .expect("a message");
            got.push(
                std::str::from_utf8(&msg.payload)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
    };
    read(10).await;

    let leader = cluster.leader(&ns.events_stream(), None).await;
    let killed = Instant::now();
    cluster.kill(&leader).await;
    publish_numbered(&bus, 11..=20).await;
    read(20).await;
    eprintln!(
        "leader {leader} killed: the reader had every later message {:?} after",
        killed.elapsed()
    );
    assert_eq!(got, (1..=20).collect::<Vec<_>>(), "no gap, no repeat");
}
