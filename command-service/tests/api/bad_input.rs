use crate::helpers::*;
use serde_json::Value;

struct Case {
    why: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
}

fn case(why: &'static str, method: &'static str, path: &str, body: &str, status: u16) -> Case {
    Case {
        why,
        method,
        path: path.to_string(),
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
    }
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
        ),
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

    for c in cases {
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).expect("method");
        let mut request = app
            .client
            .request(method, app.url(&c.path))
            .body(c.body.clone());
        if let Some(ct) = c.content_type {
            request = request.header("content-type", ct);
        }
        if c.why == "malformed If-Match" {
            request = request.header("if-match", "1");
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
