//! No Docker engine runs here, so docker-compose.yml, the Dockerfile, the RabbitMQ definitions
//! and the Kubernetes manifests are held against the code instead: variable names, ports,
//! images, probes, healthcheck commands and broker arguments.

use crate::helpers::*;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The user and vhost of an AMQP URL are ones deploy/rabbitmq/definitions.json creates, the
/// user with permissions on that vhost, and neither is the broker's default (guest, /).
fn assert_vhost_granted(url: &str) {
    let rest = url.strip_prefix("amqp://").expect("amqp URL");
    let user = rest.split(':').next().expect("a user");
    let vhost = rest.rsplit('/').next().expect("a vhost");
    assert!(
        user != "guest" && vhost != "%2f" && !vhost.is_empty(),
        "{url}"
    );
    let definitions: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/rabbitmq/definitions.json"))
            .expect("definitions"),
    )
    .expect("definitions JSON");
    assert!(
        definitions["vhosts"]
            .as_array()
            .expect("vhosts")
            .iter()
            .any(|v| v["name"] == vhost),
        "vhost {vhost} defined"
    );
    assert!(
        definitions["permissions"]
            .as_array()
            .expect("permissions")
            .iter()
            .any(|p| p["user"] == user && p["vhost"] == vhost),
        "{user} may use {vhost}"
    );
    for kind in ["exchanges", "queues", "bindings"] {
        for item in definitions[kind].as_array().expect(kind) {
            assert_eq!(
                item["vhost"], vhost,
                "{kind} on the services' vhost: {item}"
            );
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path} parses: {e}")))
        .collect()
}

use serde::Deserialize;

fn variables(service: &str) -> BTreeSet<String> {
    match service {
        "command-service" => command_service::settings::Settings::variables(),
        "query-service" => query_service::settings::Settings::variables(),
        other => panic!("unknown service {other}"),
    }
    .into_iter()
    .collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {v:?}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has a port"))
}

#[test]
fn docker_compose_matches_what_the_services_read() {
    let compose = yaml("docker-compose.yml").remove(0);
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .map(|k| str_of(k, "service name").to_string())
        .collect();
    for needed in [
        "postgres",
        "rabbitmq",
        "mongo",
        "command-service",
        "query-service",
    ] {
        assert!(names.contains(needed), "compose runs {needed}");
    }
    let dockerfile =
        std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    let definitions: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/rabbitmq/definitions.json"))
            .expect("definitions"),
    )
    .expect("definitions.json parses");

    for (service, port, required) in [
        (
            "command-service",
            5001,
            &["DATABASE_URL", "AMQP_URL", "HTTP_ADDR"][..],
        ),
        (
            "query-service",
            5002,
            &["MONGODB_URI", "AMQP_URL", "HTTP_ADDR"][..],
        ),
    ] {
        let s = &compose["services"][service];
        let env = s["environment"].as_mapping().expect("environment map");
        let known = variables(service);
        for (k, v) in env {
            let k = str_of(k, "variable");
            assert!(
                known.contains(k),
                "{service}: {k} is not a variable the service reads ({known:?})"
            );
            assert!(v.is_string(), "{service}: {k} is quoted as a string");
        }
        for k in required {
            assert!(
                env.contains_key(*k),
                "{service}: compose sets {k} (its default is for local runs)"
            );
        }
        // Settings as the service would read them in the container.
        let vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (str_of(k, "k").to_string(), str_of(v, "v").to_string()))
            .collect();
        let addr = vars
            .iter()
            .find(|(k, _)| k == "HTTP_ADDR")
            .map(|(_, v)| v.clone())
            .expect("HTTP_ADDR");
        assert_eq!(port_of(&addr), port, "{service} listens on {port}");
        match service {
            "command-service" => {
                let s = command_service::settings::Settings::from_vars(vars.clone())
                    .expect("command settings parse");
                // Its own PostgreSQL role, owning its database, no superuser.
                assert!(
                    s.database_url.starts_with("postgres://todo:")
                        && s.database_url.contains("@postgres:5432/todos"),
                    "{}",
                    s.database_url
                );
                let init = std::fs::read_to_string(root().join("deploy/postgres/init.sql"))
                    .expect("deploy/postgres/init.sql");
                let init: String = init
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                assert!(
                    init.contains("CREATE ROLE todo LOGIN")
                        && init.contains("CREATE DATABASE todos OWNER todo")
                        && !init.to_uppercase().contains("SUPERUSER"),
                    "{init}"
                );
                assert!(s.amqp_url.contains("@rabbitmq:5672/"), "{}", s.amqp_url);
                assert_vhost_granted(&s.amqp_url);
                assert_eq!(s.amqp_exchange, events::EXCHANGE);
            }
            _ => {
                let s = query_service::settings::Settings::from_vars(vars.clone())
                    .expect("query settings parse");
                // Its own MongoDB user, created for the read model's database only.
                assert!(
                    s.mongodb_uri.starts_with("mongodb://todo:")
                        && s.mongodb_uri.contains("@mongo:27017/")
                        && s.mongodb_uri.contains("authSource=todo_read"),
                    "{}",
                    s.mongodb_uri
                );
                assert_eq!(s.mongodb_db, "todo_read");
                let init = std::fs::read_to_string(root().join("deploy/mongo/init.js"))
                    .expect("deploy/mongo/init.js");
                assert!(
                    init.contains("getSiblingDB(\"todo_read\")")
                        && init.contains("user: \"todo\"")
                        && init.contains("readWrite"),
                    "{init}"
                );
                assert!(s.amqp_url.contains("@rabbitmq:5672/"), "{}", s.amqp_url);
                assert_vhost_granted(&s.amqp_url);
                assert_eq!(s.amqp_queue, events::QUERY_QUEUE);
                assert_eq!(s.amqp_exchange, events::EXCHANGE);
            }
        }
        // The AMQP user is one the broker's definitions create.
        let amqp = vars
            .iter()
            .find(|(k, _)| k == "AMQP_URL")
            .map(|(_, v)| v.clone())
            .expect("AMQP_URL");
        let user = amqp
            .trim_start_matches("amqp://")
            .split(':')
            .next()
            .expect("user");
        assert!(
            definitions["users"]
                .as_array()
                .expect("users")
                .iter()
                .any(|u| u["name"] == user),
            "{service}: AMQP user {user} exists in deploy/rabbitmq/definitions.json"
        );
        let ports: Vec<&str> = s["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| str_of(p, "port"))
            .collect();
        assert_eq!(
            ports,
            [format!("{port}:{port}")],
            "{service} publishes {port}"
        );
        // Built from deploy/ with the service's name, healthchecked by its own binary.
        assert_eq!(
            str_of(&s["build"]["dockerfile"], "dockerfile"),
            "deploy/Dockerfile"
        );
        assert!(root()
            .join(str_of(&s["build"]["context"], "context"))
            .join("deploy/Dockerfile")
            .exists());
        assert_eq!(str_of(&s["build"]["args"]["SERVICE"], "SERVICE"), service);
        let test: Vec<&str> = s["healthcheck"]["test"]
            .as_sequence()
            .expect("healthcheck")
            .iter()
            .map(|p| str_of(p, "arg"))
            .collect();
        assert_eq!(
            test,
            ["CMD", &format!("/usr/local/bin/{service}"), "healthcheck"],
            "{service} healthcheck"
        );
        assert!(
            dockerfile.contains("/usr/local/bin/${SERVICE}"),
            "the Dockerfile installs the binary where the healthcheck calls it"
        );
        for (dep, cond) in s["depends_on"].as_mapping().expect("depends_on") {
            assert_eq!(
                str_of(&cond["condition"], "condition"),
                "service_healthy",
                "{service} waits for {dep:?}"
            );
            assert!(
                !compose["services"][str_of(dep, "dep")]["healthcheck"].is_null(),
                "{dep:?} has a healthcheck"
            );
        }
    }
    assert!(
        dockerfile.contains("USER 10001"),
        "the runtime image runs as non-root"
    );
    let rabbit_ports: Vec<&str> = compose["services"]["rabbitmq"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| str_of(p, "p"))
        .collect();
    assert!(
        rabbit_ports.contains(&"15672:15672"),
        "the management UI is published"
    );
    assert!(str_of(&compose["services"]["rabbitmq"]["image"], "image").contains("management"));
    for mount in compose["services"]["rabbitmq"]["volumes"]
        .as_sequence()
        .expect("volumes")
    {
        let source = str_of(mount, "volume").split(':').next().expect("source");
        if source.starts_with("./") {
            assert!(root().join(source).exists(), "{source} exists");
        }
    }
    for service in ["postgres", "rabbitmq", "mongo"] {
        assert!(
            !compose["services"][service]["healthcheck"]["test"].is_null(),
            "{service} has a healthcheck"
        );
        let volumes = compose["services"][service]["volumes"]
            .as_sequence()
            .expect("volumes");
        let named = str_of(&volumes[0], "volume")
            .split(':')
            .next()
            .expect("name")
            .to_string();
        assert!(
            compose["volumes"]
                .as_mapping()
                .expect("volumes")
                .contains_key(named.as_str()),
            "{named} is a named volume"
        );
    }
}

/// Queue arguments as `definitions.json` writes them.
fn json_of(args: &lapin::types::FieldTable) -> serde_json::Value {
    use lapin::types::AMQPValue;
    args.inner()
        .iter()
        .map(|(k, v)| {
            let v = match v {
                AMQPValue::LongString(s) => {
                    serde_json::Value::from(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::LongLongInt(n) => serde_json::Value::from(*n),
                AMQPValue::LongInt(n) => serde_json::Value::from(*n),
                other => panic!("{k}: an argument type definitions.json cannot hold: {other:?}"),
            };
            (k.to_string(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn rabbitmq_definitions_match_what_the_services_declare() {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/rabbitmq/definitions.json"))
            .expect("definitions"),
    )
    .expect("parses");
    let find = |kind: &str, name: &str| {
        d[kind]
            .as_array()
            .expect(kind)
            .iter()
            .find(|x| x["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{kind} {name}"))
    };
    let exchange = find("exchanges", events::EXCHANGE);
    assert_eq!(
        (exchange["type"].as_str(), exchange["durable"].as_bool()),
        (Some("topic"), Some(true))
    );
    let dlx = find("exchanges", &events::dead_letter_exchange(events::EXCHANGE));
    assert_eq!(
        (dlx["type"].as_str(), dlx["durable"].as_bool()),
        (Some("fanout"), Some(true))
    );
    let queue = find("queues", events::QUERY_QUEUE);
    assert_eq!(queue["durable"], true);
    // RabbitMQ refuses to declare a queue again with other arguments: exactly the same ones.
    assert_eq!(
        queue["arguments"],
        json_of(&query_service::consumer::quorum_args(Some(
            events::DEAD_LETTER_EXCHANGE
        ))),
        "{}",
        events::QUERY_QUEUE
    );
    assert!(queue["arguments"].get("x-delivery-limit").is_none());
    let dlq = find("queues", events::DEAD_LETTER_QUEUE);
    assert_eq!(
        dlq["arguments"],
        json_of(&query_service::consumer::quorum_args(None)),
        "{}",
        events::DEAD_LETTER_QUEUE
    );
    let bindings = d["bindings"].as_array().expect("bindings");
    assert!(bindings.iter().any(|b| b["source"] == events::EXCHANGE
        && b["destination"] == events::QUERY_QUEUE
        && b["routing_key"] == events::BINDING_KEY));
    assert!(bindings
        .iter()
        .any(|b| b["source"] == events::DEAD_LETTER_EXCHANGE
            && b["destination"] == events::DEAD_LETTER_QUEUE));
}

#[test]
fn kubernetes_manifests_name_the_compose_images_ports_and_probes() {
    let compose = yaml("docker-compose.yml").remove(0);
    for (service, file, port) in [
        ("command-service", "deploy/k8s/command-service.yaml", 5001),
        ("query-service", "deploy/k8s/query-service.yaml", 5002),
    ] {
        let docs = yaml(file);
        let kinds: Vec<&str> = docs.iter().map(|d| str_of(&d["kind"], "kind")).collect();
        assert_eq!(
            kinds,
            ["Deployment", "Service", "PodDisruptionBudget"],
            "{file}"
        );
        let deployment = &docs[0];
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["image"], compose["services"][service]["image"],
            "{service} image"
        );
        assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(port));
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        assert!(
            !container["resources"]["limits"]["memory"].is_null(),
            "{service} memory limit"
        );
        let known = variables(service);
        for var in container["env"].as_sequence().expect("env") {
            let name = str_of(&var["name"], "env name");
            assert!(known.contains(name), "{file}: {name} is read by {service}");
            if name == "HTTP_ADDR" {
                assert_eq!(u64::from(port_of(str_of(&var["value"], "HTTP_ADDR"))), port);
            }
        }
        assert_eq!(docs[1]["spec"]["ports"][0]["port"].as_u64(), Some(port));
        assert_eq!(
            docs[2]["spec"]["selector"], deployment["spec"]["selector"],
            "PDB selects the pods"
        );
    }
    let replicas = yaml("deploy/k8s/query-service.yaml")[0]["spec"]["replicas"]
        .as_u64()
        .expect("replicas");
    assert!(replicas >= 2, "query-service runs as competing consumers");
    let secret = yaml("deploy/k8s/secret.example.yaml").remove(0);
    assert_eq!(secret["kind"], "Secret");
}

#[tokio::test]
async fn the_healthcheck_subcommand_answers_for_a_running_service_only() {
    let run = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_query-service"))
            .arg("healthcheck")
            .env("HTTP_ADDR", format!("0.0.0.0:{port}"))
            .status()
            .expect("binary runs")
    };
    let names = Names::new();
    // Killed when dropped, also when an assertion below fails.
    let process = start_query_process(&names).await;
    let port = process.port;
    eventually(Duration::from_secs(30), "healthcheck passes", || async {
        run(port).success()
    })
    .await;
    drop(process);
    assert!(!run(port).success(), "nothing listens any more: unhealthy");
    names.cleanup().await;
}
