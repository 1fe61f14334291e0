//! `FEED_TOKEN`: `query-service replay` and `verify` read command-service's `GET /events` with
//! a feed token when command-service has `WRITE_TOKENS` and `FEED_TOKENS` set, and a feed that
//! refuses them (401, 403) ends them at once with a message naming `FEED_TOKEN`, never a
//! retry, and never the token itself.

use crate::helpers::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const WRITE_TOKEN: &str = "wr1te-t0ken-3c1d";
const FEED_TOKEN: &str = "f33d-t0ken-9a7b";

/// Runs `query-service <subcommand> <command_url>` with `FEED_TOKEN` set to `token` (unset
/// when `None`): whether it succeeded, its stdout and stderr, and how long it took.
async fn run(
    names: &Names,
    subcommand: &str,
    command_url: &str,
    token: Option<&str>,
) -> (bool, String, Duration) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_query-service"));
    command
        .arg(subcommand)
        .arg(command_url)
        .env("MONGODB_URI", mongodb_uri())
        .env("MONGODB_DB", &names.mongo_db)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .env_remove("FEED_TOKEN");
    if let Some(token) = token {
        command.env("FEED_TOKEN", token);
    }
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("query-service runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, started.elapsed())
}

#[tokio::test]
async fn replay_and_verify_read_the_feed_with_a_feed_token_and_stop_at_once_naming_feed_token_when_refused(
) {
    let names = Names::new();
    let database = create_database().await;
    let command = spawn_app_with(Options {
        database_url: Some(database.url.clone()),
        exchange: Some(names.exchange.clone()),
        extra: vec![
            ("WRITE_TOKENS", WRITE_TOKEN.into()),
            ("FEED_TOKENS", FEED_TOKEN.into()),
        ],
    })
    .await;
    let client = reqwest::Client::new();
    for title in ["one", "two"] {
        let created = client
            .post(command.url("/todos"))
            .bearer_auth(WRITE_TOKEN)
            .json(&serde_json::json!({ "title": title }))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), 201, "create {title}");
    }

    // (why, FEED_TOKEN, the status the feed answers)
    let refusals: [(&str, Option<&str>, &str); 4] = [
        ("no FEED_TOKEN", None, "401"),
        ("a write token as FEED_TOKEN", Some(WRITE_TOKEN), "403"),
        ("a token of neither list", Some("n0t-a-t0ken"), "403"),
        ("an empty FEED_TOKEN is none", Some(""), "401"),
    ];
    for subcommand in ["replay", "verify"] {
        for (why, token, status) in refusals {
            let (ok, text, took) = run(&names, subcommand, &command.address, token).await;
            assert!(!ok, "{subcommand}, {why}: succeeded: {text}");
            assert!(
                text.contains("FEED_TOKEN") && text.contains(status),
                "{subcommand}, {why}: the message names FEED_TOKEN and {status}: {text}"
            );
            assert!(
                took < Duration::from_secs(10),
                "{subcommand}, {why}: took {took:?}, as a retry would"
            );
            for secret in [WRITE_TOKEN, "n0t-a-t0ken"] {
                assert!(
                    !text.contains(secret),
                    "{subcommand}, {why}: a token in the output: {text}"
                );
            }
        }
    }

    let (ok, text, _) = run(&names, "replay", &command.address, Some(FEED_TOKEN)).await;
    assert!(ok, "replay with the feed token: {text}");
    let done: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "replay finished")
        .unwrap_or_else(|| panic!("no 'replay finished' line in {text}"));
    assert_eq!(done["read"], 2, "{done}");
    assert_eq!(done["applied"], 2, "{done}");
    let (ok, text, _) = run(&names, "verify", &command.address, Some(FEED_TOKEN)).await;
    assert!(ok, "verify with the feed token: {text}");
    assert!(text.contains("0 difference(s)"), "{text}");
    assert!(
        !text.contains(FEED_TOKEN),
        "the feed token in the output: {text}"
    );
    command.stop().await;
    names.cleanup().await;
}
