//! Content negotiation of GraphQL over HTTP: which response media type an `Accept` header
//! asks for, and whether a request body's `Content-Type` is one we read.

/// The response media types of the GraphQL-over-HTTP spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseType {
    /// `application/json`: every GraphQL result, request errors included, is a 200.
    Json,
    /// `application/graphql-response+json`: request errors (unparsable, invalid) are 4xx.
    GraphqlResponse,
}

impl ResponseType {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json; charset=utf-8",
            Self::GraphqlResponse => "application/graphql-response+json; charset=utf-8",
        }
    }
}

/// The best response type `accept` allows; `None` when it allows neither. No header, `*/*` and
/// `application/*` mean `application/json`, as the spec asks for legacy clients (and AppSync).
pub fn negotiate(accept: Option<&str>) -> Option<ResponseType> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Some(ResponseType::Json);
    };
    let mut best: Option<(f32, ResponseType)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let kind = match media.as_str() {
            "application/graphql-response+json" => ResponseType::GraphqlResponse,
            "application/json" | "application/*" | "*/*" => ResponseType::Json,
            _ => continue,
        };
        // Ties keep the first listed.
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, kind));
        }
    }
    best.map(|(_, kind)| kind)
}

/// Whether a POST body of `content_type` is a JSON GraphQL request (UTF-8, the only charset
/// the spec allows).
pub fn is_json_request(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or_default().trim();
    let charset_ok = parts
        .filter_map(|p| p.trim().split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .all(|(_, v)| v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8"));
    media.eq_ignore_ascii_case("application/json") && charset_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResponseType::*;

    #[test]
    fn accept_headers_pick_the_spec_media_type() {
        assert_eq!(negotiate(None), Some(Json));
        assert_eq!(negotiate(Some("*/*")), Some(Json));
        assert_eq!(negotiate(Some("application/json")), Some(Json));
        assert_eq!(
            negotiate(Some("application/graphql-response+json")),
            Some(GraphqlResponse)
        );
        // Apollo Client and graphql-http's client.
        assert_eq!(
            negotiate(Some("application/graphql-response+json, application/json;q=0.9")),
            Some(GraphqlResponse)
        );
        assert_eq!(
            negotiate(Some(
                "application/json;q=0.5, application/graphql-response+json;q=0.4"
            )),
            Some(Json)
        );
        assert_eq!(negotiate(Some("text/html")), None);
        assert_eq!(negotiate(Some("application/json;q=0")), None);
    }

    #[test]
    fn only_utf8_json_bodies_are_read() {
        assert!(is_json_request(Some("application/json")));
        assert!(is_json_request(Some("application/json; charset=utf-8")));
        assert!(is_json_request(Some("Application/JSON;charset=\"UTF-8\"")));
        assert!(!is_json_request(Some("application/json; charset=latin1")));
        assert!(!is_json_request(Some("text/plain")));
        assert!(!is_json_request(Some("multipart/form-data; boundary=x")));
        assert!(!is_json_request(None));
    }
}
