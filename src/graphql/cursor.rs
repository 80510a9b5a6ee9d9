//! The opaque keyset cursors of the API's lists: base64 of a list's tag and a position, so a
//! cursor of one list is refused by another.

use std::fmt::Display;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The cursor of `position` in the list tagged `tag`.
pub fn encode(tag: &str, position: impl Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tag}:{position}"))
}

/// The position a cursor of the list tagged `tag` stands for; `None` for anything else.
pub fn decode<T: FromStr>(tag: &str, cursor: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix(tag)?.strip_prefix(':')?.parse().ok()
}
