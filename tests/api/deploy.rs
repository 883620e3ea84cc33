//! deploy/ kept honest without a container engine or a cluster: every
//! command line in the Dockerfile, the systemd unit and the Kubernetes
//! manifests must be accepted by the binary, every file they copy must
//! exist, the configuration they carry must be valid, and the manifests
//! must hang together (selectors, probes, volumes, the workload's token
//! audience and the grant that names it).

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::helpers::repo_root;

const BIN: &str = env!("CARGO_BIN_EXE_halflife");
const INSTALLED: &str = "/usr/local/bin/halflife";

/// The binary accepts these arguments: clap checks every subcommand and
/// flag before `--help` prints and exits 0.
fn assert_accepted(args: &[String], context: &str) {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{context}: `halflife {}` is refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A JSON-array instruction (`["a", "b"]`) as its words.
fn json_words(text: &str) -> Vec<String> {
    serde_json::from_str(text.trim()).expect("a JSON array")
}

#[test]
fn the_dockerfile_uses_only_what_exists() {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile")).unwrap();
    // Instructions, continuation lines joined, comments dropped.
    let joined =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (op, rest) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (op.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let of = |op: &str| instructions.iter().filter(|(o, _)| o == op).map(|(_, r)| r.as_str()).collect::<Vec<_>>();

    assert!(of("FROM").len() >= 2, "multi-stage build expected");
    let user = of("USER");
    let user = user.last().expect("the runtime image sets USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "runs as root: {user}");
    for copy in of("COPY") {
        if copy.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = copy.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        for source in &words[..words.len() - 1] {
            assert!(repo_root().join(source).exists(), "COPY source {source} does not exist");
        }
    }

    let entrypoint = json_words(of("ENTRYPOINT").last().unwrap());
    let cmd = json_words(of("CMD").last().unwrap());
    assert_eq!(entrypoint[0], INSTALLED);
    let mut serve: Vec<String> = entrypoint[1..].to_vec();
    serve.extend(cmd);
    assert_accepted(&serve, "ENTRYPOINT + CMD");

    let healthcheck = of("HEALTHCHECK");
    let healthcheck = healthcheck.last().expect("a HEALTHCHECK");
    let command = json_words(healthcheck.split_once("CMD").unwrap().1);
    assert_eq!(command[0], INSTALLED);
    assert_accepted(&command[1..], "HEALTHCHECK");

    // Every HALFLIFE_* variable is a configuration key the binary knows,
    // applied on top of the config file the image ships.
    let env: Vec<(String, String)> = of("ENV")
        .iter()
        .flat_map(|e| e.split_whitespace().map(|kv| kv.split_once('=').unwrap()).map(|(k, v)| (k.into(), v.into())))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "HALFLIFE_SERVER__LISTEN"));
    let out = Command::new(BIN)
        .args(["--config", "config/halflife.example.toml", "config", "check"])
        .current_dir(repo_root())
        .envs(env)
        .output()
        .unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    for problem in report.lines().filter(|l| l.starts_with("  - ")) {
        // Files that exist only in a deployment are fine here.
        assert!(problem.contains("cannot read /etc/halflife/"), "{problem}");
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_runs_real_commands() {
    let path = repo_root().join("deploy/systemd/halflife.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let directives: Vec<(&str, &str)> =
        text.lines().filter(|l| !l.starts_with('#') && l.contains('=')).filter_map(|l| l.split_once('=')).collect();
    let has = |key: &str, value: &str| directives.iter().any(|(k, v)| *k == key && *v == value);
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "halflife"),
        ("CapabilityBoundingSet", ""),
        ("ProtectHome", "yes"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert!(has(key, value), "{key}={value} missing");
    }
    for key in ["ExecStart", "ExecStartPre"] {
        let (_, line) = directives.iter().find(|(k, _)| *k == key).unwrap();
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], INSTALLED);
        assert_accepted(&words[1..], key);
    }
    for (key, value) in directives.iter().filter(|(k, _)| *k == "Environment") {
        let name = value.split_once('=').unwrap().0;
        assert!(name.starts_with("HALFLIFE_"), "{key}={value}");
    }
    // systemd's own checker, with the unit pointed at this build.
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(_) => {
            let dir = tempfile::tempdir().unwrap();
            let unit = dir.path().join("halflife.service");
            std::fs::write(&unit, text.replace(INSTALLED, BIN)).unwrap();
            let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
            assert!(out.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&out.stderr));
        }
        Err(_) => eprintln!("SKIPPED: systemd-analyze is not installed; the unit was checked by this test only"),
    }
}

fn documents(file: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo_root().join("deploy/kubernetes").join(file)).unwrap();
    YamlLoader::load_from_str(&text).expect("valid YAML").into_iter().filter(|d| !d.is_null()).collect()
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .expect("the document the manifests are expected to hold")
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[test]
fn the_kubernetes_manifests_hang_together() {
    let broker = documents("halflife.yaml");
    let workload = documents("ai-workload.yaml");
    for doc in broker.iter().chain(&workload) {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].as_str().is_some(), "a document without {field}: {doc:?}");
        }
        assert!(doc["metadata"]["name"].as_str().is_some(), "a document without metadata.name");
    }

    // The configuration the ConfigMap carries is valid as it stands.
    let config_map = find(&broker, "ConfigMap", "halflife-config");
    let toml = config_map["data"]["halflife.toml"].as_str().unwrap();
    let config = halflife::config::Config::from_toml(toml).unwrap();
    let catalog = config_map["data"]["catalog.toml"].as_str().unwrap();
    let catalog: toml::Value = toml::from_str(catalog).unwrap();

    // The Deployment: several replicas, probes on routes that exist, the
    // hardening, real command-line flags, and every mount backed.
    let deployment = find(&broker, "Deployment", "halflife");
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_i64().unwrap() >= 2);
    assert!(config.database.url.starts_with("postgres://"), "replicas need PostgreSQL");
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(spec["selector"]["matchLabels"], *labels);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    let port = container["ports"][0]["containerPort"].as_i64().unwrap();
    assert_eq!(i64::from(config.server.listen.port()), port);
    let args = strings(&container["args"]);
    assert_accepted(&args, "Deployment args");
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let volumes: Vec<String> =
        pod["volumes"].as_vec().unwrap().iter().map(|v| v["name"].as_str().unwrap().into()).collect();
    let mounts = container["volumeMounts"].as_vec().unwrap();
    for mount in mounts {
        assert!(volumes.contains(&mount["name"].as_str().unwrap().to_owned()), "mount without volume: {mount:?}");
    }
    let mounted = |path: &str| mounts.iter().any(|m| path.starts_with(m["mountPath"].as_str().unwrap()));
    for path in [
        config_path.as_str(),
        config.keys.kek_file.as_ref().unwrap().to_str().unwrap(),
        config.issuers[0].jwks_file.as_ref().unwrap().to_str().unwrap(),
        config.keys.dir.to_str().unwrap(),
    ] {
        assert!(mounted(path), "{path} is not on any mounted volume");
    }
    for env in container["env"].as_vec().unwrap() {
        let (name, value) = (env["name"].as_str().unwrap(), env["value"].as_str().unwrap_or_default());
        assert!(name.starts_with("HALFLIFE_"), "{name}");
        if name.ends_with("_FILE") {
            assert!(mounted(value), "{name} points off every volume");
        }
    }
    let secret = find(&broker, "Secret", "halflife-secrets");
    for key in ["kek", "database-url"] {
        assert!(secret["stringData"][key].as_str().is_some(), "Secret lacks {key}");
    }

    // The PodDisruptionBudget and the NetworkPolicy select these pods.
    let pdb = find(&broker, "PodDisruptionBudget", "halflife");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);
    assert!(pdb["spec"]["minAvailable"].as_i64().unwrap() < spec["replicas"].as_i64().unwrap());
    let policy = find(&broker, "NetworkPolicy", "halflife");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"], *labels);
    let service = find(&broker, "Service", "halflife");
    assert_eq!(service["spec"]["selector"], *labels);

    // The AI workload: its projected token has the audience the issuer
    // requires, its identity is what the grant names, and its namespace
    // may pass the NetworkPolicy.
    let pod = find(&workload, "Pod", "summarizer");
    let namespace = pod["metadata"]["namespace"].as_str().unwrap();
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap();
    let projected = &pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projected["audience"].as_str(), Some(config.issuers[0].audience.as_str()));
    let lifetime = projected["expirationSeconds"].as_i64().unwrap();
    assert!(u64::try_from(lifetime).unwrap() <= config.issuers[0].max_token_age.get().as_secs());
    let grant =
        catalog["grants"].as_array().unwrap().iter().find(|g| g["issuer"].as_str() == Some("kubernetes")).unwrap();
    assert_eq!(grant["subject"].as_str(), Some(format!("system:serviceaccount:{namespace}:{account}").as_str()));
    let mount_path = pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let script = strings(&pod["spec"]["containers"][0]["args"]).join(" ");
    assert!(
        script.contains(&format!("subject_token@{mount_path}/{}", projected["path"].as_str().unwrap())),
        "{script}"
    );
    assert!(script.contains(&format!("audience={}", grant["audiences"][0].as_str().unwrap())));
    let ns = find(&workload, "Namespace", namespace);
    assert_eq!(ns["metadata"]["labels"]["halflife.io/client"].as_str(), Some("true"));
}
