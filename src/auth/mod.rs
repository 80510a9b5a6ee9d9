//! Who is calling: JWT verification (HS256 embedded, RS256 via JWKS) and the resulting identity.

mod claims;
mod jwks;
mod secret;
mod verifier;

pub use claims::{Claims, Identity, Permission};
pub use secret::load_or_create_secret;
pub use verifier::{AuthError, Verifier, mint_token};

/// The token of an `Authorization` header: `Bearer <jwt>`, or the bare `<jwt>` that
/// `aws-appsync-auth-link` sends.
pub fn token_from_header(value: &str) -> Option<&str> {
    let value = value.trim();
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return None,
        // A scheme with nothing after it is no token.
        None if value.eq_ignore_ascii_case("bearer") => return None,
        None => value,
    };
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::token_from_header;

    #[test]
    fn bearer_and_bare_tokens_are_both_accepted() {
        assert_eq!(token_from_header("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(token_from_header("bearer  abc.def.ghi "), Some("abc.def.ghi"));
        assert_eq!(token_from_header("abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(token_from_header("Basic dXNlcjpwYXNz"), None);
        assert_eq!(token_from_header("Bearer "), None);
        assert_eq!(token_from_header(""), None);
    }
}
