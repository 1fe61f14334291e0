use crate::helpers::*;
use serde_json::Value;
use std::time::Duration;

struct Case {
    why: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
}

fn case(why: &'static str, method: &'static str, path: &str, body: &str, status: u16) -> Case {
    Case {
        why,
        method,
        path: path.to_string(),
        content_type: Some("application/json"),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
        status,
    }
}

impl Case {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    fn bytes(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }
}

/// The baseline todo's row as PostgreSQL holds it: a rejected request must leave it as it was.
pub async fn row(app: &TestApp, id: i64) -> String {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    use diesel_async::RunQueryDsl;
    let mut conn = app.db().await;
    let r: Row = diesel::sql_query(format!(
        "SELECT todos::text AS row FROM todos WHERE id = {id}"
    ))
    .get_result(&mut conn)
    .await
    .expect("the baseline row");
    r.row
}

#[tokio::test]
async fn bad_input_is_rejected_with_problem_json_and_writes_nothing() {
    let app = spawn_app().await;
    // One todo to aim updates at; its row and event are the baseline.
    let id = app.create("baseline").await["id"].as_i64().expect("id");
    let todo = format!("/todos/{id}");
    let mut cases = vec![
        case("malformed JSON", "POST", "/todos", r#"{"title": "#, 400),
        case("empty body", "POST", "/todos", "", 400),
        case("blank title", "POST", "/todos", r#"{"title":"   "}"#, 422),
        case(
            "a title of zero-width, joiner, BOM and bidi characters only",
            "POST",
            "/todos",
            r#"{"title":"\u200b\u200d\u2060\ufeff\u202e\u2066\u200e\u00ad "}"#,
            422,
        ),
        case(
            "a PUT title of invisible characters only",
            "PUT",
            &todo,
            r#"{"title":"\u202a\u2069"}"#,
            422,
        ),
        case(
            "missing title",
            "POST",
            "/todos",
            r#"{"description":"x"}"#,
            422,
        ),
        case(
            "201-character title",
            "POST",
            "/todos",
            &format!(r#"{{"title":"{}"}}"#, "t".repeat(201)),
            422,
        ),
        case(
            "2001-character description",
            "POST",
            "/todos",
            &format!(r#"{{"title":"t","description":"{}"}}"#, "d".repeat(2001)),
            422,
        ),
        case(
            "unknown field",
            "POST",
            "/todos",
            r#"{"title":"t","priority":"high"}"#,
            422,
        ),
        case(
            "wrong type for title",
            "POST",
            "/todos",
            r#"{"title":42}"#,
            422,
        ),
        case(
            "wrong type for completed",
            "POST",
            "/todos",
            r#"{"title":"t","completed":"yes"}"#,
            422,
        ),
        case(
            "body is an array",
            "POST",
            "/todos",
            r#"[{"title":"t"}]"#,
            422,
        ),
        case("PATCH with nothing to change", "PATCH", &todo, "{}", 422),
        case(
            "PATCH with null title",
            "PATCH",
            &todo,
            r#"{"title":null}"#,
            422,
        ),
        case(
            "PATCH with unknown field",
            "PATCH",
            &todo,
            r#"{"done":true}"#,
            422,
        ),
        case("PATCH malformed", "PATCH", &todo, "{", 400),
        case(
            "PUT without title",
            "PUT",
            &todo,
            r#"{"completed":true}"#,
            422,
        ),
        case(
            "non-numeric id",
            "PATCH",
            "/todos/abc",
            r#"{"completed":true}"#,
            404,
        ),
        case(
            "unknown id",
            "PATCH",
            "/todos/987654",
            r#"{"completed":true}"#,
            404,
        ),
        case("zero id", "PUT", "/todos/0", r#"{"title":"t"}"#, 404),
        case(
            "an id past 2^53 - 1",
            "PATCH",
            "/todos/9007199254740992",
            r#"{"completed":true}"#,
            404,
        ),
        case(
            "an id of i64::MAX",
            "DELETE",
            "/todos/9223372036854775807",
            "",
            404,
        ),
        case("negative id", "DELETE", "/todos/-3", "", 404),
        case("unknown id on DELETE", "DELETE", "/todos/987654", "", 404),
        case(
            "id past i64",
            "DELETE",
            "/todos/99999999999999999999",
            "",
            404,
        ),
        case("unknown route", "GET", "/nowhere", "", 404),
        case("wrong method on /todos", "GET", "/todos", "", 405),
        case(
            "wrong method on /todos/{id}",
            "POST",
            &todo,
            r#"{"title":"t"}"#,
            405,
        ),
        case("wrong method on /events", "POST", "/events", "{}", 405),
        case(
            "malformed If-Match",
            "PATCH",
            &todo,
            r#"{"completed":true}"#,
            400,
        )
        .header("if-match", "1"),
        case(
            "a key given twice",
            "POST",
            "/todos",
            r#"{"title":"t","title":"u"}"#,
            422,
        ),
        case("JSON null as the body", "POST", "/todos", "null", 422),
        case("a number as the body", "POST", "/todos", "42", 422),
        case(
            "trailing garbage after the JSON",
            "POST",
            "/todos",
            r#"{"title":"t"} x"#,
            400,
        ),
        case(
            "a byte-order mark before the JSON",
            "POST",
            "/todos",
            "\u{feff}{\"title\":\"t\"}",
            400,
        ),
        case("invalid UTF-8", "POST", "/todos", "", 400).bytes(b"{\"title\":\"\xff\xfe\"}"),
        case(
            "a lone surrogate escape",
            "POST",
            "/todos",
            r#"{"title":"\ud800"}"#,
            400,
        ),
        case(
            "a control character in the title",
            "POST",
            "/todos",
            r#"{"title":"bell\u0007"}"#,
            422,
        ),
        case(
            "an escape character in the description",
            "PUT",
            &todo,
            r#"{"title":"t","description":"\u001b[31m"}"#,
            422,
        ),
        case(
            "201 characters of emoji",
            "POST",
            "/todos",
            &format!(r#"{{"title":"{}"}}"#, "🦀".repeat(201)),
            422,
        ),
        case(
            "a number past f64",
            "POST",
            "/todos",
            r#"{"title":"t","completed":1e999}"#,
            400,
        ),
        case(
            "a huge integer for completed",
            "POST",
            "/todos",
            r#"{"title":"t","completed":123456789012345678901234567890}"#,
            422,
        ),
        case(
            "nesting 10,000 deep",
            "POST",
            "/todos",
            &format!(
                r#"{{"title":"t","description":{}{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
            400,
        ),
        case(
            "description an object",
            "PATCH",
            &todo,
            r#"{"description":{"text":"x"}}"#,
            422,
        ),
        case(
            "completed null",
            "PATCH",
            &todo,
            r#"{"completed":null}"#,
            422,
        ),
        case(
            "a weak If-Match tag",
            "PATCH",
            &todo,
            r#"{"completed":true}"#,
            412,
        )
        .header("if-match", "W/\"1\""),
        case("a stale If-Match", "DELETE", &todo, "", 412).header("if-match", "\"7\""),
        case(
            "If-Match * on a missing todo",
            "PUT",
            "/todos/987654",
            r#"{"title":"t"}"#,
            412,
        )
        .header("if-match", "*"),
        case(
            "an empty Idempotency-Key",
            "POST",
            "/todos",
            r#"{"title":"t"}"#,
            400,
        )
        .header("idempotency-key", ""),
        case(
            "a 256-character Idempotency-Key",
            "POST",
            "/todos",
            r#"{"title":"t"}"#,
            400,
        )
        .header("idempotency-key", &"k".repeat(256)),
        case(
            "feed after a negative position",
            "GET",
            "/events?after=-1",
            "",
            400,
        ),
        case(
            "feed after a number past i64",
            "GET",
            "/events?after=99999999999999999999",
            "",
            400,
        ),
        case(
            "feed limit past the maximum",
            "GET",
            "/events?limit=1001",
            "",
            400,
        ),
        case(
            "feed with an unknown parameter",
            "GET",
            "/events?page=2",
            "",
            400,
        ),
        case("OPTIONS on /todos", "OPTIONS", "/todos", "", 405),
    ];
    let mut wrong_type = case(
        "wrong content type",
        "POST",
        "/todos",
        r#"{"title":"t"}"#,
        415,
    );
    wrong_type.content_type = Some("text/plain");
    cases.push(wrong_type);
    let mut no_type = case("no content type", "POST", "/todos", r#"{"title":"t"}"#, 415);
    no_type.content_type = None;
    cases.push(no_type);
    let huge = format!(
        r#"{{"title":"t","description":"{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    cases.push(case("multi-megabyte body", "POST", "/todos", &huge, 413));
    // MAX_BODY_BYTES is 65536 by default: one byte over is refused, by Content-Length.
    let frame = r#"{"title":"t","description":""}"#.len();
    let over = format!(
        r#"{{"title":"t","description":"{}"}}"#,
        "x".repeat(65_536 + 1 - frame)
    );
    assert_eq!(over.len(), 65_537);
    cases.push(case(
        "one byte over the body limit",
        "POST",
        "/todos",
        &over,
        413,
    ));
    assert!(cases.len() >= 50, "{} classes", cases.len());
    let baseline = row(&app, id).await;

    for c in cases {
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).expect("method");
        let mut request = app
            .client
            .request(method, app.url(&c.path))
            .body(c.body.clone());
        if let Some(ct) = c.content_type {
            request = request.header("content-type", ct);
        }
        for (name, value) in &c.headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status().as_u16(), c.status, "{}: status", c.why);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{}: content type",
            c.why
        );
        let problem: Value = response.json().await.expect("problem JSON");
        assert_eq!(problem["status"], c.status, "{}: status field", c.why);
        for field in ["type", "title", "detail"] {
            assert!(
                problem[field].is_string(),
                "{}: problem has {field}: {problem}",
                c.why
            );
        }
        if c.status == 422 && c.why != "PATCH with nothing to change" {
            assert!(
                problem["errors"].as_array().is_some_and(|e| !e.is_empty()),
                "{}: names fields: {problem}",
                c.why
            );
        }
        assert_eq!(app.count("todos").await, 1, "{}: no todo written", c.why);
        assert_eq!(app.count("events").await, 1, "{}: no event written", c.why);
        assert_eq!(
            row(&app, id).await,
            baseline,
            "{}: the row is as it was",
            c.why
        );
    }
    // The baseline todo is untouched.
    let events = app.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["version"], 1);
    app.stop().await;
}

/// PostgreSQL's text cannot hold U+0000: a title or description with one is the client's
/// mistake (422 naming the field), on every route that takes them.
#[tokio::test]
async fn a_nul_character_in_title_or_description_is_422_naming_the_field_and_writes_nothing() {
    let app = spawn_app().await;
    let id = app.create("baseline").await["id"].as_i64().expect("id");
    let todo = format!("/todos/{id}");
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("POST", "/todos", r#"{"title":"a\u0000b"}"#, "title"),
        (
            "POST",
            "/todos",
            r#"{"title":"t","description":"x\u0000"}"#,
            "description",
        ),
        ("PUT", &todo, r#"{"title":"\u0000"}"#, "title"),
        (
            "PUT",
            &todo,
            r#"{"title":"t","description":"\u0000y"}"#,
            "description",
        ),
        ("PATCH", &todo, r#"{"title":"a\u0000"}"#, "title"),
        ("PATCH", &todo, r#"{"description":"\u0000"}"#, "description"),
    ];
    for (method, path, body, field) in cases {
        let why = format!("{method} {body}");
        let response = app.send(method, path, Some(body)).await;
        assert_eq!(response.status(), 422, "{why}: status");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{why}: content type"
        );
        let problem: Value = response.json().await.expect("problem JSON");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert_eq!(fields, [field], "{why}: {problem}");
        assert_eq!(app.count("todos").await, 1, "{why}: no todo written");
        assert_eq!(app.count("events").await, 1, "{why}: no event written");
    }
    let events = app.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["title"], "baseline");
    app.stop().await;
}

/// JSON parsers disagree on which of two equal keys wins; a body that holds one twice is
/// refused (422 naming the field) rather than read one way here and another way elsewhere.
#[tokio::test]
async fn a_body_with_a_repeated_key_is_422_naming_the_field_and_writes_nothing() {
    let app = spawn_app().await;
    let id = app.create("baseline").await["id"].as_i64().expect("id");
    let todo = format!("/todos/{id}");
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("POST", "/todos", r#"{"title":"t","title":"u"}"#, "title"),
        (
            "POST",
            "/todos",
            r#"{"title":"t","completed":false,"completed":true}"#,
            "completed",
        ),
        (
            "PUT",
            &todo,
            r#"{"title":"t","description":null,"description":"d"}"#,
            "description",
        ),
        ("PATCH", &todo, r#"{"title":"t","title":"t"}"#, "title"),
    ];
    for (method, path, body, field) in cases {
        let why = format!("{method} {body}");
        let response = app.send(method, path, Some(body)).await;
        assert_eq!(response.status(), 422, "{why}: status");
        let problem: Value = response.json().await.expect("problem JSON");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert_eq!(fields, [field], "{why}: {problem}");
        assert_eq!(app.count("todos").await, 1, "{why}: no todo written");
        assert_eq!(app.count("events").await, 1, "{why}: no event written");
    }
    app.stop().await;
}

/// Sends `body` chunked (`Transfer-Encoding: chunked`, no `Content-Length`) in chunks of 256
/// bytes over a connection of its own; returns the status the service answered.
async fn send_chunked(app: &TestApp, method: &str, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(256) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The service may answer before it read everything; what it answered is what counts.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {answer:?}"))
}

/// A body over `MAX_BODY_BYTES` is 413 on every route that takes one, however it comes: with
/// a `Content-Length` past the limit, or chunked with no length at all (counted while it is
/// read). The same body under the limit, chunked, is taken: the size is what is refused.
#[tokio::test]
async fn a_body_over_the_limit_is_413_on_post_patch_and_put_also_chunked_without_a_length() {
    let app = spawn_app_with(Options {
        extra: vec![("MAX_BODY_BYTES", "1024".into())],
        ..Options::default()
    })
    .await;
    let id = app.create("baseline").await["id"].as_i64().expect("id");
    let todo = format!("/todos/{id}");
    let baseline = row(&app, id).await;
    // Valid but for its size: 1,500 characters of description are within the field's 2,000.
    let over = format!(r#"{{"title":"t","description":"{}"}}"#, "x".repeat(1500));
    for (method, path) in [("POST", "/todos"), ("PATCH", &todo), ("PUT", &todo)] {
        let response = app.send(method, path, Some(&over)).await;
        assert_eq!(response.status(), 413, "{method} with Content-Length");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let status = send_chunked(&app, method, path, over.as_bytes()).await;
        assert_eq!(status, 413, "{method} chunked");
        assert_eq!(app.count("todos").await, 1, "{method}: no todo written");
        assert_eq!(app.count("events").await, 1, "{method}: no event written");
        assert_eq!(row(&app, id).await, baseline, "{method}: the row as it was");
    }
    let under = format!(r#"{{"title":"t","description":"{}"}}"#, "x".repeat(900));
    assert_eq!(
        send_chunked(&app, "PATCH", &todo, under.as_bytes()).await,
        200
    );
    assert_eq!(
        send_chunked(&app, "POST", "/todos", under.as_bytes()).await,
        201
    );
    app.stop().await;
}

/// PATCH and PUT, like POST, take JSON only: another content type, or none, is 415.
#[tokio::test]
async fn a_patch_or_put_whose_body_is_not_declared_json_is_415_and_writes_nothing() {
    let app = spawn_app().await;
    let id = app.create("baseline").await["id"].as_i64().expect("id");
    let todo = format!("/todos/{id}");
    let baseline = row(&app, id).await;
    for method in ["PATCH", "PUT"] {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let why = format!("{method} content-type {content_type:?}");
            let mut request = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    app.url(&todo),
                )
                .body(r#"{"title":"changed","completed":true}"#);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), 415, "{why}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{why}"
            );
            assert_eq!(app.count("events").await, 1, "{why}: no event written");
            assert_eq!(row(&app, id).await, baseline, "{why}: the row as it was");
        }
    }
    app.stop().await;
}

/// A method a path does not take is 405 with `Allow` listing the methods the route table
/// serves there (RFC 9110 15.5.6), as problem+json.
#[tokio::test]
async fn a_method_the_path_does_not_take_is_405_with_allow_naming_the_methods_it_takes() {
    let app = spawn_app().await;
    // (why, method, path, Allow)
    let cases = [
        ("GET on the collection", "GET", "/todos", "POST"),
        ("DELETE on the collection", "DELETE", "/todos", "POST"),
        ("POST on a todo", "POST", "/todos/1", "DELETE, PATCH, PUT"),
        ("GET on a todo", "GET", "/todos/1", "DELETE, PATCH, PUT"),
        ("POST on the feed", "POST", "/events", "GET"),
        ("PUT on readiness", "PUT", "/ready", "GET"),
        ("a method no route takes", "TRACE", "/health", "GET"),
    ];
    for (why, method, path, allow) in cases {
        let response = app.send(method, path, None).await;
        assert_eq!(response.status(), 405, "{why}");
        assert_eq!(response.headers()["allow"], allow, "{why}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{why}"
        );
        assert!(response.headers().contains_key("x-request-id"), "{why}");
    }
    app.stop().await;
}
