//! The OpenAPI document served at `/openapi.json` describes what the service answers: each
//! answer below, one per documented operation and per error class the service can give
//! without a store outage, has a documented status, content type and a body that fits the
//! documented schema (no field missing, none undocumented, every type right).

use events::service::openapi::{check_answer, operations, template_of};
use serde_json::Value;
use std::collections::BTreeSet;

/// Method, path, content type, headers, body, and the status expected.
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
);

#[tokio::test]
async fn every_answer_fits_the_schema_documented_for_its_route_and_status() {
    let app = command_service::testing::spawn_app_with(command_service::testing::Options {
        extra: vec![("OPERATOR_TOKENS", "dpo:o1".into())],
        ..Default::default()
    })
    .await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("document")
        .json()
        .await
        .expect("json");
    let created: Value = app
        .client
        .post(app.url("/todos"))
        .json(&serde_json::json!({"title": "documented", "description": "d"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_i64().expect("id");
    let todo = format!("/todos/{id}");
    let json = "application/json";
    let big = format!(r#"{{"title":"{}"}}"#, "x".repeat(70_000));
    let requests: Vec<Case> = vec![
        (
            "POST",
            "/todos".into(),
            Some(json),
            vec![],
            r#"{"title":"a","completed":true}"#.into(),
            201,
        ),
        (
            "POST",
            "/todos".into(),
            Some(json),
            vec![("idempotency-key", "k1")],
            r#"{"title":"k"}"#.into(),
            201,
        ),
        (
            "POST",
            "/todos".into(),
            Some(json),
            vec![("idempotency-key", "k1")],
            r#"{"title":"k"}"#.into(),
            201,
        ),
        (
            "POST",
            "/todos".into(),
            Some(json),
            vec![("idempotency-key", "k1")],
            r#"{"title":"other"}"#.into(),
            422,
        ),
        ("POST", "/todos".into(), Some(json), vec![], "{".into(), 400),
        (
            "POST",
            "/todos".into(),
            Some("text/plain"),
            vec![],
            "x".into(),
            415,
        ),
        ("POST", "/todos".into(), Some(json), vec![], big, 413),
        (
            "POST",
            "/todos".into(),
            Some(json),
            vec![],
            r#"{"title":""}"#.into(),
            422,
        ),
        (
            "PATCH",
            todo.clone(),
            Some(json),
            vec![],
            r#"{"completed":true}"#.into(),
            200,
        ),
        (
            "PATCH",
            todo.clone(),
            Some(json),
            vec![("if-match", "\"99\"")],
            r#"{"completed":false}"#.into(),
            412,
        ),
        (
            "PATCH",
            todo.clone(),
            Some(json),
            vec![("if-match", "nonsense")],
            r#"{"completed":false}"#.into(),
            400,
        ),
        (
            "PATCH",
            "/todos/999999".into(),
            Some(json),
            vec![],
            r#"{"completed":true}"#.into(),
            404,
        ),
        ("PATCH", todo.clone(), Some(json), vec![], "{}".into(), 422),
        (
            "PUT",
            todo.clone(),
            Some(json),
            vec![],
            r#"{"title":"put","description":null}"#.into(),
            200,
        ),
        (
            "PUT",
            todo.clone(),
            Some("text/plain"),
            vec![],
            "x".into(),
            415,
        ),
        (
            "GET",
            "/events?after=0&limit=10".into(),
            None,
            vec![],
            String::new(),
            200,
        ),
        (
            "GET",
            "/events?limit=0".into(),
            None,
            vec![],
            String::new(),
            400,
        ),
        ("GET", "/health".into(), None, vec![], String::new(), 200),
        ("GET", "/ready".into(), None, vec![], String::new(), 200),
        ("GET", "/metrics".into(), None, vec![], String::new(), 200),
        (
            "GET",
            "/openapi.json".into(),
            None,
            vec![],
            String::new(),
            200,
        ),
        (
            "POST",
            format!("{todo}/erase"),
            None,
            vec![],
            String::new(),
            401,
        ),
        (
            "POST",
            format!("{todo}/erase"),
            None,
            vec![("authorization", "Bearer w-not-an-operator")],
            String::new(),
            403,
        ),
        (
            "POST",
            "/todos/999999/erase".into(),
            None,
            vec![("authorization", "Bearer o1")],
            String::new(),
            404,
        ),
        (
            "POST",
            format!("{todo}/erase"),
            None,
            vec![("authorization", "Bearer o1")],
            String::new(),
            200,
        ),
        (
            "DELETE",
            "/todos/999999".into(),
            None,
            vec![],
            String::new(),
            404,
        ),
        (
            "DELETE",
            todo.clone(),
            None,
            vec![("if-match", "\"1\"")],
            String::new(),
            412,
        ),
        ("DELETE", todo.clone(), None, vec![], String::new(), 204),
    ];
    let mut errors = Vec::new();
    let mut exercised = BTreeSet::new();
    for (method, path, content_type, headers, body, expected) in requests {
        let mut request = app
            .client
            .request(method.parse().expect("method"), app.url(&path));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        for (k, v) in headers {
            request = request.header(k, v);
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        assert_eq!(status, expected, "{method} {path}");
        let answered_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_string());
        let bytes = response.bytes().await.expect("body");
        errors.extend(check_answer(
            &doc,
            method,
            &path,
            status,
            answered_type.as_deref(),
            &bytes,
        ));
        exercised.insert((
            method.to_lowercase(),
            template_of(&doc, &path).expect("documented path"),
        ));
    }
    assert!(
        errors.is_empty(),
        "answers outside the document:\n{}",
        errors.join("\n")
    );
    assert_eq!(
        exercised,
        operations(&doc),
        "every documented operation answered once"
    );
    app.stop().await;
}
