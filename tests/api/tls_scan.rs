//! The TLS listener as a scanner sees it: only TLS 1.2 and 1.3, only AEAD
//! suites (no CBC, no SHA-1 MAC). Uses Debian's `sslscan`, which `.ci/run`
//! installs; without it the test says so and passes nothing off as checked.

use crate::helpers::*;

/// What sslscan saw: `(protocol, enabled)` and accepted `(version, cipher)`.
type Scan = (Vec<(String, bool)>, Vec<(String, String)>);

/// Runs sslscan against the port and reads its XML.
fn scan(port: u16) -> Option<Scan> {
    let out = match std::process::Command::new("sslscan")
        .args(["--no-colour", "--no-heartbleed", "--xml=-", &format!("127.0.0.1:{port}")])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(std::env::var_os("HALFLIFE_REQUIRE_SSLSCAN").is_none(), "sslscan is required here: {e}");
            eprintln!("SKIPPED: sslscan is not installed ({e}); `apt-get install sslscan` to run this check");
            return None;
        }
    };
    assert!(out.status.success(), "sslscan failed: {}", String::from_utf8_lossy(&out.stderr));
    let xml = String::from_utf8(out.stdout).unwrap();
    let attr = |tag: &str, name: &str| {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_owned())
    };
    let mut protocols = Vec::new();
    let mut ciphers = Vec::new();
    for tag in xml.split('<').skip(1) {
        if tag.starts_with("protocol ") {
            let name = format!("{} {}", attr(tag, "type").unwrap(), attr(tag, "version").unwrap());
            protocols.push((name, attr(tag, "enabled").unwrap() == "1"));
        } else if tag.starts_with("cipher ") && attr(tag, "status").is_some_and(|s| s == "accepted" || s == "preferred")
        {
            ciphers.push((attr(tag, "sslversion").unwrap(), attr(tag, "cipher").unwrap()));
        }
    }
    Some((protocols, ciphers))
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_with_aead_suites_are_offered() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _cert) = tls_app(dir.path()).await;
    let port = app.local_addr().port();
    tokio::spawn(app.run(std::future::pending()));

    let scanned = tokio::task::spawn_blocking(move || scan(port)).await.unwrap();
    let Some((protocols, ciphers)) = scanned else { return };
    let enabled: Vec<&str> = protocols.iter().filter(|(_, on)| *on).map(|(p, _)| p.as_str()).collect();
    assert_eq!(enabled, ["tls 1.2", "tls 1.3"], "{protocols:?}");
    assert!(protocols.len() >= 5, "sslscan did not probe the old protocols: {protocols:?}");
    assert!(!ciphers.is_empty());
    let weak: Vec<&(String, String)> = ciphers
        .iter()
        .filter(|(_, c)| !(c.contains("GCM") || c.contains("CHACHA20")) || c.ends_with("-SHA") || c.contains("CBC"))
        .collect();
    let old_protocols = enabled.iter().filter(|p| !["tls 1.2", "tls 1.3"].contains(p)).count();
    scoreboard("tls", protocols.len() + ciphers.len(), weak.len() + old_protocols);
    println!("TLS protocols={protocols:?} accepted={ciphers:?}");
    assert!(weak.is_empty(), "weak suites accepted: {weak:?}");
}
