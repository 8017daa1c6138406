//! Spellings shared by the dialects whose rule types come from ETSI GS MEC 011 (EdgeGallery's
//! Mm5 configuration reuses them): action and tunnel names, and ids as safe URL path segments.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::model::{Action, TunnelType};

/// Characters written as themselves in a path segment: letters, digits, `-`, `_`, `~`. Dots
/// are encoded too, so no id can ever be read as a `.` or `..` segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// An id as one percent-encoded URL path segment: `../../x` can never change the path.
pub fn path_segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// The MEC 011 name of a northbound (MEC 010-2 v1) action. The contract's `FORWARD` and
/// `DECAPSULATED` are MEC 011's `FORWARD_DECAPSULATED` split in two: traffic forwarded to an
/// application reaches it as plain IP; `FORWARD_AS_IS` keeps the tunnel.
pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Drop => "DROP",
        Action::Forward | Action::Decapsulated => "FORWARD_DECAPSULATED",
        Action::ForwardAsIs => "FORWARD_AS_IS",
        Action::Passthrough => "PASSTHROUGH",
        Action::DuplicatedDecapsulated => "DUPLICATE_DECAPSULATED",
        Action::DuplicateAsIs => "DUPLICATE_AS_IS",
    }
}

/// The MEC 011 name of a tunnel type (`GTP-U` is spelled `GTP_U` there).
pub fn tunnel_type_name(tunnel: TunnelType) -> &'static str {
    match tunnel {
        TunnelType::GtpU => "GTP_U",
        TunnelType::Gre => "GRE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_segment_whatever_they_hold() {
        assert_eq!(path_segment("tr1"), "tr1");
        assert_eq!(path_segment("a-b_c~d"), "a-b_c~d");
        assert_eq!(path_segment("../../x"), "%2E%2E%2F%2E%2E%2Fx");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("a b"), "a%20b");
        assert_eq!(path_segment("a?b#c%d"), "a%3Fb%23c%25d");
        assert_eq!(path_segment("caf\u{e9}"), "caf%C3%A9");
        assert_eq!(path_segment("a\\b;c"), "a%5Cb%3Bc");
    }

    #[test]
    fn actions_and_tunnels_have_their_mec011_names() {
        for (action, name) in [
            (Action::Drop, "DROP"),
            (Action::Forward, "FORWARD_DECAPSULATED"),
            (Action::Decapsulated, "FORWARD_DECAPSULATED"),
            (Action::ForwardAsIs, "FORWARD_AS_IS"),
            (Action::Passthrough, "PASSTHROUGH"),
            (Action::DuplicatedDecapsulated, "DUPLICATE_DECAPSULATED"),
            (Action::DuplicateAsIs, "DUPLICATE_AS_IS"),
        ] {
            assert_eq!(action_name(action), name, "{action:?}");
        }
        assert_eq!(tunnel_type_name(TunnelType::GtpU), "GTP_U");
        assert_eq!(tunnel_type_name(TunnelType::Gre), "GRE");
    }
}
