//! The signed-in person's session, kept on disk between commands.
//!
//! `halflife login` stores it in `$HALFLIFE_CONFIG_DIR/session.json`, else
//! `$XDG_CONFIG_HOME/halflife/session.json`, else
//! `~/.config/halflife/session.json`. The file holds a bearer token, so it is
//! created with mode 0600 (its directory 0700) and replaced atomically: no
//! moment exists where another user could read it, or where a crash leaves
//! half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A stored session: which server it is for, its bearer token, and whom it
/// names.
#[derive(Debug, Deserialize)]
pub struct Session {
    /// Base URL of the server that issued it (the only one it is sent to).
    pub server: String,
    pub token: SecretString,
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub person: Person,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Person {
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Session {
    /// The session's expiry as RFC 3339, for messages.
    pub fn expiry(&self) -> String {
        self.expires_at.format(&Rfc3339).unwrap_or_else(|_| self.expires_at.to_string())
    }

    /// Everything but the token, for `--json` output.
    pub fn public(&self) -> Value {
        json!({"server": self.server, "id": self.id, "expires_at": self.expiry(), "person": self.person})
    }
}

/// Where the session lives, from the environment as the module header says.
pub fn path() -> anyhow::Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty("HALFLIFE_CONFIG_DIR") {
        return Ok(dir.join("session.json"));
    }
    if let Some(dir) = non_empty("XDG_CONFIG_HOME") {
        return Ok(dir.join("halflife").join("session.json"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(home.join(".config").join("halflife").join("session.json"));
    }
    bail!("cannot tell where to keep the session: set HALFLIFE_CONFIG_DIR, XDG_CONFIG_HOME or HOME")
}

/// The stored session, if there is one.
pub fn load() -> anyhow::Result<Option<Session>> {
    let path = path()?;
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    // serde_json's messages quote no input values for a struct like this
    // one's, but say only where the problem is anyway: the file holds a token.
    let session: Session = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a halflife session (line {}, column {}); run halflife login",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    Ok(Some(session))
}

/// Stores `session`, replacing any earlier one; returns the file's path.
pub fn save(session: &Session) -> anyhow::Result<PathBuf> {
    let path = path()?;
    let dir = path.parent().context("the session path has no directory")?;
    create_private_dir(dir)?;
    let mut body = json!({
        "server": session.server,
        "token": session.token.expose_secret(),
        "id": session.id,
        "expires_at": session.expiry(),
        "person": session.person,
    })
    .to_string()
    .into_bytes();
    body.push(b'\n');

    let nonce =
        crate::crypto::b64url(crate::crypto::random_bytes::<9>().map_err(|_| anyhow::anyhow!("no randomness"))?);
    let temporary = dir.join(format!(".session.json.{nonce}.tmp"));
    let written = write_private(&temporary, &body);
    let renamed = written.and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e).with_context(|| format!("failed to write {}", path.display()));
    }
    Ok(path)
}

/// Deletes the stored session; false if there was none.
pub fn delete() -> anyhow::Result<bool> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("failed to delete {}", path.display())),
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("failed to create {}", dir.display()))
}

/// Writes a new file readable by its owner only from the moment it exists.
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(body)?;
    file.sync_all()
}
