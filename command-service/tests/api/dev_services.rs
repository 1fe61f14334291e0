//! `scripts/dev-services.sh` touches only what it started: a service that was running before
//! it (a system PostgreSQL, RabbitMQ, or anything on the MongoDB port) is never stopped by it.
//! Named `*outage*` so that, should the guard ever break, no other test runs beside it.

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "scripts",
        "dev-services.sh",
    ]
    .iter()
    .collect()
}

/// Runs `dev-services.sh <command>` with a state directory of its own (no record of having
/// started anything) and `vars`; its exit status and output.
fn run(command: &str, vars: &[(&str, &str)]) -> (bool, String) {
    let state =
        std::env::temp_dir().join(format!("dev-services-{}", uuid::Uuid::new_v4().simple()));
    let output = Command::new("bash")
        .arg(script())
        .arg(command)
        .env("DEV_SERVICES_STATE", &state)
        .envs(vars.iter().copied())
        .output()
        .expect("dev-services.sh runs");
    let _ = std::fs::remove_dir_all(&state);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn outage_guard_stop_leaves_alone_what_dev_services_did_not_start() {
    // Something else listening where MongoDB would be.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let (ok, out) = run("stop-mongo", &[("MONGO_PORT", &port)]);
    assert!(!ok, "refused: {out}");
    assert!(out.contains("not stopping MongoDB"), "{out}");
    assert!(listener.local_addr().is_ok() && port_open(port.parse().expect("port")));

    // The shared PostgreSQL and RabbitMQ, as far as this state directory knows, were running
    // before: both stay up.
    assert!(
        port_open(5432) && port_open(5672),
        "the local services are up"
    );
    let (ok, out) = run("stop-postgres", &[]);
    assert!(!ok && out.contains("not stopping PostgreSQL"), "{out}");
    let (ok, out) = run("stop-rabbitmq", &[]);
    assert!(!ok && out.contains("not stopping RabbitMQ"), "{out}");
    assert!(port_open(5432), "PostgreSQL still up");
    assert!(port_open(5672), "RabbitMQ still up");

    // `down` stops nothing it did not start either, and says so.
    let (_, out) = run("down", &[("MONGO_PORT", &port)]);
    assert!(out.contains("not stopping"), "{out}");
    assert!(port_open(5432) && port_open(5672));
}

#[test]
fn outage_guard_the_script_changes_no_system_file_and_no_existing_password() {
    let text = std::fs::read_to_string(script()).expect("the script");
    for forbidden in [
        "rabbitmq-env.conf",
        "ALTER USER",
        "ALTER ROLE",
        "PASSWORD 'postgres'",
    ] {
        assert!(
            !text.contains(forbidden),
            "the script must not touch {forbidden}"
        );
    }
    // The only file it writes outside its state directory is policy-rc.d, removed on exit.
    assert!(
        text.contains("trap remove_policy EXIT"),
        "policy-rc.d removed on any exit"
    );
}
