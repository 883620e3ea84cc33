//! `halflife agent`: the workload-side sidecar. It exchanges the
//! workload's attestation for the credentials its configuration names,
//! keeps them fresh, puts them where the workload reads them (files, a
//! local API, a child process's environment), holds their DPoP keys, and
//! removes each the moment it expires or the broker refuses it or reports
//! it inactive.
//!
//! It talks to the broker only through the broker's public HTTP interface
//! (`client`), so it can run anywhere a workload runs.

pub mod api;
pub mod attestation;
pub mod client;
pub mod config;
pub mod dpop;
pub mod exec;
mod keeper;
pub mod schedule;
pub mod sink;
pub mod state;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use client::BrokerClient;
use config::AgentSettings;
use state::{Metrics, Slot};

/// How long the agent waits for its tasks to notice a stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Everything the keepers, the local API and `exec` share.
pub struct Agent {
    pub settings: AgentSettings,
    pub broker: BrokerClient,
    pub slots: Vec<Arc<Slot>>,
    pub metrics: Metrics,
    /// Bumped at every change of any credential's state.
    pub changes: watch::Sender<u64>,
    /// Bumped at every credential issued: an `exec` child started before
    /// it is told (its first credentials all precede the child).
    pub renewals: watch::Sender<u64>,
}

impl Agent {
    pub fn new(settings: AgentSettings) -> anyhow::Result<Self> {
        let broker = BrokerClient::new(settings.broker.clone()).map_err(|e| anyhow::anyhow!(e))?;
        let mut slots = Vec::new();
        for spec in &settings.credentials {
            let key =
                if spec.dpop { Some(dpop::DpopKey::generate().context("cannot generate a DPoP key")?) } else { None };
            slots.push(Arc::new(Slot::new(spec.clone(), key)));
        }
        let names: Vec<&str> = settings.credentials.iter().map(|c| c.name.as_str()).collect();
        let metrics = Metrics::new(&names);
        Ok(Self { settings, broker, slots, metrics, changes: watch::Sender::new(0), renewals: watch::Sender::new(0) })
    }

    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn renewed(&self) {
        self.renewals.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Deletes every credential file.
    fn remove_files(&self) {
        for spec in &self.settings.credentials {
            if let Some(file) = &spec.file
                && let Err(e) = sink::remove(&file.path)
            {
                tracing::error!(credential = %spec.name, file = %file.path.display(), error = %e, "could not delete the credential file");
            }
        }
    }
}

/// How the agent runs.
pub enum Mode {
    /// Until SIGTERM or Ctrl-C.
    Daemon,
    /// Until the command exits; its exit code is the agent's.
    Exec(Vec<String>),
}

/// Runs the agent; returns the exit code.
pub async fn run(settings: AgentSettings, mode: Mode) -> anyhow::Result<u8> {
    let agent = Arc::new(Agent::new(settings)?);
    // A file left by an earlier run is no credential this run vouches
    // for: it may have been revoked meanwhile.
    agent.remove_files();
    let listeners = api::bind(&agent.settings.api).await?;
    let socket = listeners.socket_path().map(Path::to_path_buf);
    tracing::info!(
        broker = %agent.settings.broker.url,
        credentials = agent.slots.len(),
        socket = %socket.as_ref().map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
        listen = %listeners.tcp_addr().map_or_else(|| "-".to_owned(), |a| a.to_string()),
        "halflife agent is starting"
    );
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for slot in &agent.slots {
        tasks.push(tokio::spawn(keeper::keep(Arc::clone(&agent), Arc::clone(slot), stopped.clone())));
    }
    tasks.push(tokio::spawn(api::serve(Arc::clone(&agent), listeners, stopped.clone())));

    let outcome = match mode {
        Mode::Daemon => {
            stop_signal().await;
            Ok(0)
        }
        // A command that cannot be started stops the agent too, after the
        // same cleanup.
        Mode::Exec(argv) => exec::run(Arc::clone(&agent), &argv).await,
    };

    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(STOP_GRACE, task).await;
    }
    // Nothing keeps the credentials fresh or checked any more: they go.
    agent.remove_files();
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("halflife agent stopped; its credential files are removed");
    outcome
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("stop requested");
}

/// `halflife agent health`: asks the running agent's `/healthz` over its
/// socket; Ok when every credential is held.
pub async fn health(settings: &AgentSettings) -> anyhow::Result<String> {
    let socket =
        settings.api.socket.as_ref().context("agent.socket is not set: the agent serves no local API to ask")?;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("no agent answers on {}", socket.display()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.context("local API")?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/healthz")
        .header(hyper::header::HOST, "agent")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .context("building the request")?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .context("the agent did not answer within 5s")?
        .context("local API")?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(response.into_body(), 64 * 1024))
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        anyhow::bail!("not healthy ({status}): {text}");
    }
    Ok(text)
}
