//! `WRITE_TOKENS` and `FEED_TOKENS`: with write tokens set, every write needs one of them as a
//! bearer token; with feed tokens set, `GET /events` needs one of those, and only those. None
//! is 401 (with `WWW-Authenticate: Bearer`), a token that may not do what the request asks is
//! 403, and a refused request writes nothing (the row, the todo count and the event count stay
//! as they were); the right one is answered as usual, whatever the case of `Bearer`. With
//! `FEED_TOKENS` unset the feed keeps the writes' rule; with both unset all is open. `/ready`
//! says which mode runs for each.

use crate::helpers::*;
use serde_json::Value;

/// The todo's row as PostgreSQL holds it, or `deleted`: a refused request must leave it as it
/// was.
async fn row(app: &TestApp, id: i64) -> String {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    use diesel_async::RunQueryDsl;
    let mut conn = app.db().await;
    let r: Row = diesel::sql_query(format!(
        "SELECT coalesce((SELECT todos::text FROM todos WHERE id = {id}), 'deleted') AS row"
    ))
    .get_result(&mut conn)
    .await
    .expect("the row");
    r.row
}

/// What a request with one `Authorization` header is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The route's own answer.
    Pass,
    /// Refused with this status, writing nothing.
    Refused(u16),
}

async fn ready(app: &TestApp) -> Value {
    app.client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn with_write_tokens_no_token_is_401_another_403_the_right_one_passes_and_refusals_write_nothing(
) {
    let app = spawn_app_with(Options {
        extra: vec![
            ("WRITE_TOKENS", " s3cret-one , s3cret-two ".into()),
            ("FEED_TOKENS", "f33d-one,f33d-two".into()),
        ],
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
    // (method, path, body, its answer, whether it reads the feed)
    let routes: [(&str, &str, Option<&str>, u16, bool); 5] = [
        ("POST", "/todos", Some(r#"{"title":"new"}"#), 201, false),
        ("PATCH", &todo, Some(r#"{"completed":true}"#), 200, false),
        ("PUT", &todo, Some(r#"{"title":"put"}"#), 200, false),
        ("GET", "/events?after=0&limit=10", None, 200, true),
        ("DELETE", &todo, None, 204, false),
    ];
    use Expect::{Pass, Refused};
    // (why, the header, on a write, on the feed)
    let headers: [(&str, Option<&str>, Expect, Expect); 13] = [
        ("no token", None, Refused(401), Refused(401)),
        (
            "a bare token",
            Some("s3cret-one"),
            Refused(401),
            Refused(401),
        ),
        (
            "Basic",
            Some("Basic czNjcmV0LW9uZQ=="),
            Refused(401),
            Refused(401),
        ),
        (
            "Bearer and nothing",
            Some("Bearer "),
            Refused(401),
            Refused(401),
        ),
        (
            "a wrong token",
            Some("Bearer wrong"),
            Refused(403),
            Refused(403),
        ),
        (
            "a truncated token",
            Some("Bearer s3cret-on"),
            Refused(403),
            Refused(403),
        ),
        (
            "a feed token: reads the feed, writes nothing",
            Some("Bearer f33d-one"),
            Refused(403),
            Pass,
        ),
        (
            "a write token: writes, reads no feed while FEED_TOKENS is set",
            Some("Bearer s3cret-two"),
            Pass,
            Refused(403),
        ),
        (
            "bearer in lower case, write token",
            Some("bearer s3cret-one"),
            Pass,
            Refused(403),
        ),
        (
            "BEARER in upper case, write token",
            Some("BEARER s3cret-two"),
            Pass,
            Refused(403),
        ),
        (
            "BeArEr in mixed case, feed token",
            Some("BeArEr f33d-two"),
            Refused(403),
            Pass,
        ),
        (
            "bearer in lower case, feed token",
            Some("bearer f33d-one"),
            Refused(403),
            Pass,
        ),
        (
            "a token of both lists' shape but neither",
            Some("Bearer f33d-one,s3cret-one"),
            Refused(403),
            Refused(403),
        ),
    ];
    for (method, path, body, answer, feed) in routes {
        let mut deleted = false;
        for (why, auth, on_write, on_feed) in headers {
            let expected = if feed { on_feed } else { on_write };
            let before = (
                row(&app, id).await,
                app.count("todos").await,
                app.count("events").await,
            );
            let response = send(method, path, auth, body).await.expect("answer");
            let status = response.status().as_u16();
            match expected {
                Pass => {
                    // A todo deleted once is gone: the next DELETE that passes is 404.
                    let answer = if deleted { 404 } else { answer };
                    assert_eq!(status, answer, "{method} {path}, {why}");
                    deleted |= method == "DELETE";
                }
                Refused(refused) => {
                    assert_eq!(status, refused, "{method} {path}, {why}");
                    assert_eq!(
                        response.headers()["content-type"],
                        "application/problem+json",
                        "{method} {path}, {why}"
                    );
                    if refused == 401 {
                        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{why}");
                    }
                    let after = (
                        row(&app, id).await,
                        app.count("todos").await,
                        app.count("events").await,
                    );
                    assert_eq!(after, before, "{method} {path}, {why}: wrote");
                }
            }
        }
    }
    let body = ready(&app).await;
    assert_eq!(body["checks"]["writes"], "token", "{body}");
    assert_eq!(body["checks"]["feed"], "feed-token", "{body}");
    app.stop().await;

    // (WRITE_TOKENS, FEED_TOKENS, a header, its answer on POST /todos and on GET /events,
    // what /ready says of writes and of the feed)
    type Setting<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        u16,
        u16,
        &'a str,
        &'a str,
    );
    let settings: [Setting; 5] = [
        ("w", "", Some("Bearer w"), 201, 200, "token", "write-token"),
        ("w", "", None, 401, 401, "token", "write-token"),
        ("", "f", None, 201, 401, "open", "feed-token"),
        ("", "f", Some("Bearer f"), 201, 200, "open", "feed-token"),
        ("", "", None, 201, 200, "open", "open"),
    ];
    for (write, feed, auth, on_write, on_feed, writes_mode, feed_mode) in settings {
        let why = format!("WRITE_TOKENS={write:?} FEED_TOKENS={feed:?} with {auth:?}");
        let app = spawn_app_with(Options {
            extra: vec![("WRITE_TOKENS", write.into()), ("FEED_TOKENS", feed.into())],
            ..Options::default()
        })
        .await;
        for (method, path, body, expected) in [
            ("POST", "/todos", Some(r#"{"title":"t"}"#), on_write),
            ("GET", "/events", None, on_feed),
        ] {
            let mut request = app
                .client
                .request(method.parse().expect("method"), app.url(path));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body);
            }
            let status = request.send().await.expect("answer").status().as_u16();
            assert_eq!(status, expected, "{method} {path}, {why}");
        }
        let body = ready(&app).await;
        assert_eq!(body["checks"]["writes"], writes_mode, "{why}: {body}");
        assert_eq!(body["checks"]["feed"], feed_mode, "{why}: {body}");
        app.stop().await;
    }
}
