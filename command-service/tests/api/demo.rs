//! `scripts/demo.sh --start` runs its walkthrough only against the processes it starts: with
//! the command or the query port already held by another process it exits non-zero before
//! starting anything, naming the port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

fn demo() -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "..", "scripts", "demo.sh"]
        .iter()
        .collect()
}

fn held() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    (listener, url)
}

#[test]
fn demo_start_exits_non_zero_when_5001_or_5002_is_taken_by_another_process() {
    let (_command_port, command_url) = held();
    let (_query_port, query_url) = held();
    // A port free now: nothing listens on it once its listener is dropped.
    let free_url = held().1;
    for (command, query, taken) in [
        (&command_url, &query_url, &command_url),
        (&free_url, &query_url, &query_url),
    ] {
        let output = Command::new("bash")
            .arg(demo())
            .arg("--start")
            .env("COMMAND_URL", command)
            .env("QUERY_URL", query)
            .output()
            .expect("demo.sh runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "passed with {taken} taken");
        let hostport = taken.trim_start_matches("http://");
        assert!(
            stderr.contains(&format!("{hostport} is already taken")),
            "refused, naming {hostport}: {stderr}"
        );
    }
}
