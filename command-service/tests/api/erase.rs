//! Who and why (`actor`, `causation_id`) on every event, and erasure: `POST /todos/{id}/erase`
//! behind `OPERATOR_TOKENS`, and `command-service erase <id>` on the database.

use command_service::testing::{spawn_app_with, Options, TestApp};
use serde_json::{json, Value};

async fn send_as(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request sent")
}

async fn feed(app: &TestApp, token: &str) -> Vec<Value> {
    let response = send_as(app, "GET", "/events?limit=1000", Some(token), None).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("feed")
}

/// A named token writes as its name, an unnamed one as `anonymous`; each request's events carry
/// the request's own id as their cause (one id per request, never shared), beside its
/// correlation id.
#[tokio::test]
async fn every_event_says_who_wrote_it_and_which_request_caused_it() {
    let app = spawn_app_with(Options {
        extra: vec![("WRITE_TOKENS", "alice:a-s3cret, b-s3cret".into())],
        ..Options::default()
    })
    .await;
    let created: Value = send_as(
        &app,
        "POST",
        "/todos",
        Some("a-s3cret"),
        Some(json!({"title": "t"})),
    )
    .await
    .json()
    .await
    .expect("todo");
    let id = created["id"].as_i64().expect("id");
    let patched = app
        .client
        .patch(app.url(&format!("/todos/{id}")))
        .bearer_auth("b-s3cret")
        .header("x-request-id", "conversation-7")
        .json(&json!({"completed": true}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let deleted = send_as(
        &app,
        "DELETE",
        &format!("/todos/{id}"),
        Some("a-s3cret"),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    // The name is no part of the token.
    let refused = send_as(
        &app,
        "POST",
        "/todos",
        Some("alice:a-s3cret"),
        Some(json!({"title": "t"})),
    )
    .await;
    assert_eq!(refused.status(), 403);

    let events = feed(&app, "a-s3cret").await;
    let who: Vec<&str> = events
        .iter()
        .map(|e| e["actor"].as_str().expect("actor"))
        .collect();
    assert_eq!(who, ["alice", "anonymous", "alice"]);
    assert_eq!(events[1]["correlation_id"], "conversation-7");
    let causes: Vec<&str> = events
        .iter()
        .map(|e| e["causation_id"].as_str().expect("causation_id"))
        .collect();
    for cause in &causes {
        assert!(
            uuid::Uuid::parse_str(cause).is_ok(),
            "a request id: {cause}"
        );
    }
    assert!(
        causes[0] != causes[1] && causes[1] != causes[2],
        "{causes:?}"
    );
    assert!(events.iter().all(|e| e["schema_version"] == 3));
}

/// Erasing a todo with history removes its title and description from every event and from
/// the row and the stored `Idempotency-Key` answer, keeps ids, versions, times, `completed` and
/// `due_at`, and appends one `TodoUpdated` to the erased state; a second erasure changes
/// nothing; a deleted todo is erased in its history alone; an unknown one is 404. Erasure over
/// HTTP takes an operator token only, and is closed without `OPERATOR_TOKENS`.
#[tokio::test]
async fn erase_removes_the_text_from_every_event_and_keeps_the_rest() {
    let app = spawn_app_with(Options {
        extra: vec![
            ("WRITE_TOKENS", "w1".into()),
            ("OPERATOR_TOKENS", "dpo:o1".into()),
        ],
        ..Options::default()
    })
    .await;
    let secret = "Call Dr. Jane Roe about the biopsy";
    let original =
        json!({"title": secret, "description": "secret notes", "due_at": "2027-01-02T03:04:05Z"});
    // A create with the one Idempotency-Key of this test.
    let post_keyed = |body: Value| {
        app.client
            .post(app.url("/todos"))
            .bearer_auth("w1")
            .header("idempotency-key", "k-erase-1")
            .json(&body)
            .send()
    };
    let created = post_keyed(original.clone()).await.expect("create");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("todo")["id"]
        .as_i64()
        .expect("id");
    for body in [
        json!({"title": format!("{secret} again")}),
        json!({"completed": true}),
    ] {
        let r = send_as(
            &app,
            "PATCH",
            &format!("/todos/{id}"),
            Some("w1"),
            Some(body),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let before = feed(&app, "w1").await;
    assert_eq!(before.len(), 3);

    // The guard: no token 401, a write token 403, an operator token passes.
    let path = format!("/todos/{id}/erase");
    assert_eq!(send_as(&app, "POST", &path, None, None).await.status(), 401);
    let refused = send_as(&app, "POST", &path, Some("w1"), None).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        feed(&app, "w1").await,
        before,
        "a refused erasure changes nothing"
    );
    let erased = send_as(&app, "POST", &path, Some("o1"), None).await;
    assert_eq!(erased.status(), 200);
    let erased: Value = erased.json().await.expect("erased");
    assert_eq!(erased["events_erased"], 3);
    assert_eq!(erased["appended"], true);
    assert_eq!(erased["todo"]["title"], "(erased)");
    assert_eq!(erased["todo"]["description"], Value::Null);
    assert_eq!(erased["todo"]["version"], 4);
    assert_eq!(erased["todo"]["completed"], true);
    assert!(erased["todo"]["erased_at"].is_string());

    let after = feed(&app, "w1").await;
    let text = serde_json::to_string(&after).expect("json");
    assert!(
        !text.contains("Jane Roe") && !text.contains("secret notes"),
        "{text}"
    );
    assert_eq!(after.len(), 4);
    for (old, new) in before.iter().zip(&after) {
        for kept in [
            "event_id",
            "event_type",
            "todo_id",
            "version",
            "position",
            "occurred_at",
            "correlation_id",
            "causation_id",
            "actor",
            "changed",
        ] {
            assert_eq!(old[kept], new[kept], "{kept} kept");
        }
        for kept in ["completed", "created_at", "updated_at", "due_at"] {
            assert_eq!(old["data"][kept], new["data"][kept], "data.{kept} kept");
        }
        assert_eq!(new["data"]["title"], "(erased)");
        assert_eq!(new["data"]["description"], Value::Null);
        assert_eq!(new["data"]["erased_at"], erased["todo"]["erased_at"]);
    }
    let last = &after[3];
    assert_eq!(last["event_type"], "TodoUpdated");
    assert_eq!(last["actor"], "dpo");
    assert_eq!(last["changed"], json!(["title", "description"]));
    // The stored answer of the create replays erased too.
    let replayed = post_keyed(original.clone()).await.expect("replay");
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let replayed: Value = replayed.json().await.expect("todo");
    assert_eq!(
        (replayed["id"].as_i64(), replayed["title"].as_str()),
        (Some(id), Some("(erased)"))
    );
    assert!(replayed["erased_at"].is_string(), "{replayed}");
    // The key no longer tells a right guess of the text from a wrong one: the hash of the
    // request went with the text, and any body with the key replays the erased answer.
    let guessed = post_keyed(json!({"title": "a wrong guess"}))
        .await
        .expect("guess");
    assert_eq!(guessed.status(), 201);
    assert_eq!(guessed.headers()["idempotent-replayed"], "true");

    // Again: nothing more to do.
    let again: Value = send_as(&app, "POST", &path, Some("o1"), None)
        .await
        .json()
        .await
        .expect("again");
    assert_eq!(
        (again["events_erased"].as_i64(), again["appended"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(feed(&app, "w1").await, after);

    // A new title after the erasure is new text: the todo is no longer marked.
    let renamed: Value = send_as(
        &app,
        "PATCH",
        &format!("/todos/{id}"),
        Some("w1"),
        Some(json!({"title": "new"})),
    )
    .await
    .json()
    .await
    .expect("renamed");
    assert_eq!(
        (renamed["title"].as_str(), renamed["erased_at"].is_null()),
        (Some("new"), true)
    );

    // A deleted todo: its history only, no event appended.
    let gone = app
        .client
        .post(app.url("/todos"))
        .bearer_auth("w1")
        .json(&json!({"title": "to be forgotten"}))
        .send()
        .await
        .expect("create")
        .json::<Value>()
        .await
        .expect("todo")["id"]
        .as_i64()
        .expect("id");
    assert_eq!(
        send_as(&app, "DELETE", &format!("/todos/{gone}"), Some("w1"), None)
            .await
            .status(),
        204
    );
    let count = feed(&app, "w1").await.len();
    let erased: Value = send_as(
        &app,
        "POST",
        &format!("/todos/{gone}/erase"),
        Some("o1"),
        None,
    )
    .await
    .json()
    .await
    .expect("erased");
    assert_eq!(
        (
            erased["events_erased"].as_i64(),
            erased["appended"].as_bool()
        ),
        (Some(1), Some(false))
    );
    assert_eq!(erased["todo"], Value::Null);
    let events = feed(&app, "w1").await;
    assert_eq!(events.len(), count);
    assert!(!serde_json::to_string(&events)
        .expect("json")
        .contains("to be forgotten"));

    // Never a todo: 404, problem+json.
    let missing = send_as(&app, "POST", "/todos/999999/erase", Some("o1"), None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
}

/// Without `OPERATOR_TOKENS` the route is closed (403) and writes nothing; the command on the
/// database erases, its events carrying `--actor`.
#[tokio::test]
async fn erasure_over_http_is_closed_without_operator_tokens_and_the_command_erases() {
    let app = spawn_app_with(Options::default()).await;
    let todo = app.create("Ring Mr. Doe").await;
    let id = todo["id"].as_i64().expect("id");
    let closed = app.send("POST", &format!("/todos/{id}/erase"), None).await;
    assert_eq!(closed.status(), 403);
    let detail: Value = closed.json().await.expect("problem");
    assert!(
        detail["detail"]
            .as_str()
            .is_some_and(|d| d.contains("OPERATOR_TOKENS")),
        "{detail}"
    );
    assert_eq!(app.events().await.len(), 1);

    let settings =
        command_service::testing::test_settings(&app.database_url, &app.exchange, Vec::new());
    let erased = command_service::erase(&settings, id, "ops-cli")
        .await
        .expect("erase");
    assert_eq!((erased.events_erased, erased.appended), (1, true));
    let events = app.events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["actor"], "ops-cli");
    assert!(!serde_json::to_string(&events)
        .expect("json")
        .contains("Doe"));
}
