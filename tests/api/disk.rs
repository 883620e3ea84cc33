//! SQLite on a disk that fills up: exchanges answer 503 with no credential
//! while writes fail, every 200 has its record, and service resumes by
//! itself when space comes back. The disk is a small
//! tmpfs the test mounts (it needs the right to mount; without it the test
//! says so and checks nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::helpers::*;

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the disk-fault test did not run");
            return None;
        }
        Some(Self { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the disk with a file, to the last byte it takes.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.flush();
    path
}

/// Runs exchanges; returns (status, body) of each.
async fn burst(app: &TestApp, n: usize) -> Vec<(u16, Value)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let response = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
        let status = response.status().as_u16();
        out.push((status, response.json().await.unwrap_or(Value::Null)));
    }
    out
}

#[tokio::test]
async fn a_full_disk_means_503_then_recovery() {
    if postgres() {
        return; // a SQLite matter; PostgreSQL outages are in replicas.rs
    }
    let Some(disk) = SmallDisk::mount("3m") else { return };
    let options = Options {
        busy_timeout: "300ms",
        sqlite_path: Some(disk.path.join("halflife.db")),
        extra_config: "[rate_limits]\nper_workload_per_minute = 0\n".into(),
        ..Options::default()
    };
    let Some(app) = spawn_with(options).await else { return };
    let mut all = burst(&app, 5).await;
    assert!(all.iter().all(|(s, _)| *s == 200));

    // Full: keep asking until the database cannot grow (at most a few
    // hundred exchanges once the filler has taken the free space).
    let filler = fill(&disk.path);
    let mut full = Vec::new();
    for _ in 0..40 {
        full.extend(burst(&app, 25).await);
        if full.iter().filter(|(s, _)| *s == 503).count() >= 5 {
            break;
        }
    }
    let refused_full = full.iter().filter(|(s, _)| *s == 503).count();
    assert!(refused_full >= 5, "a full disk never refused: {:?}", full.iter().map(|(s, _)| s).collect::<Vec<_>>());
    all.extend(full);
    std::fs::remove_file(&filler).unwrap();
    let after_full = burst(&app, 5).await;
    assert!(after_full.iter().all(|(s, _)| *s == 200), "no recovery after space came back: {after_full:?}");
    all.extend(after_full);

    // Only 200 or 503; every 503 without a token; every 200 recorded.
    let issued_events: Vec<String> = app.events("credential.issued").await.into_iter().filter_map(|e| e.jti).collect();
    let mut without_record = 0;
    for (status, body) in &all {
        match status {
            200 => {
                let jti = parts(body["access_token"].as_str().unwrap()).1["jti"].as_str().unwrap().to_owned();
                without_record += usize::from(!issued_events.contains(&jti));
            }
            503 => assert!(body.get("access_token").is_none() && body["error"] == "temporarily_unavailable"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    let check: String = match app.raw().await {
        RawDb::Sqlite(mut c) => sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut c).await.unwrap(),
        RawDb::Postgres(_) => unreachable!(),
    };
    assert_eq!(check, "ok");
    let report = app.broker.verify_audit(None, None).await.unwrap();
    assert!(report.ok, "{:?}", report.first_problem);
    println!("DISK full_refused={refused_full} without_record={without_record}");
    scoreboard("outage", refused_full, without_record);
    assert_eq!(without_record, 0);
}
