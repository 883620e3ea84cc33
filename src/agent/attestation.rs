//! Attestation sources: how the agent proves the workload's identity at
//! each exchange. A file is read afresh every time (the kubelet rotates a
//! projected token in place); a command is run every time (a CI OIDC
//! token, a cloud metadata fetch); an X.509-SVID is the client
//! certificate itself, handled by the broker client.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use super::config::AttestationSource;

/// Longest attestation accepted (the broker's own limit on subject tokens).
pub const MAX_ATTESTATION_BYTES: usize = crate::attest::jwt::MAX_TOKEN_BYTES;

/// What an exchange presents.
pub enum Presentation {
    /// A JWT sent as `subject_token`.
    SubjectToken(SecretString),
    /// The client certificate, over the mTLS listener.
    ClientCertificate,
}

/// Why no attestation could be had. Never holds the attestation itself.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("cannot read the attestation file {path}: {error}")]
    Read { path: String, error: String },
    #[error("the attestation {0} is empty")]
    Empty(String),
    #[error("the attestation {0} is larger than {MAX_ATTESTATION_BYTES} bytes")]
    TooLarge(String),
    #[error("the attestation {0} is not one token (it holds whitespace or non-ASCII characters)")]
    NotAToken(String),
    #[error("the attestation command {program} failed: {why}")]
    Command { program: String, why: String },
}

/// Obtains an attestation from `source`; a command may take `timeout`.
pub async fn obtain(source: &AttestationSource, timeout: Duration) -> Result<Presentation, AttestationError> {
    match source {
        AttestationSource::X509 => Ok(Presentation::ClientCertificate),
        AttestationSource::File(path) => read_file(path).await.map(Presentation::SubjectToken),
        AttestationSource::Command(argv) => run_command(argv, timeout).await.map(Presentation::SubjectToken),
    }
}

async fn read_file(path: &Path) -> Result<SecretString, AttestationError> {
    let what = path.display().to_string();
    let read_error = |e: std::io::Error| AttestationError::Read { path: what.clone(), error: e.to_string() };
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut bytes = Zeroizing::new(Vec::new());
    // One byte past the limit tells "too large" from "exactly the limit".
    let limit = u64::try_from(MAX_ATTESTATION_BYTES + 1).unwrap_or(u64::MAX);
    file.take(limit).read_to_end(&mut bytes).await.map_err(read_error)?;
    token_from(&bytes, &format!("file {what}"))
}

async fn run_command(argv: &[String], timeout: Duration) -> Result<SecretString, AttestationError> {
    let (program, args) = argv.split_first().map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    let failed = |why: String| AttestationError::Command { program: program.to_owned(), why };
    // Its standard error passes through to the agent's, for the operator;
    // its standard output is the secret and goes nowhere else.
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let mut stdout = child.stdout.take().ok_or_else(|| failed("no standard output".into()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    let limit = u64::try_from(MAX_ATTESTATION_BYTES + 1).unwrap_or(u64::MAX);
    let run = async {
        (&mut stdout).take(limit).read_to_end(&mut bytes).await?;
        child.wait().await
    };
    let status = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => return Err(failed(format!("no answer within {}", humantime::format_duration(timeout)))),
    };
    if !status.success() {
        return Err(failed(format!("it exited with {status}")));
    }
    token_from(&bytes, &format!("printed by {program}"))
}

/// The one token in `bytes`, surrounding whitespace removed.
fn token_from(bytes: &[u8], what: &str) -> Result<SecretString, AttestationError> {
    if bytes.len() > MAX_ATTESTATION_BYTES {
        return Err(AttestationError::TooLarge(what.to_owned()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| AttestationError::NotAToken(what.to_owned()))?.trim();
    if text.is_empty() {
        return Err(AttestationError::Empty(what.to_owned()));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AttestationError::NotAToken(what.to_owned()));
    }
    Ok(SecretString::from(text))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[tokio::test]
    async fn a_file_is_read_afresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = AttestationSource::File(path.clone());
        let timeout = Duration::from_secs(5);
        assert!(matches!(obtain(&source, timeout).await, Err(AttestationError::Read { .. })));
        std::fs::write(&path, "eyJ.first.token\n").unwrap();
        let Presentation::SubjectToken(first) = obtain(&source, timeout).await.unwrap() else { panic!() };
        assert_eq!(first.expose_secret(), "eyJ.first.token");
        std::fs::write(&path, "eyJ.second.token").unwrap();
        let Presentation::SubjectToken(second) = obtain(&source, timeout).await.unwrap() else { panic!() };
        assert_eq!(second.expose_secret(), "eyJ.second.token");
        for (contents, what) in [("", "empty"), ("a b", "two words"), ("\u{e9}", "non-ASCII")] {
            std::fs::write(&path, contents).unwrap();
            assert!(obtain(&source, timeout).await.is_err(), "{what}");
        }
        std::fs::write(&path, "a".repeat(MAX_ATTESTATION_BYTES + 1)).unwrap();
        assert!(matches!(obtain(&source, timeout).await, Err(AttestationError::TooLarge(_))));
    }

    #[tokio::test]
    async fn a_command_prints_the_token_and_failures_say_why_without_it() {
        let timeout = Duration::from_secs(5);
        let ok = AttestationSource::Command(vec!["/bin/sh".into(), "-c".into(), "echo eyJ.from.command".into()]);
        let Presentation::SubjectToken(token) = obtain(&ok, timeout).await.unwrap() else { panic!() };
        assert_eq!(token.expose_secret(), "eyJ.from.command");
        let failing = AttestationSource::Command(vec!["/bin/sh".into(), "-c".into(), "echo eyJ.secret; exit 3".into()]);
        let error = obtain(&failing, timeout).await.err().unwrap().to_string();
        assert!(error.contains("exit status: 3") && !error.contains("eyJ.secret"), "{error}");
        let slow = AttestationSource::Command(vec!["/bin/sleep".into(), "5".into()]);
        let error = obtain(&slow, Duration::from_millis(100)).await.err().unwrap().to_string();
        assert!(error.contains("no answer within"), "{error}");
        let missing = AttestationSource::Command(vec!["/nonexistent/program".into()]);
        assert!(obtain(&missing, timeout).await.is_err());
    }
}
