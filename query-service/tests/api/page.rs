//! The live page at `GET /` cannot be turned against its user: it writes to the
//! command-service of `COMMAND_SERVICE_URL` whatever its address says, and its answer carries a
//! Content-Security-Policy that runs only the page's own script and style (their SHA-256
//! hashes), connects only to this service and that command-service, and lets no one frame it;
//! `X-Content-Type-Options`, `X-Frame-Options` and `Referrer-Policy` beside it.

use crate::helpers::*;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The `'sha256-…'` of the text between `<tag>` and `</tag>` in `html`.
fn inline_hash(html: &str, tag: &str) -> String {
    let start = html.find(&format!("<{tag}>")).expect("an inline element") + tag.len() + 2;
    let end = start + html[start..].find(&format!("</{tag}>")).expect("closed");
    let digest = Sha256::digest(&html.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[tokio::test]
async fn the_page_writes_only_to_the_configured_command_service_and_sends_its_security_headers() {
    let names = Names::new();
    let command_service = "http://127.0.0.1:15999";
    let query = spawn_query_with(&names, &[("COMMAND_SERVICE_URL", command_service)]).await;
    let client = reqwest::Client::new();
    // (why, the page's address)
    let addresses = [
        ("the page", "/"),
        (
            "a link that names another command-service",
            "/?command=http://evil.example:5001",
        ),
        (
            "a link that tries to close the meta tag",
            "/?command=%22%3E%3Cscript%3Ealert(1)%3C/script%3E",
        ),
    ];
    for (why, path) in addresses {
        let response = client.get(query.url(path)).send().await.expect("page");
        assert_eq!(response.status(), 200, "{why}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("{why}: no {name}"))
                .to_str()
                .expect("ascii")
                .to_string()
        };
        assert_eq!(header("content-type"), "text/html; charset=utf-8", "{why}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{why}");
        assert_eq!(header("x-frame-options"), "DENY", "{why}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{why}");
        let html = response.text().await.expect("html");
        let policy = header("content-security-policy");
        let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
        let expected = [
            "default-src 'self'".to_string(),
            format!("script-src {}", inline_hash(&html, "script")),
            format!("style-src {}", inline_hash(&html, "style")),
            format!("connect-src 'self' {command_service}"),
            "base-uri 'none'".to_string(),
            "form-action 'none'".to_string(),
            "frame-ancestors 'none'".to_string(),
        ];
        for directive in &expected {
            assert!(
                directives.contains(&directive.as_str()),
                "{why}: {directive} missing from {policy}"
            );
        }
        assert!(!policy.contains("unsafe"), "{why}: {policy}");
        assert_eq!(html.matches("<script").count(), 1, "{why}: one script");
        assert!(
            html.contains(&format!(
                r#"<meta name="command-service" content="{command_service}">"#
            )),
            "{why}: the page writes to COMMAND_SERVICE_URL"
        );
        for foreign in ["evil.example", "alert(1)", "location.search"] {
            assert!(!html.contains(foreign), "{why}: {foreign} in the page");
        }
    }
    query.stop().await;
    names.cleanup().await;
}
