//! The agent's local API under load: `GET /v1/credentials/{name}` over its
//! Unix socket (requests per second, latency percentiles, the agent's CPU
//! per request) and the agent's resident memory, idle and after the load.
//!
//! Run: `cargo bench --bench agent_api` (options after `--`):
//!
//! ```text
//! --duration SECS        length of each measured run (default 10)
//! --connections N,N,..   concurrent keep-alive connections per run (default 1,16,64)
//! ```
//!
//! It starts a real broker (`halflife serve` on the development
//! configuration, in a fresh directory), writes one dev attestation, and
//! starts a real `halflife agent` process holding one credential (a file
//! and the socket). The idle agent's memory is read from
//! `/proc/<pid>/status` after it has held the credential for a few seconds;
//! then each run drives its connections back to back with hyper's client,
//! one request in flight per connection. The generator shares the machine
//! with the agent (and the idle broker), as an application beside its
//! sidecar does.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on setup failure")]
#![expect(clippy::expect_used, reason = "a benchmark aborts on setup failure")]
#![expect(clippy::panic, reason = "a benchmark aborts on setup failure")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

const BIN: &str = env!("CARGO_BIN_EXE_halflife");

struct Args {
    duration: Duration,
    connections: Vec<usize>,
}

fn args() -> Args {
    let mut a = Args { duration: Duration::from_secs(10), connections: vec![1, 16, 64] };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--duration" => a.duration = Duration::from_secs_f64(value().parse().expect("--duration SECS")),
            "--connections" => {
                a.connections = value().split(',').map(|n| n.trim().parse().expect("--connections N,N")).collect();
            }
            other => panic!("unknown option {other}; see the comment at the top of benches/agent_api.rs"),
        }
    }
    a
}

/// Processes this benchmark started, stopped when it ends.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn halflife(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("HALFLIFE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("HALFLIFE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// User plus system CPU time of `pid`, in clock ticks (1/100 s here).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, path: &str) -> (u16, Bytes) {
    let request = hyper::Request::get(path).header("host", "agent").body(Empty::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

async fn connect(socket: &Path) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

struct Run {
    requests: usize,
    latencies_us: Vec<u32>,
    elapsed: Duration,
}

async fn drive(socket: PathBuf, connections: usize, duration: Duration) -> Run {
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let socket = socket.clone();
            tokio::spawn(async move {
                let mut sender = connect(&socket).await;
                let mut latencies = Vec::with_capacity(200_000);
                while Instant::now() < until {
                    let sent = Instant::now();
                    let (status, _) = get(&mut sender, "/v1/credentials/reports").await;
                    assert_eq!(status, 200);
                    latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
                latencies
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Run { requests: latencies_us.len(), latencies_us, elapsed }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let args = args();
    halflife::crypto::install();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::create_dir_all(root.join("data/credentials")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["halflife.toml", "dev-catalog.toml"] {
        std::fs::copy(repo.join("config").join(file), root.join("config").join(file)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut running = Running(Vec::new());
    running.0.push(
        halflife(root, port)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("server.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200) {
            assert!(Instant::now() < deadline, "the broker did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let out = halflife(root, port)
        .args(["dev", "token", "--subject", "spiffe://dev.local/ns/ai/sa/summarizer", "--out", "data/attestation.jwt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        root.join("agent.toml"),
        format!(
            "[agent]\nbroker_url = \"{base}\"\ncredentials_dir = \"data/credentials\"\nsocket = \"data/agent.sock\"\n\
             [agent.attestation]\nfile = \"data/attestation.jwt\"\n\
             [[agent.credentials]]\nname = \"reports\"\naudience = \"reports-api\"\nscope = \"reports:read\"\n\
             ttl = \"600s\"\nfile = \"reports.jwt\"\n"
        ),
    )
    .unwrap();
    let agent = halflife(root, port)
        .args(["--config", "agent.toml", "--log-format", "json", "agent"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = agent.id();
    running.0.push(agent);
    let socket = root.join("data/agent.sock");
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                let mut sender = connect(&socket).await;
                if get(&mut sender, "/v1/credentials/reports").await.0 == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the agent never held its credential: {}",
                std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Idle: the credential held, nothing asked of it.
    std::thread::sleep(Duration::from_secs(3));
    let idle = rss_kib(pid);
    println!("agent idle RSS: {:.1} MiB ({idle} KiB), one credential held", idle as f64 / 1024.0);

    // One warm-up second, then the runs.
    runtime.block_on(drive(socket.clone(), 4, Duration::from_secs(1)));
    println!("GET /v1/credentials/reports over the Unix socket, {} s per run:", args.duration.as_secs_f64());
    for connections in &args.connections {
        let before = cpu_ticks(pid);
        let run = runtime.block_on(drive(socket.clone(), *connections, args.duration));
        let ticks = cpu_ticks(pid) - before;
        let rate = run.requests as f64 / run.elapsed.as_secs_f64();
        println!(
            "  {connections:>3} connections: {rate:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  \
             agent CPU {:.1} µs/request",
            percentile(&run.latencies_us, 0.50),
            percentile(&run.latencies_us, 0.99),
            percentile(&run.latencies_us, 0.999),
            percentile(&run.latencies_us, 1.0),
            ticks as f64 * 10_000.0 / run.requests as f64,
        );
    }
    let after = rss_kib(pid);
    println!("agent RSS after the runs: {:.1} MiB ({after} KiB)", after as f64 / 1024.0);
    let log = std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
    let token = std::fs::read_to_string(root.join("data/credentials/reports.jwt")).unwrap();
    assert!(!log.contains(token.trim()), "the credential reached the agent's log");
}
