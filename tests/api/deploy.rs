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

/// A unit's `Key=value` directives, comments dropped.
fn unit_directives(text: &str) -> Vec<(&str, &str)> {
    text.lines().filter(|l| !l.starts_with('#') && l.contains('=')).filter_map(|l| l.split_once('=')).collect()
}

/// What both units share: the hardening, real command lines, and
/// systemd's own checker.
fn check_unit(file: &str, required: &[(&str, &str)]) -> String {
    let path = repo_root().join("deploy/systemd").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let directives = unit_directives(&text);
    let has = |key: &str, value: &str| directives.iter().any(|(k, v)| *k == key && *v == value);
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectHome", "yes"),
        ("KillSignal", "SIGTERM"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ]
    .iter()
    .chain(required)
    {
        assert!(has(key, value), "{file}: {key}={value} missing");
    }
    for key in ["ExecStart", "ExecStartPre"] {
        let (_, line) = directives.iter().find(|(k, _)| *k == key).unwrap();
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], INSTALLED);
        assert_accepted(&words[1..], &format!("{file} {key}"));
    }
    for (key, value) in directives.iter().filter(|(k, _)| *k == "Environment") {
        let name = value.split_once('=').unwrap().0;
        assert!(name.starts_with("HALFLIFE_"), "{key}={value}");
    }
    // systemd's own checker, with the unit pointed at this build.
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(_) => {
            let dir = tempfile::tempdir().unwrap();
            let unit = dir.path().join(file);
            std::fs::write(&unit, text.replace(INSTALLED, BIN)).unwrap();
            let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
            assert!(out.status.success(), "systemd-analyze verify {file}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Err(_) => eprintln!("SKIPPED: systemd-analyze is not installed; {file} was checked by this test only"),
    }
    text
}

#[test]
fn the_systemd_unit_is_hardened_and_runs_real_commands() {
    check_unit("halflife.service", &[("PrivateTmp", "yes"), ("StateDirectory", "halflife")]);
}

/// The agent's unit: hardened like the broker's, its commands real, and the
/// runtime directories it creates the ones the configuration it installs
/// (`config/agent.example.toml` as `/etc/halflife/agent.toml`) writes to.
#[test]
fn the_agent_unit_is_hardened_and_its_directories_are_the_configurations() {
    let text = check_unit("halflife-agent.service", &[("Group", "halflife-clients"), ("UMask", "0077")]);
    let directives = unit_directives(&text);
    let exec = directives.iter().find(|(k, _)| *k == "ExecStart").unwrap().1;
    assert!(exec.contains("--config /etc/halflife/agent.toml") && exec.ends_with(" agent"), "{exec}");
    assert!(text.contains("install -D -m 0644 config/agent.example.toml /etc/halflife/agent.toml"));
    let runtime: Vec<String> = directives
        .iter()
        .find(|(k, _)| *k == "RuntimeDirectory")
        .unwrap()
        .1
        .split_whitespace()
        .map(|d| format!("/run/{d}"))
        .collect();
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo_root().join("config/agent.example.toml")).unwrap()).unwrap();
    let agent = &config["agent"];
    let socket = std::path::Path::new(agent["socket"].as_str().unwrap());
    assert!(runtime.iter().any(|d| socket.parent() == Some(std::path::Path::new(d))), "{socket:?} vs {runtime:?}");
    let credentials = agent["credentials_dir"].as_str().unwrap();
    assert!(runtime.iter().any(|d| d == credentials), "{credentials} vs {runtime:?}");
}

/// The image's ENTRYPOINT, as a JSON array in the Dockerfile.
fn image_entrypoint() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile")).unwrap();
    let line = text.lines().rev().find_map(|l| l.strip_prefix("ENTRYPOINT ")).expect("an ENTRYPOINT");
    json_words(line)
}

/// What a container of the halflife image runs: its `command` (else the
/// image's ENTRYPOINT) followed by its `args`.
fn effective_command(container: &Yaml) -> Vec<String> {
    let mut words = strings(&container["command"]);
    if words.is_empty() {
        words = image_entrypoint();
    }
    words.extend(strings(&container["args"]));
    assert_eq!(words[0], INSTALLED, "{words:?}");
    words
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
    // What the container runs: the image's ENTRYPOINT unless `command`
    // replaces it, then the args.
    assert_accepted(&effective_command(container)[1..], "Deployment command and args");
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

/// The agent as a native sidecar: real command lines, a valid agent
/// configuration, and paths that agree across the agent's configuration,
/// its mounts, the application's mounts and environment, the projected
/// token, and the broker's Service, issuer and grant that accept it.
#[test]
fn the_agent_sidecar_hangs_together() {
    let broker = documents("halflife.yaml");
    let docs = documents("agent-sidecar.yaml");
    for doc in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].as_str().is_some(), "a document without {field}: {doc:?}");
        }
    }
    let broker_config = find(&broker, "ConfigMap", "halflife-config");
    let broker_toml =
        halflife::config::Config::from_toml(broker_config["data"]["halflife.toml"].as_str().unwrap()).unwrap();
    let catalog: toml::Value = toml::from_str(broker_config["data"]["catalog.toml"].as_str().unwrap()).unwrap();

    let pod = find(&docs, "Pod", "summarizer-with-agent");
    let namespace = pod["metadata"]["namespace"].as_str().unwrap();
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"), "not a native sidecar");
    let app = &spec["containers"][0];
    for container in [sidecar, app] {
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
    }

    // Every command line is one the binary accepts.
    let command = effective_command(sidecar);
    assert_accepted(&command[1..], "sidecar command and args");
    assert_eq!(command.last().map(String::as_str), Some("agent"));
    let probe = strings(&sidecar["startupProbe"]["exec"]["command"]);
    assert_eq!(probe[0], INSTALLED);
    assert_accepted(&probe[1..], "sidecar startupProbe");
    assert!(probe.ends_with(&["agent".to_owned(), "health".to_owned()]), "{probe:?}");

    // Volumes and mounts.
    let volumes = spec["volumes"].as_vec().unwrap();
    let volume = |name: &str| {
        volumes.iter().find(|v| v["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mount_of = |container: &Yaml, path: &str| -> Option<(String, String, bool)> {
        container["volumeMounts"].as_vec().unwrap().iter().find_map(|m| {
            let at = m["mountPath"].as_str().unwrap();
            (path == at || path.starts_with(&format!("{at}/"))).then(|| {
                (m["name"].as_str().unwrap().to_owned(), at.to_owned(), m["readOnly"].as_bool().unwrap_or(false))
            })
        })
    };
    for container in [sidecar, app] {
        for mount in container["volumeMounts"].as_vec().unwrap() {
            volume(mount["name"].as_str().unwrap());
        }
    }

    // The agent's configuration: from the mounted ConfigMap, valid apart
    // from paths that exist only in the pod.
    let config_path = &command[command.iter().position(|a| a == "--config").unwrap() + 1];
    assert_eq!(probe[probe.iter().position(|a| a == "--config").unwrap() + 1], *config_path);
    let (config_volume, config_mount, _) = mount_of(sidecar, config_path).expect("the config is mounted");
    let map_name = volume(&config_volume)["configMap"]["name"].as_str().unwrap().to_owned();
    let config_map = find(&docs, "ConfigMap", &map_name);
    let key = config_path.strip_prefix(&format!("{config_mount}/")).unwrap();
    let text = config_map["data"][key].as_str().expect("the ConfigMap holds the file the agent reads");
    if let Err(e) = halflife::agent::config::from_toml(text) {
        for problem in e.problems() {
            assert!(problem.contains("does not exist") || problem.contains("is not a directory"), "{problem}");
        }
    }
    let agent: toml::Value = toml::from_str(text).unwrap();
    let agent = &agent["agent"];

    // The broker it names is the Service, at the URL the broker calls its
    // own (so DPoP proofs would name it right too).
    let service = find(&broker, "Service", "halflife");
    let port = service["spec"]["ports"][0]["port"].as_i64().unwrap();
    let broker_url = agent["broker_url"].as_str().unwrap();
    let service_namespace = service["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(broker_url, format!("http://halflife.{service_namespace}.svc.cluster.local:{port}"));
    assert_eq!(broker_url, broker_toml.server.public_base());
    let namespace_doc = find(&docs, "Namespace", namespace);
    assert_eq!(
        namespace_doc["metadata"]["labels"]["halflife.io/client"].as_str(),
        Some("true"),
        "the NetworkPolicy would drop it"
    );

    // The attestation is the projected token the broker's issuer accepts,
    // for the identity the grant names.
    let attestation = agent["attestation"]["file"].as_str().unwrap();
    let (token_volume, token_mount, read_only) = mount_of(sidecar, attestation).expect("the token is mounted");
    assert!(read_only);
    let projected = &volume(&token_volume)["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(attestation, format!("{token_mount}/{}", projected["path"].as_str().unwrap()));
    let issuer = broker_toml.issuers.iter().find(|i| i.name == "kubernetes").unwrap();
    assert_eq!(projected["audience"].as_str(), Some(issuer.audience.as_str()));
    let lifetime = u64::try_from(projected["expirationSeconds"].as_i64().unwrap()).unwrap();
    assert!(lifetime <= issuer.max_token_age.get().as_secs());
    let account = spec["serviceAccountName"].as_str().unwrap();
    find(&docs, "ServiceAccount", account);
    let grant =
        catalog["grants"].as_array().unwrap().iter().find(|g| g["issuer"].as_str() == Some("kubernetes")).unwrap();
    assert_eq!(grant["subject"].as_str(), Some(format!("system:serviceaccount:{namespace}:{account}").as_str()));
    let granted: Vec<&str> = grant["audiences"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let scopes: Vec<&str> = grant["scopes"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let max_ttl: halflife::config::HumanDuration = grant["max_ttl"].as_str().unwrap().parse().unwrap();
    for credential in agent["credentials"].as_array().unwrap() {
        assert!(granted.contains(&credential["audience"].as_str().unwrap()), "{credential}");
        for scope in credential["scope"].as_str().unwrap().split(' ') {
            assert!(scopes.contains(&scope), "{scope}");
        }
        let ttl: halflife::config::HumanDuration = credential["ttl"].as_str().unwrap().parse().unwrap();
        assert!(ttl <= max_ttl, "{credential}");
    }

    // The files: an in-memory emptyDir the agent writes and the app reads
    // (read-only), at the path the app's environment names.
    let credentials_dir = agent["credentials_dir"].as_str().unwrap();
    let (written, _, read_only) = mount_of(sidecar, credentials_dir).unwrap();
    assert!(!read_only);
    let (read, _, app_read_only) = mount_of(app, credentials_dir).expect("the app mounts the credentials");
    assert_eq!(written, read);
    assert!(app_read_only, "the application may only read its credentials");
    assert_eq!(volume(&written)["emptyDir"]["medium"].as_str(), Some("Memory"));
    let env = |name: &str| {
        app["env"].as_vec().unwrap().iter().find(|e| e["name"].as_str() == Some(name)).unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let file = agent["credentials"][0]["file"].as_str().unwrap();
    assert_eq!(env("REPORTS_TOKEN_FILE"), format!("{credentials_dir}/{file}"));
    assert!(strings(&app["args"]).join(" ").contains("$REPORTS_TOKEN_FILE"));

    // The socket: a directory both containers share.
    let socket = agent["socket"].as_str().unwrap();
    let (agent_side, _, _) = mount_of(sidecar, socket).unwrap();
    let (app_side, _, _) = mount_of(app, socket).expect("the app mounts the socket's directory");
    assert_eq!(agent_side, app_side);
    assert!(volume(&agent_side)["emptyDir"].as_hash().is_some());
    assert_eq!(env("HALFLIFE_AGENT_SOCKET"), socket);
}
