//! No Docker engine runs here, so docker-compose.yml, the Dockerfile, the RabbitMQ definitions
//! and the Kubernetes manifests are held against the code instead: variable names, ports,
//! images, probes, healthcheck commands and broker arguments.

use crate::helpers::*;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What each service's RabbitMQ user may do on the vhost, exactly: (user, configure, write,
/// read). command-service declares its exchange and publishes to it, and reads nothing.
/// query-service configures nothing the definitions made (it finds them, passively): it
/// consumes its queue (read), publishes dead letters to `todo.events.dlx` and change notices
/// to its changes exchange (write), and declares, binds to the changes exchange and consumes
/// a server-named queue (`amq.gen-…`) per replica. It cannot publish to `todo.events`, nor bind
/// its queue to anything (no write on it), so its password cannot put an event in its queue.
/// deploy/README.md lists the operation each grant is for.
const BROKER_PERMISSIONS: [(&str, &str, &str, &str); 2] = [
    (
        "command-service",
        r"^todo\.events$",
        r"^todo\.events$",
        "^$",
    ),
    (
        "query-service",
        r"^amq\.gen-.*$",
        r"^(todo\.events\.dlx|query-service\.todo-events\.changes|amq\.gen-.*)$",
        r"^(query-service\.todo-events|query-service\.todo-events\.dlq|query-service\.todo-events\.changes|amq\.gen-.*)$",
    ),
];

/// The parts of `amqp://user:password@host:port/vhost`.
struct AmqpUrl {
    user: String,
    password: String,
    host: String,
    vhost: String,
}

fn amqp_url(url: &str) -> AmqpUrl {
    let rest = url
        .strip_prefix("amqp://")
        .unwrap_or_else(|| panic!("{url}: an amqp URL"));
    let (credentials, rest) = rest
        .split_once('@')
        .unwrap_or_else(|| panic!("{url}: credentials"));
    let (user, password) = credentials
        .split_once(':')
        .unwrap_or_else(|| panic!("{url}: user and password"));
    let (host, vhost) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("{url}: a vhost"));
    AmqpUrl {
        user: user.into(),
        password: password.into(),
        host: host.into(),
        vhost: vhost.into(),
    }
}

fn definitions() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/rabbitmq/definitions.json"))
            .expect("definitions"),
    )
    .expect("definitions JSON")
}

/// The AMQP URL of `service` names the user deploy/rabbitmq/definitions.json creates for it
/// (when `password` is given, with that password), on a vhost it defines that holds every
/// exchange, queue and binding, with exactly the permissions of [`BROKER_PERMISSIONS`] there;
/// not the broker's default user or vhost, and not the operator's admin.
fn assert_broker_user(service: &str, url: &str, password: bool) {
    let url = amqp_url(url);
    let definitions = definitions();
    let vhost = url.vhost.as_str();
    assert_eq!(url.user, service, "{service} connects as its own user");
    assert!(
        vhost != "%2f" && !vhost.is_empty(),
        "{service}: vhost {vhost}"
    );
    let users = definitions["users"].as_array().expect("users");
    let user = users
        .iter()
        .find(|u| u["name"] == service)
        .unwrap_or_else(|| panic!("definitions.json creates user {service}"));
    if password {
        assert_eq!(
            user["password"], url.password,
            "{service}: the password in its URL is its user's"
        );
    }
    // No tag: the management UI and its HTTP API refuse it.
    assert_eq!(user["tags"], serde_json::json!([]), "{service}: {user}");
    assert!(
        definitions["vhosts"]
            .as_array()
            .expect("vhosts")
            .iter()
            .any(|v| v["name"] == vhost),
        "vhost {vhost} defined"
    );
    let granted: Vec<&serde_json::Value> = definitions["permissions"]
        .as_array()
        .expect("permissions")
        .iter()
        .filter(|p| p["user"] == service)
        .collect();
    let (_, configure, write, read) = BROKER_PERMISSIONS
        .iter()
        .find(|(user, ..)| *user == service)
        .expect("permissions of the service");
    assert_eq!(
        granted,
        [&serde_json::json!({
            "user": service,
            "vhost": vhost,
            "configure": configure,
            "write": write,
            "read": read,
        })],
        "{service}: exactly its permissions, on {vhost} alone"
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

/// A `createUser` of deploy/mongo/init.js: its database, user, password (a string, or the
/// expression giving it) and roles, as written.
#[derive(Debug)]
struct MongoUser {
    db: String,
    user: String,
    pwd: String,
    roles: String,
}

/// The users deploy/mongo/init.js creates. It is read as text: each
/// `<var>.createUser({ user: "…", pwd: …, roles: [ … ] })`, `<var>` being a
/// `const <var> = db.getSiblingDB("…")`.
fn mongo_users() -> Vec<MongoUser> {
    let init = std::fs::read_to_string(root().join("deploy/mongo/init.js")).expect("init.js");
    let code: String = init
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let databases: Vec<(String, String)> = code
        .split("const ")
        .skip(1)
        .filter_map(|decl| {
            let (var, rest) = decl.split_once(" = db.getSiblingDB(\"")?;
            let (db, _) = rest.split_once('"')?;
            Some((var.trim().to_string(), db.to_string()))
        })
        .collect();
    let field = |block: &str, name: &str| -> String {
        let at = block
            .find(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{name} in {block}"));
        let value = &block[at + name.len() + 2..];
        let end = if name == "roles" {
            value.find(']').expect("roles end") + 1
        } else {
            value.find(",\n").expect("field end")
        };
        value[..end].trim().trim_matches('"').to_string()
    };
    code.match_indices(".createUser({")
        .map(|(at, _)| {
            let var = code[..at]
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .expect("variable");
            let db = databases
                .iter()
                .find(|(v, _)| v == var)
                .unwrap_or_else(|| panic!("{var} is a getSiblingDB in init.js"))
                .1
                .clone();
            let block = &code[at..at + code[at..].find("});").expect("createUser end")];
            MongoUser {
                db,
                user: field(block, "user"),
                pwd: field(block, "pwd"),
                roles: field(block, "roles"),
            }
        })
        .collect()
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
                assert_eq!(amqp_url(&s.amqp_url).host, "rabbitmq:5672");
                assert_broker_user("command-service", &s.amqp_url, true);
                assert_eq!(s.amqp_exchange, events::EXCHANGE);
            }
            _ => {
                let s = query_service::settings::Settings::from_vars(vars.clone())
                    .expect("query settings parse");
                // Its own MongoDB user, created by init.js with this password, readWrite on
                // the read model's database and nothing else.
                let (credentials, rest) = s
                    .mongodb_uri
                    .strip_prefix("mongodb://")
                    .and_then(|r| r.split_once('@'))
                    .expect("a MongoDB URI with credentials");
                assert!(
                    rest.starts_with("mongo:27017/") && rest.contains("authSource=todo_read"),
                    "{}",
                    s.mongodb_uri
                );
                assert_eq!(s.mongodb_db, "todo_read");
                let users = mongo_users();
                let own = users
                    .iter()
                    .find(|u| u.user == "query-service")
                    .unwrap_or_else(|| panic!("init.js creates query-service: {users:?}"));
                assert_eq!(credentials, format!("{}:{}", own.user, own.pwd));
                assert_eq!(own.db, "todo_read");
                assert_eq!(own.roles, r#"[{ role: "readWrite", db: "todo_read" }]"#);
                assert_eq!(amqp_url(&s.amqp_url).host, "rabbitmq:5672");
                assert_broker_user("query-service", &s.amqp_url, true);
                assert_eq!(s.amqp_queue, events::QUERY_QUEUE);
                assert_eq!(s.amqp_exchange, events::EXCHANGE);
            }
        }
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
    // The management UI on loopback alone, and nothing else of the broker published.
    assert_eq!(
        rabbit_ports,
        ["127.0.0.1:15672:15672"],
        "the management UI on this machine only"
    );
    // Its one user is the operator's admin, made from RABBITMQ_ADMIN_PASSWORD at start (no
    // password in a file); the definitions hold the services' users only, none tagged.
    let rabbitmq = &compose["services"]["rabbitmq"];
    assert_eq!(
        str_of(
            &rabbitmq["environment"]["RABBITMQ_ADMIN_PASSWORD"],
            "RABBITMQ_ADMIN_PASSWORD"
        ),
        "${RABBITMQ_ADMIN_PASSWORD:-}"
    );
    let start: Vec<&str> = rabbitmq["command"]
        .as_sequence()
        .expect("rabbitmq command")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let script = start.last().expect("a script");
    for step in [
        "$$RABBITMQ_ADMIN_PASSWORD\" | ctl add_user admin",
        "set_user_tags admin administrator",
        "exec docker-entrypoint.sh rabbitmq-server",
    ] {
        assert!(script.contains(step), "{step} in {script}");
    }
    let definitions = definitions();
    let users: Vec<&str> = definitions["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["name"].as_str().expect("name"))
        .collect();
    assert_eq!(users, ["command-service", "query-service"]);
    assert_eq!(
        rabbitmq["hostname"], "rabbitmq",
        "a fixed node name keeps the broker's data across recreation"
    );
    // MongoDB: the service's user and the operator's read-only one (its password from the
    // environment), nothing else; the root user only runs init.js.
    let users = mongo_users();
    let summary: Vec<(&str, &str, &str, &str)> = users
        .iter()
        .map(|u| {
            (
                u.db.as_str(),
                u.user.as_str(),
                u.pwd.as_str(),
                u.roles.as_str(),
            )
        })
        .collect();
    let own_password = users
        .iter()
        .find(|u| u.user == "query-service")
        .map(|u| u.pwd.as_str())
        .expect("query-service");
    assert_eq!(
        summary,
        [
            (
                "todo_read",
                "query-service",
                own_password,
                r#"[{ role: "readWrite", db: "todo_read" }]"#
            ),
            (
                "todo_read",
                "operator",
                "process.env.MONGO_OPERATOR_PASSWORD",
                r#"[{ role: "read", db: "todo_read" }]"#
            ),
        ]
    );
    let mongo = &compose["services"]["mongo"]["environment"];
    assert_eq!(
        str_of(&mongo["MONGO_OPERATOR_PASSWORD"], "MONGO_OPERATOR_PASSWORD"),
        "${MONGO_OPERATOR_PASSWORD:-}"
    );
    let root_user = str_of(&mongo["MONGO_INITDB_ROOT_USERNAME"], "root user");
    let uri = str_of(
        &compose["services"]["query-service"]["environment"]["MONGODB_URI"],
        "MONGODB_URI",
    );
    assert!(
        !uri.starts_with(&format!("mongodb://{root_user}:")),
        "query-service never connects as root"
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
    // query-service's changes exchange: its user may declare it, the definitions create it.
    let changes = find("exchanges", &events::changes_exchange(events::QUERY_QUEUE));
    assert_eq!(
        (
            changes["type"].as_str(),
            changes["durable"].as_bool(),
            changes["auto_delete"].as_bool()
        ),
        (Some("fanout"), Some(true), Some(false))
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
    let secrets = yaml("deploy/k8s/secret.example.yaml");
    for secret in &secrets {
        assert_eq!(secret["kind"], "Secret");
    }
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
        let env = container["env"].as_sequence().expect("env");
        for var in env {
            let name = str_of(&var["name"], "env name");
            assert!(known.contains(name), "{file}: {name} is read by {service}");
            if name == "HTTP_ADDR" {
                assert_eq!(u64::from(port_of(str_of(&var["value"], "HTTP_ADDR"))), port);
            }
        }
        let var = |name: &str| {
            env.iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{file} sets {name}"))
        };
        // Credentials and tokens come from the service's own Secret, none optional (writes
        // are never open for want of a key), each key one the example Secret holds.
        let secret_vars: &[(&str, &str)] = match service {
            "command-service" => &[
                ("DATABASE_URL", "database-url"),
                ("AMQP_URL", "amqp-url"),
                ("WRITE_TOKENS", "write-tokens"),
                ("FEED_TOKENS", "feed-tokens"),
            ],
            _ => &[
                ("MONGODB_URI", "mongodb-uri"),
                ("AMQP_URL", "amqp-url"),
                ("FEED_TOKEN", "feed-token"),
            ],
        };
        for (name, key) in secret_vars {
            let from = &var(name)["valueFrom"]["secretKeyRef"];
            assert_eq!(from["name"], service, "{file}: {name} from its own Secret");
            assert_eq!(from["key"], *key, "{file}: {name}");
            assert!(from["optional"].is_null(), "{file}: {name} is not optional");
            assert!(
                var(name)["value"].is_null(),
                "{file}: {name} only from the Secret"
            );
            let value = str_of(
                &secrets
                    .iter()
                    .find(|s| s["metadata"]["name"] == service)
                    .unwrap_or_else(|| panic!("secret.example.yaml has Secret {service}"))
                    ["stringData"][key],
                key,
            );
            assert!(!value.trim().is_empty(), "{service}/{key} is set");
            if *name == "AMQP_URL" {
                assert_eq!(amqp_url(value).host, "rabbitmq:5672");
                assert_broker_user(service, value, false);
            }
        }
        // The page's origin, and where the page writes: values to set, never localhost.
        let (name, other) = match service {
            "command-service" => ("CORS_ORIGINS", "query-service"),
            _ => ("COMMAND_SERVICE_URL", "command-service"),
        };
        let value = str_of(&var(name)["value"], name);
        assert!(
            value.starts_with("https://") && !value.contains("localhost"),
            "{file}: {name} is {other}'s public address: {value}"
        );
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
