//! Wire types and spellings shared by the dialects whose rule types come from ETSI GS MEC 011
//! (EdgeGallery's Mm5 configuration reuses them): traffic filters, tunnel information, action
//! and tunnel names, and ids as safe URL path segments.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use crate::model::{self, Action, TunnelType};

/// Which key carries a filter's tokens: MEC 011's `token` or EdgeGallery's `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKey {
    Token,
    Tag,
}

/// A MEC 011 `TrafficFilter` (northbound `Protocol`/`Token` → `protocol` and `token` or
/// `tag`, `dstTunnelAddress` → `tgtTunnelAddress`, `qci`/`dscp`/`tc` → `qCI`/`dSCP`/`tC`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    src_address: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_address: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_port: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_port: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_tunnel_address: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tgt_tunnel_address: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_tunnel_port: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_tunnel_port: Option<&'a [String]>,
    #[serde(rename = "qCI", skip_serializing_if = "Option::is_none")]
    qci: Option<u64>,
    #[serde(rename = "dSCP", skip_serializing_if = "Option::is_none")]
    dscp: Option<u64>,
    #[serde(rename = "tC", skip_serializing_if = "Option::is_none")]
    tc: Option<u64>,
}

impl<'a> Filter<'a> {
    /// The filter `f` with the QoS values the driver checked (`qci`, `dscp`, `tc`).
    pub fn new(f: &'a model::TrafficFilter, tokens: TokenKey, qos: [Option<u64>; 3]) -> Self {
        let token = f.token.as_deref();
        let [qci, dscp, tc] = qos;
        Filter {
            src_address: f.src_address.as_deref(),
            dst_address: f.dst_address.as_deref(),
            src_port: f.src_port.as_deref(),
            dst_port: f.dst_port.as_deref(),
            protocol: f.protocol.as_deref(),
            token: token.filter(|_| tokens == TokenKey::Token),
            tag: token.filter(|_| tokens == TokenKey::Tag),
            src_tunnel_address: f.src_tunnel_address.as_deref(),
            tgt_tunnel_address: f.dst_tunnel_address.as_deref(),
            src_tunnel_port: f.src_tunnel_port.as_deref(),
            dst_tunnel_port: f.dst_tunnel_port.as_deref(),
            qci,
            dscp,
            tc,
        }
    }
}

/// A MEC 011 `TunnelInfo` (without `tunnelSpecificData`, which neither dialect has).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tunnel<'a> {
    tunnel_type: &'static str,
    tunnel_dst_address: &'a str,
    tunnel_src_address: &'a str,
}

impl<'a> Tunnel<'a> {
    pub fn new(t: &'a model::TunnelInfo) -> Self {
        Tunnel {
            tunnel_type: tunnel_type_name(t.tunnel_type),
            tunnel_dst_address: &t.tunnel_dst_address,
            tunnel_src_address: &t.tunnel_src_address,
        }
    }
}

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
