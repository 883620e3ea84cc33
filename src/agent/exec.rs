//! `halflife agent exec -- <command…>`: the agent runs the command once
//! every credential is held, with the credentials' file paths (never their
//! values) in its environment; forwards the signals it gets to it; signals
//! it after each renewal if configured; and exits with its status.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use anyhow::Context;
use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};

use super::Agent;
use super::config::{AgentSettings, ChildSignal};

/// Signals passed on to the child.
const FORWARDED: [(SignalKind, Signal); 6] = [
    (SignalKind::terminate(), Signal::TERM),
    (SignalKind::interrupt(), Signal::INT),
    (SignalKind::hangup(), Signal::HUP),
    (SignalKind::quit(), Signal::QUIT),
    (SignalKind::user_defined1(), Signal::USR1),
    (SignalKind::user_defined2(), Signal::USR2),
];

fn to_signal(signal: ChildSignal) -> Signal {
    match signal {
        ChildSignal::Hup => Signal::HUP,
        ChildSignal::Int => Signal::INT,
        ChildSignal::Quit => Signal::QUIT,
        ChildSignal::Usr1 => Signal::USR1,
        ChildSignal::Usr2 => Signal::USR2,
        ChildSignal::Term => Signal::TERM,
        ChildSignal::Winch => Signal::WINCH,
        ChildSignal::Alrm => Signal::ALARM,
    }
}

/// The environment variable holding credential `name`'s file path:
/// `HALFLIFE_CREDENTIAL_<NAME>_FILE`, the name in upper case with `-` as
/// `_`.
pub fn file_variable(name: &str) -> String {
    format!("HALFLIFE_CREDENTIAL_{}_FILE", name.to_ascii_uppercase().replace('-', "_"))
}

/// What the child finds in its environment: where the credentials are,
/// never what they are.
pub fn child_environment(settings: &AgentSettings) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(dir) = &settings.credentials_dir {
        env.insert("HALFLIFE_CREDENTIALS_DIR".to_owned(), dir.display().to_string());
    }
    for spec in &settings.credentials {
        if let Some(file) = &spec.file {
            env.insert(file_variable(&spec.name), file.path.display().to_string());
        }
    }
    if let Some(socket) = &settings.api.socket {
        env.insert("HALFLIFE_AGENT_SOCKET".to_owned(), socket.display().to_string());
    }
    env
}

/// The shell's convention: the exit code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Waits for every credential, runs `argv`, and returns its exit code.
pub async fn run(agent: Arc<Agent>, argv: &[String]) -> anyhow::Result<u8> {
    // Listening starts before the command does, so no signal is missed.
    let (tx, mut signals) = tokio::sync::mpsc::unbounded_channel::<Signal>();
    for (kind, forward) in FORWARDED {
        let mut stream = signal(kind).context("cannot listen for signals")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(forward).is_err() {
                    break;
                }
            }
        });
    }
    let (program, args) = argv.split_first().context("exec needs a command after --")?;

    // Every credential first: the command starts with what it needs.
    let mut changes = agent.changes.subscribe();
    while !agent.slots.iter().all(|s| s.held().is_some()) {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { anyhow::bail!("the agent stopped") },
            Some(received) = signals.recv() => {
                tracing::info!("stopped by a signal before the command started");
                return Ok(u8::try_from(128 + received.as_raw()).unwrap_or(1));
            }
        }
    }

    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(child_environment(&agent.settings))
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw);
    tracing::info!(command = %program, pid = ?child.id(), "command started");
    let send = |signal: Signal| {
        if let Some(pid) = pid
            && let Err(e) = kill_process(pid, signal)
        {
            tracing::warn!(error = %e, "could not signal the command");
        }
    };
    let mut renewals = agent.renewals.subscribe();
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for the command")?;
                tracing::info!(%status, "command exited");
                return Ok(exit_code(status));
            }
            Some(received) = signals.recv() => {
                tracing::debug!(signal = received.as_raw(), "passing a signal to the command");
                send(received);
            }
            Ok(()) = renewals.changed() => {
                if let Some(signal) = agent.settings.renewal_signal {
                    tracing::debug!(signal = signal.name(), "signalling the command after a renewal");
                    send(to_signal(signal));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_name_files_and_statuses_follow_the_shell() {
        assert_eq!(file_variable("reports-db"), "HALFLIFE_CREDENTIAL_REPORTS_DB_FILE");
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
    }
}
