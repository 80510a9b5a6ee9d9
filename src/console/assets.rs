//! The pages and their files, embedded at build time: the binary serves every byte they load,
//! and a strict Content-Security-Policy lets the browser load nothing from anywhere else.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::Settings;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// The same bytes gzipped (`<path>.gz`), for the large vendored files.
    gzip: Option<&'static [u8]>,
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../assets/", $path)),
            gzip: None,
        }
    };
    ($path:literal, $type:expr, gzip) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../assets/", $path)),
            gzip: Some(include_bytes!(concat!("../../assets/", $path, ".gz"))),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `/assets/`; the vendored ones are the npm builds of
/// `assets/vendor/VERSIONS` (`scripts/vendor-assets.sh`, checked by `SHA256SUMS`).
static ASSETS: &[Asset] = &[
    asset!("vendor/react.production.min.js", JS),
    asset!("vendor/react-dom.production.min.js", JS, gzip),
    asset!("vendor/graphiql.min.js", JS, gzip),
    asset!("vendor/graphiql.min.css", CSS, gzip),
    asset!("vendor/graphql-ws.min.js", JS),
    asset!("graphiql/graphiql.js", JS),
    asset!("graphiql/graphiql.css", CSS),
    asset!("console/console.js", JS),
    asset!("console/console.css", CSS),
];

static GRAPHIQL_HTML: &str = include_str!("../../assets/graphiql/index.html");
static CONSOLE_HTML: &str = include_str!("../../assets/console/index.html");

/// The headers every page gets.
#[derive(Clone)]
pub(super) struct Pages {
    csp: Arc<HeaderValue>,
}

impl Pages {
    pub(super) fn new(settings: &Settings) -> Self {
        let policy = content_security_policy(settings);
        Self {
            csp: Arc::new(HeaderValue::from_str(&policy).expect("an ASCII policy")),
        }
    }

    fn page(&self, html: &'static str) -> Response {
        let mut response = (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            html,
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_SECURITY_POLICY, (*self.csp).clone());
        security_headers(headers);
        response
    }
}

/// Scripts, styles, fonts and connections from this origin only (GraphiQL's fonts are
/// `data:` URIs inside its stylesheet; style attributes are set by its editors). The one
/// exception is S3: the console POSTs the file straight to the bucket, as the API tells it.
pub fn content_security_policy(settings: &Settings) -> String {
    let mut connect = String::from("'self'");
    if settings.s3_bucket.is_some() {
        match &settings.s3_endpoint_url {
            Some(url) => {
                connect.push(' ');
                connect.push_str(&url.origin().ascii_serialization());
            }
            None => connect.push_str(" https://*.amazonaws.com"),
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; font-src 'self' data:; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn security_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

pub(super) async fn graphiql(State(pages): State<Pages>) -> Response {
    pages.page(GRAPHIQL_HTML)
}

pub(super) async fn console(State(pages): State<Pages>) -> Response {
    pages.page(CONSOLE_HTML)
}

pub(super) async fn asset(Path(path): Path<String>, request: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    // Our own files change with the binary; the vendored ones only with their version.
    let cache = if asset.path.starts_with("vendor/") {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    let gzip = asset.gzip.filter(|_| accepts_gzip(&request));
    let mut response = (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        gzip.unwrap_or(asset.body),
    )
        .into_response();
    let headers = response.headers_mut();
    if asset.gzip.is_some() {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if gzip.is_some() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    security_headers(headers);
    response
}

/// `Accept-Encoding` names gzip without refusing it (`gzip;q=0`).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_type() {
        for asset in ASSETS {
            let expected = if asset.path.ends_with(".js") { JS } else { CSS };
            assert_eq!(asset.content_type, expected, "{}", asset.path);
            assert!(!asset.body.is_empty(), "{}", asset.path);
        }
    }

    #[test]
    fn pages_load_only_embedded_assets() {
        for html in [GRAPHIQL_HTML, CONSOLE_HTML] {
            for part in html.split(['"', '\'']) {
                if let Some(path) = part.strip_prefix("/assets/") {
                    assert!(ASSETS.iter().any(|a| a.path == path), "{path} is not embedded");
                }
                assert!(!part.starts_with("http"), "external reference {part}");
                assert!(!part.starts_with("//"), "external reference {part}");
            }
        }
    }

    #[test]
    fn gzip_only_when_accepted() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br, zstd"));
        assert!(with("br;q=1.0, gzip;q=0.8"));
        assert!(with("*"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br, identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn policy_allows_only_this_origin_unless_s3() {
        let mut settings = Settings::embedded("/tmp/x");
        let policy = content_security_policy(&settings);
        assert!(policy.contains("connect-src 'self';"), "{policy}");
        assert!(policy.contains("script-src 'self';"), "{policy}");
        settings.s3_bucket = Some("b".into());
        settings.s3_endpoint_url = Some("http://127.0.0.1:9000/x".parse().unwrap());
        let policy = content_security_policy(&settings);
        assert!(
            policy.contains("connect-src 'self' http://127.0.0.1:9000;"),
            "{policy}"
        );
    }
}
