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

/// The version the images are tagged with: the workspace's (Cargo.toml), never `latest`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where `kubectl apply -k` is pointed, and the base it builds on.
const K8S_BASE: &str = "deploy/k8s/base";
const K8S_LOCAL: &str = "deploy/k8s/overlays/local";

/// The objects a kustomization lists under `resources`, read as written (files, and folders
/// with a kustomization of their own, recursively); generators, patches and transformers are
/// not applied (scripts/k8s_check.sh renders with kustomize itself).
fn kustomize_resources(dir: &str) -> Vec<Value> {
    let kustomization = yaml(&format!("{dir}/kustomization.yaml")).remove(0);
    let mut docs = Vec::new();
    for resource in kustomization["resources"].as_sequence().expect("resources") {
        let path = format!("{dir}/{}", str_of(resource, "resource"));
        if root().join(&path).is_dir() {
            docs.extend(kustomize_resources(&path));
        } else {
            docs.extend(yaml(&path));
        }
    }
    docs
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} in {K8S_BASE}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} is a list: {v:?}"))
}

/// Every container of a pod template: init containers and containers.
fn containers(workload: &Value) -> Vec<&Value> {
    let spec = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter(|k| !spec[**k].is_null())
        .flat_map(|k| seq(&spec[*k], k))
        .collect()
}

/// A Secret deploy/k8s/secrets.sh makes, one key of it, and the value it puts there (shell
/// text: `$variables` unexpanded). `optional` when it is put only if a value was given.
#[derive(Debug)]
struct SecretKey {
    secret: String,
    key: String,
    value: String,
    optional: bool,
}

/// The keys deploy/k8s/secrets.sh puts in each Secret: its `put SECRET KEY VALUE` lines.
fn secret_keys() -> Vec<SecretKey> {
    let script = std::fs::read_to_string(root().join("deploy/k8s/secrets.sh")).expect("secrets.sh");
    let joined = script.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let (optional, put) = match line.split_once("|| put ") {
                Some((guard, put)) if guard.starts_with("[[ -z ") => (true, put),
                _ => (false, line.strip_prefix("put ")?),
            };
            let mut words = put.split_whitespace();
            let secret = words.next()?.to_string();
            let key = words.next()?.to_string();
            let value = words
                .collect::<Vec<_>>()
                .join(" ")
                .trim_matches('"')
                .to_string();
            Some(SecretKey {
                secret,
                key,
                value,
                optional,
            })
        })
        .collect()
}

fn secret_value<'a>(keys: &'a [SecretKey], secret: &str, key: &str) -> &'a SecretKey {
    keys.iter()
        .find(|k| k.secret == secret && k.key == key)
        .unwrap_or_else(|| panic!("deploy/k8s/secrets.sh puts {secret}/{key}: {keys:?}"))
}

#[test]
fn kubernetes_manifests_name_the_compose_images_ports_and_probes() {
    let compose = yaml("docker-compose.yml").remove(0);
    let docs = kustomize_resources(K8S_BASE);
    let local = yaml(&format!("{K8S_LOCAL}/kustomization.yaml")).remove(0);
    let keys = secret_keys();
    for (service, port) in [("command-service", 5001), ("query-service", 5002)] {
        let file = format!("{K8S_BASE}/{service}.yaml");
        let deployment = object(&docs, "Deployment", service);
        let spec = &deployment["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        // Tagged with the workspace's version, as compose tags what it builds.
        let image = format!("todo-cqrs/{service}:{VERSION}");
        assert_eq!(container["image"], image.as_str(), "{service} image");
        assert_eq!(
            compose["services"][service]["image"],
            image.as_str(),
            "compose tags {service} with the version"
        );
        let pinned = seq(&local["images"], "images")
            .iter()
            .find(|i| i["name"] == format!("todo-cqrs/{service}").as_str())
            .unwrap_or_else(|| panic!("{K8S_LOCAL} names the {service} image"));
        assert_eq!(pinned["newTag"], VERSION, "{K8S_LOCAL}: {service} tag");
        assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(port));
        // Started: the listener opens after the store answered (about 2 min of tries when
        // it does not) and, for command-service, the migrations ran; 3 min before a restart.
        let startup = &container["startupProbe"];
        assert_eq!(
            startup["httpGet"]["path"], "/health",
            "{service} startupProbe"
        );
        let window = startup["periodSeconds"].as_u64().expect("period")
            * startup["failureThreshold"]
                .as_u64()
                .expect("failureThreshold");
        assert!(window >= 180, "{service}: startupProbe allows {window} s");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        // /ready waits up to 2 s on each store it asks (command-service: PostgreSQL's ping,
        // then the outbox figures); the probe waits longer than the route can.
        let ready_waits = if service == "command-service" { 4 } else { 2 };
        let timeout = container["readinessProbe"]["timeoutSeconds"]
            .as_u64()
            .expect("readiness timeout");
        assert!(
            timeout > ready_waits,
            "{service}: readiness timeout {timeout} s"
        );
        for k in ["cpu", "memory"] {
            assert!(
                !container["resources"]["limits"][k].is_null()
                    && !container["resources"]["requests"][k].is_null(),
                "{service}: {k} request and limit"
            );
        }
        let known = variables(service);
        let env = seq(&container["env"], "env");
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
        // are never open for want of a key), each key one deploy/k8s/secrets.sh puts there.
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
            let put = secret_value(&keys, service, key);
            assert!(!put.optional, "secrets.sh always puts {service}/{key}");
            if *name == "AMQP_URL" {
                assert_eq!(amqp_url(&put.value).host, "rabbitmq:5672");
                assert_broker_user(service, &put.value, false);
            }
        }
        // The page's origin, and where the page writes: values to set, never localhost; the
        // local overlay sets compose's, for the page on port-forwarded localhost:5002.
        let (name, other) = match service {
            "command-service" => ("CORS_ORIGINS", "query-service"),
            _ => ("COMMAND_SERVICE_URL", "command-service"),
        };
        let value = str_of(&var(name)["value"], name);
        assert!(
            value.starts_with("https://") && !value.contains("localhost"),
            "{file}: {name} is {other}'s public address: {value}"
        );
        let patch = yaml(&format!("{K8S_LOCAL}/local-services.yaml"));
        let patched =
            &object(&patch, "Deployment", service)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(patched["name"], service);
        assert_eq!(
            patched["imagePullPolicy"], "IfNotPresent",
            "loaded, never pulled"
        );
        let local_value = seq(&patched["env"], "env")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{K8S_LOCAL} sets {name}"));
        assert_eq!(
            local_value["value"], compose["services"][service]["environment"][name],
            "{K8S_LOCAL}: {name} as compose"
        );
        let svc = object(&docs, "Service", service);
        assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(port));
        assert_eq!(
            svc["spec"]["selector"],
            deployment["spec"]["selector"]["matchLabels"]
        );
        // A disruption budget that lets a drain proceed at every replica count used.
        let pdb = object(&docs, "PodDisruptionBudget", service);
        assert_eq!(
            pdb["spec"]["selector"], deployment["spec"]["selector"],
            "PDB selects the pods"
        );
        let local_replicas = seq(&local["replicas"], "replicas")
            .iter()
            .find(|r| r["name"] == service)
            .and_then(|r| r["count"].as_u64())
            .unwrap_or_else(|| panic!("{K8S_LOCAL} sets {service}'s replicas"));
        let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
        for count in [replicas, local_replicas] {
            match (
                pdb["spec"]["maxUnavailable"].as_u64(),
                pdb["spec"]["minAvailable"].as_u64(),
            ) {
                (Some(max), None) => assert!(max >= 1, "{service}: maxUnavailable {max}"),
                (None, Some(min)) => {
                    assert!(min < count, "{service}: minAvailable {min} of {count}")
                }
                other => panic!("{service}: PDB {other:?}"),
            }
        }
        if service == "query-service" {
            assert!(
                replicas >= 2 && local_replicas >= 2,
                "query-service runs as competing consumers"
            );
        }
    }
    // No image anywhere untagged or `latest`.
    let mut images: Vec<String> = compose["services"]
        .as_mapping()
        .expect("services")
        .values()
        .filter_map(|s| s["image"].as_str().map(String::from))
        .collect();
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        images.extend(
            containers(workload)
                .iter()
                .map(|c| str_of(&c["image"], "image").to_string()),
        );
    }
    for image in &images {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "{image}: a tag, never latest"
        );
    }
}

/// The stores, each named as in compose: (name, port, the services that may connect).
const STORES: [(&str, u16, &[&str]); 3] = [
    ("postgres", 5432, &["command-service"]),
    ("rabbitmq", 5672, &["command-service", "query-service"]),
    ("mongo", 27017, &["query-service"]),
];

#[test]
fn kubernetes_pods_run_as_non_root_with_read_only_roots_and_no_capabilities() {
    let docs = kustomize_resources(K8S_BASE);
    let dockerfile =
        std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    assert!(
        dockerfile.contains("USER 10001:10001"),
        "the services' image user"
    );
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .collect();
    let names: BTreeSet<&str> = workloads
        .iter()
        .map(|w| str_of(&w["metadata"]["name"], "name"))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "command-service",
            "query-service",
            "postgres",
            "rabbitmq",
            "mongo"
        ])
    );
    for workload in workloads {
        let name = str_of(&workload["metadata"]["name"], "name");
        let spec = &workload["spec"]["template"]["spec"];
        // The services as the Dockerfile's user; the stores as their official images' own
        // (postgres, rabbitmq and mongodb are uid and gid 999 there).
        let uid = if name.ends_with("-service") {
            10001
        } else {
            999
        };
        let pod = &spec["securityContext"];
        assert_eq!(pod["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["runAsUser"].as_u64(), Some(uid), "{name}");
        assert_eq!(pod["runAsGroup"].as_u64(), Some(uid), "{name}");
        assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        if uid == 999 {
            // A volume's files are made the group's once: PostgreSQL's data folder and the
            // Erlang cookie must stay closed to the group.
            assert_eq!(pod["fsGroup"].as_u64(), Some(999), "{name}");
            assert_eq!(pod["fsGroupChangePolicy"], "OnRootMismatch", "{name}");
        }
        assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
        assert_eq!(spec["enableServiceLinks"], false, "{name}");
        for container in containers(workload) {
            let which = format!("{name}/{}", str_of(&container["name"], "container"));
            let security = &container["securityContext"];
            assert!(
                security["runAsUser"].is_null() && security["runAsNonRoot"] != false,
                "{which}: runs as the pod's user"
            );
            assert_eq!(security["allowPrivilegeEscalation"], false, "{which}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{which}");
            assert_eq!(
                security["capabilities"]["drop"],
                serde_yaml::to_value(["ALL"]).expect("a list"),
                "{which}"
            );
            assert!(security["capabilities"]["add"].is_null(), "{which}");
            assert!(security["privileged"] != true, "{which}");
            for k in ["cpu", "memory"] {
                assert!(
                    !container["resources"]["limits"][k].is_null()
                        && !container["resources"]["requests"][k].is_null(),
                    "{which}: {k} request and limit"
                );
            }
        }
        for container in seq(&spec["containers"], "containers") {
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert!(!container[probe].is_null(), "{name}: {probe}");
            }
        }
    }
    // The local cluster's namespace refuses any pod that is not so.
    let namespace = yaml(&format!("{K8S_LOCAL}/namespace.yaml")).remove(0);
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let local = yaml(&format!("{K8S_LOCAL}/kustomization.yaml")).remove(0);
    assert_eq!(local["namespace"], namespace["metadata"]["name"]);
}

#[test]
fn kubernetes_secrets_come_from_outside_the_applied_folders() {
    // No Secret in any manifest under deploy/k8s, and no kustomization there generates one
    // from a file in it.
    let repo = root().canonicalize().expect("the repository");
    let k8s = repo.join("deploy/k8s");
    let mut dirs = vec![k8s.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/k8s").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "yaml" && e != "yml") {
                continue;
            }
            let relative = path.strip_prefix(&repo).expect("in the repo");
            let relative = relative.to_str().expect("path");
            for doc in yaml(relative) {
                assert!(doc["kind"] != "Secret", "{relative} holds a Secret");
                for generator in doc["secretGenerator"].as_sequence().into_iter().flatten() {
                    for file in ["files", "envs"]
                        .iter()
                        .flat_map(|k| generator[*k].as_sequence().into_iter().flatten())
                    {
                        let file = str_of(file, "file");
                        let file = file.rsplit('=').next().expect("file");
                        let resolved = path.parent().expect("dir").join(file).canonicalize();
                        assert!(
                            resolved.is_ok_and(|p| !p.starts_with(&k8s)),
                            "{relative}: a Secret from {file}, inside deploy/k8s"
                        );
                    }
                }
            }
        }
    }
    assert!(
        !root().join("deploy/k8s/secret.example.yaml").exists(),
        "no example Secret beside the manifests"
    );
    // Every Secret key a pod reads is one deploy/k8s/secrets.sh puts; those a pod needs are
    // put always, the optional ones only when given.
    let keys = secret_keys();
    let docs = kustomize_resources(K8S_BASE);
    let mut read = BTreeSet::new();
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        for container in containers(workload) {
            for var in container["env"].as_sequence().into_iter().flatten() {
                let from = &var["valueFrom"]["secretKeyRef"];
                if from.is_null() {
                    continue;
                }
                let (secret, key) = (str_of(&from["name"], "name"), str_of(&from["key"], "key"));
                let put = secret_value(&keys, secret, key);
                assert_eq!(
                    put.optional,
                    from["optional"] == true,
                    "{secret}/{key}: optional in the pod exactly when secrets.sh may leave it out"
                );
                read.insert((secret.to_string(), key.to_string()));
            }
        }
    }
    let put: BTreeSet<(String, String)> = keys
        .iter()
        .map(|k| (k.secret.clone(), k.key.clone()))
        .collect();
    assert_eq!(put, read, "secrets.sh puts exactly what the pods read");
    // The URLs name each store's user with the password the store's Secret makes it with.
    let of = |secret: &str, key: &str| secret_value(&keys, secret, key).value.clone();
    assert_eq!(
        of("command-service", "database-url"),
        format!(
            "postgres://todo:{}@postgres:5432/todos",
            of("postgres", "todo-password")
        )
    );
    assert_eq!(
        of("command-service", "amqp-url"),
        format!(
            "amqp://command-service:{}@rabbitmq:5672/todo",
            of("rabbitmq", "command-service-password")
        )
    );
    assert_eq!(
        of("query-service", "amqp-url"),
        format!(
            "amqp://query-service:{}@rabbitmq:5672/todo",
            of("rabbitmq", "query-service-password")
        )
    );
    let mongodb_uri = of("query-service", "mongodb-uri");
    assert!(
        mongodb_uri.starts_with(&format!(
            "mongodb://query-service:{}@mongo:27017/todo_read?",
            of("mongo", "query-service-password")
        )) && mongodb_uri.contains("authSource=todo_read"),
        "{mongodb_uri}"
    );
    assert_eq!(
        of("query-service", "feed-token"),
        of("command-service", "feed-tokens")
    );
}

#[test]
fn kubernetes_stores_run_the_files_compose_mounts() {
    let compose = yaml("docker-compose.yml").remove(0);
    let docs = kustomize_resources(K8S_BASE);
    let base = yaml(&format!("{K8S_BASE}/kustomization.yaml")).remove(0);
    // Kustomize reads files only under the kustomization: stores/ holds copies, byte for
    // byte (`bash scripts/k8s_check.sh --sync` makes them again).
    let generated = |name: &str| -> Vec<String> {
        seq(&base["configMapGenerator"], "configMapGenerator")
            .iter()
            .find(|g| g["name"] == name)
            .map(|g| {
                seq(&g["files"], "files")
                    .iter()
                    .map(|f| str_of(f, "file").to_string())
                    .collect()
            })
            .unwrap_or_else(|| panic!("{K8S_BASE} generates ConfigMap {name}"))
    };
    for (configmap, originals) in [
        (
            "rabbitmq-config",
            &[
                "deploy/rabbitmq/rabbitmq.conf",
                "deploy/rabbitmq/definitions.json",
            ][..],
        ),
        ("mongo-init", &["deploy/mongo/init.js"][..]),
        ("postgres-init", &["deploy/postgres/init.sql"][..]),
    ] {
        let files = generated(configmap);
        for original in originals {
            let copy = format!(
                "stores/{}",
                original.strip_prefix("deploy/").expect("deploy/")
            );
            assert!(files.contains(&copy), "{configmap} holds {copy}: {files:?}");
            let read =
                |p: &str| std::fs::read(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(
                read(original) == read(&format!("{K8S_BASE}/{copy}")),
                "{K8S_BASE}/{copy} differs from {original}: run `bash scripts/k8s_check.sh --sync`"
            );
        }
    }
    for (store, port, _) in STORES {
        let set = object(&docs, "StatefulSet", store);
        let spec = &set["spec"]["template"]["spec"];
        let main = &spec["containers"][0];
        assert_eq!(
            main["image"], compose["services"][store]["image"],
            "{store}: compose's image"
        );
        assert_eq!(
            main["ports"][0]["containerPort"].as_u64(),
            Some(u64::from(port))
        );
        let service = object(&docs, "Service", store);
        assert_eq!(service["spec"]["clusterIP"], "None", "{store}: headless");
        assert_eq!(
            service["spec"]["ports"][0]["port"].as_u64(),
            Some(u64::from(port))
        );
        assert_eq!(set["spec"]["serviceName"], store);
        assert!(
            !set["spec"]["volumeClaimTemplates"].is_null(),
            "{store}: a volume of its own"
        );
        let mounts = seq(&main["volumeMounts"], "volumeMounts");
        let mount = |path: &str| {
            mounts
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{store} mounts {path}"))
        };
        let volume = |name: &Value| {
            seq(&spec["volumes"], "volumes")
                .iter()
                .find(|v| v["name"] == *name)
                .unwrap_or_else(|| panic!("{store}: volume {name:?}"))
        };
        match store {
            "rabbitmq" => {
                let conf = mount("/etc/rabbitmq/rabbitmq.conf");
                assert_eq!(conf["subPath"], "rabbitmq.conf");
                assert_eq!(
                    volume(&conf["name"])["configMap"]["name"],
                    "rabbitmq-config"
                );
                // definitions.json as rabbitmq.conf loads it, the init container's copy with
                // the Secret's passwords in place of each service user's demo password.
                let loaded = mount("/etc/rabbitmq/definitions.json");
                assert_eq!(loaded["subPath"], "definitions.json");
                let init = &spec["initContainers"][0];
                let script = seq(&init["command"], "command")
                    .last()
                    .map(|s| str_of(s, "script"))
                    .expect("script");
                for user in definitions()["users"].as_array().expect("users") {
                    let demo = user["password"].as_str().expect("password");
                    assert!(
                        script.contains(&format!(r#"s/\"password\": \"{demo}\"/"#)),
                        "the init container replaces {demo}"
                    );
                }
                assert!(
                    std::fs::read_to_string(root().join("deploy/rabbitmq/rabbitmq.conf"))
                        .expect("rabbitmq.conf")
                        .contains("load_definitions = /etc/rabbitmq/definitions.json")
                );
            }
            _ => {
                let initdb = mount("/docker-entrypoint-initdb.d");
                assert_eq!(
                    volume(&initdb["name"])["configMap"]["name"],
                    format!("{store}-init").as_str()
                );
                // After init.sql / init.js (name order), the user's password from the Secret.
                let (script, statement) = match store {
                    "postgres" => (
                        "stores/postgres/set-password.sh",
                        "ALTER ROLE todo PASSWORD",
                    ),
                    _ => (
                        "stores/mongo/set-password.js",
                        r#"getSiblingDB("todo_read").updateUser("query-service""#,
                    ),
                };
                assert!(generated(&format!("{store}-init")).contains(&script.to_string()));
                let name = script.rsplit('/').next().expect("name");
                // init.sql and init.js run first: the files run in name order.
                assert!(name > "init.sql", "{name} runs last");
                let text =
                    std::fs::read_to_string(root().join(K8S_BASE).join(script)).expect("script");
                assert!(text.contains(statement), "{script}: {statement}");
            }
        }
    }
}

#[test]
fn kubernetes_network_policies_fence_each_service_and_store() {
    let docs = kustomize_resources(K8S_BASE);
    let port_of_app = |app: &str| -> u64 {
        object(&docs, "Service", app)["spec"]["ports"][0]["port"]
            .as_u64()
            .expect("port")
    };
    let dns = BTreeSet::from([
        ("kube-dns".to_string(), 53, "TCP"),
        ("kube-dns".to_string(), 53, "UDP"),
    ]);
    // Who each pod may reach, besides DNS.
    let egress: [(&str, &[&str]); 5] = [
        ("command-service", &["postgres", "rabbitmq"]),
        ("query-service", &["mongo", "rabbitmq", "command-service"]),
        ("postgres", &[]),
        ("rabbitmq", &[]),
        ("mongo", &[]),
    ];
    for (app, reaches) in egress {
        let policy = object(&docs, "NetworkPolicy", app);
        let spec = &policy["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"], app,
            "{app}: the policy selects its pods"
        );
        assert_eq!(
            spec["policyTypes"],
            serde_yaml::to_value(["Ingress", "Egress"]).expect("a list"),
            "{app}: in and out are both fenced"
        );
        // In: the pod's own port only; a store's from its services only.
        let ingress = seq(&spec["ingress"], "ingress");
        assert_eq!(ingress.len(), 1, "{app}: one ingress rule");
        let ports: Vec<u64> = seq(&ingress[0]["ports"], "ports")
            .iter()
            .map(|p| p["port"].as_u64().expect("port"))
            .collect();
        assert_eq!(ports, [port_of_app(app)], "{app}: in on its port only");
        let from: BTreeSet<&str> = ingress[0]["from"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|peer| {
                assert!(peer["namespaceSelector"].is_null() && peer["ipBlock"].is_null());
                str_of(
                    &peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                    "peer",
                )
            })
            .collect();
        match STORES.iter().find(|(store, ..)| *store == app) {
            Some((_, _, clients)) => assert_eq!(
                from,
                clients.iter().copied().collect(),
                "{app}: only its services connect"
            ),
            None => assert!(
                from.is_empty(),
                "{app}: its port from anywhere (the ingress)"
            ),
        }
        // Out: exactly the stores, broker and service it talks to, on their ports, and DNS.
        let mut allowed = BTreeSet::new();
        for rule in seq(&spec["egress"], "egress") {
            let peers = seq(&rule["to"], "to");
            assert_eq!(peers.len(), 1, "{app}: one peer per egress rule");
            let peer = &peers[0];
            assert!(peer["ipBlock"].is_null(), "{app}: no address range");
            let target = if peer["namespaceSelector"].is_null() {
                str_of(
                    &peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                    "peer",
                )
                .to_string()
            } else {
                assert_eq!(
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                    "kube-system"
                );
                str_of(&peer["podSelector"]["matchLabels"]["k8s-app"], "dns").to_string()
            };
            for port in seq(&rule["ports"], "ports") {
                allowed.insert((
                    target.clone(),
                    port["port"].as_u64().expect("port"),
                    str_of(&port["protocol"], "protocol"),
                ));
            }
        }
        let mut expected = dns.clone();
        for peer in reaches {
            expected.insert((peer.to_string(), port_of_app(peer), "TCP"));
        }
        assert_eq!(allowed, expected, "{app}: egress");
    }
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
