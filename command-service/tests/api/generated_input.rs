//! Generated bad input (proptest): bodies, paths and query strings no person wrote. None may
//! answer 5xx and none may write anything. The run is replayable: its seed is printed, and
//! `PROPTEST_SEED=<hex>` runs the same cases again.

use crate::helpers::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A JSON value of any shape, from a few levels of arrays and objects.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body that can never be a valid write: raw bytes, or a JSON object that always carries a
/// field no write has (so it is refused whatever else it holds).
fn bad_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (
            prop::collection::btree_map(
                prop_oneof![
                    Just("title".to_string()),
                    Just("description".to_string()),
                    Just("completed".to_string())
                ],
                json_value(),
                0..3
            ),
            "[a-z]{1,8}",
            json_value()
        )
            .prop_map(|(fields, unknown, value)| {
                let mut object: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().collect();
                object.insert(format!("x_{unknown}"), value);
                serde_json::Value::Object(object).to_string().into_bytes()
            }),
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("POST"),
        Just("PATCH"),
        Just("PUT"),
        Just("DELETE"),
        Just("GET")
    ]
}

/// Paths around the routes: ids of every shape, and a query string of any text.
fn path(id: i64) -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just(id.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[^/?#]{0,12}",
    ];
    let query = "[ -~]{0,30}".prop_map(|q| q.replace('#', ""));
    prop_oneof![
        Just("/todos".to_string()),
        segment.prop_map(|s| format!("/todos/{}", urlencode(&s))),
        query.prop_map(|q| format!("/events?{q}")),
    ]
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn generated_bad_requests_never_answer_5xx_and_never_write() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let app = runtime.block_on(spawn_app());
    let id = runtime.block_on(app.create("baseline"))["id"]
        .as_i64()
        .expect("id");
    let seed: [u8; 32] = match std::env::var("PROPTEST_SEED") {
        Ok(hex) => {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect();
            bytes.try_into().expect("PROPTEST_SEED is 64 hex digits")
        }
        Err(_) => rand::random(),
    };
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    eprintln!("generated input: PROPTEST_SEED={hex}");
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 300,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let strategy = (method(), path(id), bad_body(), any::<bool>());
    let result = runner.run(&strategy, |(method, path, body, json)| {
        // Deleting the baseline would be a valid write; every other request here is refused.
        if method == "DELETE" && path == format!("/todos/{id}") {
            return Ok(());
        }
        let (status, todos, events) = runtime.block_on(async {
            let mut request = app.client.request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                app.url(&path),
            );
            if method != "GET" && method != "DELETE" {
                request = request.body(body.clone());
                if json {
                    request = request.header("content-type", "application/json");
                }
            }
            let status = request.send().await.expect("answered").status().as_u16();
            (status, app.count("todos").await, app.count("events").await)
        });
        prop_assert!(status < 500, "{method} {path}: {status}");
        // Only a read of the feed may succeed.
        prop_assert!(
            status >= 400 || (method == "GET" && path.starts_with("/events")),
            "{method} {path}: {status}"
        );
        prop_assert_eq!(
            (todos, events),
            (1, 1),
            "{} {}: nothing written",
            method,
            path
        );
        Ok(())
    });
    runtime.block_on(app.stop());
    if let Err(failure) = result {
        panic!("{failure} (PROPTEST_SEED={hex})");
    }
}
