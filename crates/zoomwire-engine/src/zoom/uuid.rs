//! Meeting UUIDs in REST paths. Zoom requires a UUID that begins with `/` or
//! contains `//` to be URL-encoded twice; any other path value is encoded
//! once, as one path segment.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters left alone in a path segment: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Encodes `value` as one path segment (`/` becomes `%2F`).
pub fn encode_segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// Whether Zoom wants this UUID encoded twice.
pub fn needs_double_encoding(uuid: &str) -> bool {
    uuid.starts_with('/') || uuid.contains("//")
}

/// The path segment for a meeting UUID (or any id): double-encoded when Zoom requires it.
pub fn encode_uuid(uuid: &str) -> String {
    if needs_double_encoding(uuid) {
        encode_segment(&encode_segment(uuid))
    } else {
        encode_segment(uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_encodes_the_uuids_zoom_says_to() {
        assert_eq!(encode_uuid("/abcd=="), "%252Fabcd%253D%253D");
        assert_eq!(encode_uuid("ab//cd=="), "ab%252F%252Fcd%253D%253D");
    }

    #[test]
    fn encodes_other_values_once() {
        assert_eq!(
            encode_uuid("pE3zGv9tRkyZ1mWqf0b2Kw=="),
            "pE3zGv9tRkyZ1mWqf0b2Kw%3D%3D"
        );
        assert_eq!(encode_uuid("a/b+c"), "a%2Fb%2Bc");
        assert_eq!(encode_uuid("85512345678"), "85512345678");
    }
}
