//! `CORS_ORIGINS`: a browser on an allowed origin (by default query-service's live page on this
//! machine) may call the API, preflight included; one on another origin is refused with 403
//! and writes nothing; a request with no `Origin` (curl, services) is served as always.

use crate::helpers::*;

#[tokio::test]
async fn allowed_origins_may_write_others_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let post = |origin: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url("/todos"))
            .header("content-type", "application/json")
            .body(r#"{"title":"from a page"}"#);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    // The page's preflight for a JSON POST.
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/todos"))
        .header("origin", "http://localhost:5002")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:5002"
    );
    assert_eq!(
        preflight.headers()["vary"],
        "origin",
        "a preflight varies by Origin"
    );
    for origin in ["http://localhost:5002", "http://127.0.0.1:5002"] {
        let response = post(Some(origin)).await.expect("post");
        assert_eq!(response.status(), 201, "{origin}");
        assert_eq!(response.headers()["access-control-allow-origin"], origin);
        assert_eq!(
            response.headers()["vary"],
            "origin",
            "{origin}: varies by Origin"
        );
        let exposed = response.headers()["access-control-expose-headers"]
            .to_str()
            .expect("ascii")
            .to_lowercase();
        assert!(exposed.contains("etag"), "{exposed}");
    }
    let before = (app.count("todos").await, app.count("events").await);
    let refused = post(Some("http://evil.example")).await.expect("post");
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        refused.headers()["vary"],
        "origin",
        "a refusal varies by Origin"
    );
    assert_eq!(
        (app.count("todos").await, app.count("events").await),
        before,
        "a refused origin wrote"
    );
    let without = post(None).await.expect("post");
    assert_eq!(without.status(), 201, "no Origin: served");
    assert_eq!(
        without.headers()["vary"],
        "origin",
        "an answer without Origin varies by it too (a cache must not hand it to a page)"
    );
    app.stop().await;
}
