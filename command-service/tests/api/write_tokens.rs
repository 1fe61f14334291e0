//! `WRITE_TOKENS`: with tokens set, every write and `GET /events` need one of them as a bearer
//! token: none is 401 (with `WWW-Authenticate: Bearer`), another is 403, and a refused request
//! writes nothing (the row, the todo count and the event count stay as they were); the right
//! one is answered as usual. Unset, writes are open. `/ready` says which mode runs.

use crate::bad_input::row;
use crate::helpers::*;
use serde_json::Value;

#[tokio::test]
async fn with_write_tokens_no_token_is_401_another_403_the_right_one_passes_and_refusals_write_nothing(
) {
    let app = spawn_app_with(Options {
        extra: vec![("WRITE_TOKENS", " s3cret-one , s3cret-two ".into())],
        ..Options::default()
    })
    .await;
    let send = |method: &str, path: &str, auth: Option<&str>, body: Option<&str>| {
        let mut request = app
            .client
            .request(method.parse().expect("method"), app.url(path));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        request.send()
    };
    let created = send(
        "POST",
        "/todos",
        Some("Bearer s3cret-one"),
        Some(r#"{"title":"t"}"#),
    )
    .await
    .expect("post");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let todo = format!("/todos/{id}");
    let routes: [(&str, &str, Option<&str>, u16); 5] = [
        ("POST", "/todos", Some(r#"{"title":"new"}"#), 201),
        ("PATCH", &todo, Some(r#"{"completed":true}"#), 200),
        ("PUT", &todo, Some(r#"{"title":"put"}"#), 200),
        ("GET", "/events?after=0&limit=10", None, 200),
        ("DELETE", &todo, None, 204),
    ];
    let refusals: [(Option<&str>, u16); 5] = [
        (None, 401),
        (Some("s3cret-one"), 401),
        (Some("Basic czNjcmV0LW9uZQ=="), 401),
        (Some("Bearer wrong"), 403),
        (Some("Bearer s3cret-on"), 403),
    ];
    for (method, path, body, allowed) in routes {
        for (auth, refused) in refusals {
            let before = (
                row(&app, id).await,
                app.count("todos").await,
                app.count("events").await,
            );
            let response = send(method, path, auth, body).await.expect("answer");
            let status = response.status().as_u16();
            assert_eq!(status, refused, "{method} {path} with {auth:?}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{method} {path} with {auth:?}"
            );
            if refused == 401 {
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
            }
            let after = (
                row(&app, id).await,
                app.count("todos").await,
                app.count("events").await,
            );
            assert_eq!(after, before, "{method} {path} with {auth:?} wrote");
        }
        let response = send(method, path, Some("Bearer s3cret-two"), body)
            .await
            .expect("answer");
        assert_eq!(
            response.status().as_u16(),
            allowed,
            "{method} {path} with the token"
        );
    }
    let ready: Value = app
        .client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["checks"]["writes"], "token", "{ready}");
    app.stop().await;

    // Unset: open, and said so.
    let open = spawn_app().await;
    open.create("open").await; // asserts 201
    let ready: Value = open
        .client
        .get(open.url("/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["checks"]["writes"], "open", "{ready}");
    open.stop().await;
}
