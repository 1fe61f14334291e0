//! `GET /`: the live page (`page.html`, plain HTML, CSS and JavaScript compiled into the
//! binary; nothing loaded from elsewhere). It lists the read model, keeps it current from
//! `GET /todos/stream`, shows `/stats`, and writes through command-service at
//! `COMMAND_SERVICE_URL` (the service's configuration, written into the page; nothing in the
//! page's address can point it elsewhere), showing for each write its version and how long
//! after its answer the read side had it.
//!
//! The page cannot be turned against its user: its `Content-Security-Policy` runs only its own
//! script and style (by their SHA-256, so an injected `<script>` or handler runs nothing), lets
//! it connect only to this service and command-service, be framed by no one, take no `<base>`
//! and submit no form anywhere; `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and
//! `Referrer-Policy: no-referrer` beside it.

use base64::Engine;
use sha2::{Digest, Sha256};
use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

const PAGE: &str = include_str!("page.html");

/// The page as served and its `Content-Security-Policy`, made once at start.
#[derive(Clone)]
pub struct Page {
    html: String,
    policy: HeaderValue,
}

impl Page {
    /// The page writing to `command_service_url`, an origin (`events::service::check_origin`;
    /// the settings refuse any other value).
    pub fn new(command_service_url: &str) -> anyhow::Result<Self> {
        let html = PAGE.replace("{{COMMAND_SERVICE_URL}}", &escape(command_service_url));
        let policy = format!(
            "default-src 'self'; script-src {}; style-src {}; connect-src 'self' {}; \
             img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hashes(&html, "script")?,
            hashes(&html, "style")?,
            command_service_url
        );
        Ok(Self {
            policy: HeaderValue::from_str(&policy)?,
            html,
        })
    }

    /// The `Content-Security-Policy` the page is served with.
    pub fn policy(&self) -> &str {
        self.policy.to_str().unwrap_or_default()
    }
}

/// `'sha256-…'` of each inline `<tag>` element of `html`, as CSP hashes them (the text between
/// the tags, byte for byte).
fn hashes(html: &str, tag: &str) -> anyhow::Result<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let end = body
            .find(&close)
            .ok_or_else(|| anyhow::anyhow!("page.html: <{tag}> without </{tag}>"))?;
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        found.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end..];
    }
    anyhow::ensure!(!found.is_empty(), "page.html has no <{tag}>");
    Ok(found.join(" "))
}

/// `text` for an HTML attribute value.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn page(page: Page) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end().and(warp::get()).map(move || {
        let mut response = page.html.clone().into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CONTENT_SECURITY_POLICY, page.policy.clone());
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hashes_the_pages_own_script_and_style_and_names_the_command_service() {
        let page = Page::new("http://127.0.0.1:5001").expect("page");
        let policy = page.policy();
        for directive in [
            "default-src 'self'",
            "connect-src 'self' http://127.0.0.1:5001",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "object-src 'none'",
        ] {
            assert!(policy.contains(directive), "{directive}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(
            page.html.matches("<script>").count(),
            1,
            "one inline script, hashed"
        );
        assert!(
            page.html
                .contains(r#"<meta name="command-service" content="http://127.0.0.1:5001">"#),
            "the page is told where to write"
        );
        assert!(
            !page.html.contains("location.search"),
            "no address parameter"
        );
    }

    #[test]
    fn the_url_is_escaped_into_the_page() {
        assert_eq!(escape(r#"a"<b>'&"#), "a&quot;&lt;b&gt;&#39;&amp;");
    }
}
