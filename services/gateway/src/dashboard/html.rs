//! HTML building blocks: escaping, the page frame (navigation, the CSRF
//! secret for the script, the security headers) and the login form.

use std::fmt::Write;

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::Principal;

/// Only this origin: nothing is fetched from the internet, and no inline
/// script or style runs.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self'; \
                   style-src 'self'; script-src 'self'; connect-src 'self'; \
                   frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Text made safe for HTML content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text made safe inside a URL's path segment or query value.
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A whole page: `page` names it for the script (`<body data-page>`),
/// `data` adds attributes to the body.
pub fn page(
    title: &str,
    page: &str,
    caller: &Principal,
    csrf: &str,
    data: &[(&str, String)],
    body: &str,
) -> Response {
    let mut attributes = String::new();
    for (name, value) in data {
        let _ = write!(attributes, " data-{name}=\"{}\"", esc(value));
    }
    let nav = |href: &str, name: &str, label: &str| {
        let current = if name == page {
            " class=\"current\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf-token\" content=\"{csrf}\"><title>{title} · Kiln</title>\
         <link rel=\"icon\" href=\"/favicon.ico\"><link rel=\"stylesheet\" href=\"/static/kiln.css\">\
         <script src=\"/static/kiln.js\" defer></script></head>\
         <body data-page=\"{page}\" data-user=\"{user}\" data-role=\"{role}\"{attributes}>\
         <header><strong class=\"brand\">Kiln</strong><nav>{jobs}{workers}{timeline}{submit}</nav>\
         <span class=\"who\">{user} <small>({role})</small> \
         <button type=\"button\" id=\"logout\">Log out</button></span></header>\
         <main>{body}</main></body></html>",
        csrf = esc(csrf),
        title = esc(title),
        page = esc(page),
        user = esc(&caller.name),
        role = caller.role.as_str(),
        jobs = nav("/", "jobs", "Jobs"),
        workers = nav("/workers", "workers", "Workers"),
        timeline = nav("/timeline", "timeline", "Timeline"),
        submit = nav("/submit", "submit", "Submit"),
    );
    secured(Html(html).into_response())
}

/// The login form, with an error when the last try failed.
pub fn login(error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · Kiln</title>\
         <link rel=\"icon\" href=\"/favicon.ico\"><link rel=\"stylesheet\" href=\"/static/kiln.css\"></head>\
         <body data-page=\"login\"><main class=\"login\"><h1>Kiln</h1>\
         <form method=\"post\" action=\"/login\"><label for=\"token\">Access token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required \
         placeholder=\"kiln_...\"><button type=\"submit\" id=\"login\">Log in</button></form>{error}\
         <p class=\"hint\">Paste a token from <code>kiln token create</code> (or the one <code>kiln dev</code> \
         printed). It is exchanged for a session cookie and not kept in the browser.</p></main></body></html>"
    );
    secured(Html(html).into_response())
}

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_urls_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b/ü?"), "a%20b%2F%C3%BC%3F");
    }
}
