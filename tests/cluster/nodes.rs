//! A three-node JetStream cluster of the pinned nats-server, owned by one test: each node with
//! its own client, route and monitoring port and store folder, on loopback. Nodes can be killed
//! (SIGKILL) and started again with their store.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use tokio::process::{Child, Command};

use testkit::services::{free_port, nats_server_bin};

/// One node.
struct Node {
    name: String,
    client: u16,
    monitor: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three nats-servers forming the cluster `conveyor`.
pub(crate) struct NatsCluster {
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl NatsCluster {
    /// Starts three nodes with fresh stores and waits until JetStream is healthy on each (a meta
    /// leader elected). `sync_always`: every node fsyncs before acknowledging.
    pub(crate) async fn start(sync_always: bool) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).expect("cluster folder");
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, route, monitor)) in ports.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            let config = dir.join(format!("{name}.conf"));
            let sync = if sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     max_payload: 2MB\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n\
                     cluster {{\n  name: conveyor\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .expect("write node config");
            nodes.push(Node {
                log: dir.join(format!("{name}.log")),
                name,
                client,
                monitor,
                config,
                child: None,
            });
        }
        let mut cluster = Self {
            nodes,
            http: reqwest::Client::new(),
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} is running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        node.child = Some(child);
    }

    /// Waits until the node answers `/healthz` with JetStream current (up to 60 s).
    async fn wait_healthy(&self, i: usize) {
        let node = &self.nodes[i];
        let url = format!("http://127.0.0.1:{}/healthz", node.monitor);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(res) = self.http.get(&url).send().await {
                if res.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} did not become healthy; see {}",
                node.name,
                node.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `nats://` URL of every node, comma-separated (what `CONVEYOR_NATS_URL` takes).
    pub(crate) fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://` URL of one node.
    pub(crate) fn url(&self, name: &str) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[self.index(name)].client)
    }

    /// SIGKILL of one node.
    pub(crate) async fn kill(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts a killed node again with its store; returns once it is healthy (caught up).
    pub(crate) async fn restart(&mut self, name: &str) {
        let i = self.index(name);
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// JetStream through any node (the client fails over like conveyor's).
    pub(crate) async fn js(&self) -> jetstream::Context {
        let addrs = bus::server_addrs(&self.urls()).expect("server list");
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(addrs)
            .await
            .expect("connect to the cluster");
        jetstream::new(client)
    }

    /// The server name of the stream's Raft leader (`cluster.leader` of its info), once it has
    /// one that is not `not` (up to 30 s).
    pub(crate) async fn leader(&self, stream: &str, not: Option<&str>) -> String {
        let js = self.js().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = js.get_stream(stream).await {
                if let Ok(info) = s.info().await {
                    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        if !leader.is_empty() && Some(leader.as_str()) != not {
                            return leader;
                        }
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {stream} has no leader (other than {not:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replicas of a stream and how many of them are current (the leader included), once all
    /// are (or after 20 s).
    pub(crate) async fn replicas(&self, stream: &str) -> (usize, usize) {
        let js = self.js().await;
        let mut s = js.get_stream(stream).await.expect("stream");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let info = s.info().await.expect("stream info");
            let cluster = info.cluster.clone().expect("a clustered stream");
            let current = 1 + cluster.replicas.iter().filter(|r| r.current).count();
            let wanted = info.config.num_replicas;
            if current >= wanted || tokio::time::Instant::now() >= deadline {
                return (wanted, current);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
