//! ICE candidates as they travel in signaling messages: the JSON of an `RTCIceCandidateInit`.
//!
//! Accepts the forms seen in the wild: `"candidate:..."` and `"a=candidate:..."`,
//! `sdpMLineIndex` / `sdpMid` / `usernameFragment` null, missing or set, and end-of-candidates
//! as a missing `data`, `""`, `"null"`, or an object whose `candidate` is empty.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::rtc::CandidateInit as RTCIceCandidateInit;

use crate::{Cause, Error};

/// Longest candidate JSON accepted (a candidate line is ~100–200 bytes).
pub const MAX_CANDIDATE_JSON: usize = 4096;

/// What a signaling message's candidate `data` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteCandidate {
    /// A candidate to add.
    Candidate(RTCIceCandidateInit),
    /// The remote finished gathering.
    EndOfCandidates,
    /// A candidate that cannot be used and is skipped (e.g. an mDNS `.local` host).
    Skipped(&'static str),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidateJson {
    candidate: Option<String>,
    sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex")]
    sdp_mline_index: Option<u16>,
    username_fragment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CandidateJsonOut<'a> {
    candidate: &'a str,
    sdp_mid: Option<&'a str>,
    #[serde(rename = "sdpMLineIndex")]
    sdp_mline_index: Option<u16>,
    username_fragment: Option<&'a str>,
}

/// Why a remote candidate's address cannot be a peer's, if it cannot: connectivity checks
/// sent there would only reach this host, nobody, or everybody on a link. Loopback is a peer
/// only in tests (`allow_loopback`: [`crate::Config::with_loopback_candidates`]). Private and
/// link-local addresses stay: peers on one LAN use them.
fn unusable_address(ip: IpAddr, port: u16, allow_loopback: bool) -> Option<&'static str> {
    if port == 0 {
        return Some("port 0");
    }
    if ip.is_unspecified() {
        return Some("unspecified address");
    }
    if ip.is_multicast() {
        return Some("multicast address");
    }
    if ip.is_loopback() && !allow_loopback {
        return Some("loopback address");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped IPv6 address"),
        _ => None,
    }
}

/// Parses a signaling message's `data` for an `ICE_CANDIDATE` message. Candidates whose
/// address cannot be a peer's are skipped (see `unusable_address`).
pub fn parse(data: Option<&str>, allow_loopback: bool) -> Result<RemoteCandidate, Error> {
    let data = match data.map(str::trim) {
        None | Some("") | Some("null") => return Ok(RemoteCandidate::EndOfCandidates),
        Some(d) => d,
    };
    if data.len() > MAX_CANDIDATE_JSON {
        return Err(Error::InvalidCandidate(Cause::new(format!(
            "{} bytes of JSON, limit {MAX_CANDIDATE_JSON}",
            data.len()
        ))));
    }
    let json: CandidateJson =
        serde_json::from_str(data).map_err(|e| Error::InvalidCandidate(Cause::new(e)))?;
    let line = json.candidate.unwrap_or_default();
    let line = line.trim();
    let line = line.strip_prefix("a=").unwrap_or(line);
    if line.is_empty() {
        return Ok(RemoteCandidate::EndOfCandidates);
    }
    let Some(attrs) = line.strip_prefix("candidate:") else {
        return Err(Error::InvalidCandidate(Cause::new(format!(
            "not a candidate line: {line:.64}"
        ))));
    };
    // foundation component transport priority address port typ type ...
    let fields: Vec<&str> = attrs.split_ascii_whitespace().collect();
    let (Some(transport), Some(address), Some(port)) =
        (fields.get(2), fields.get(4), fields.get(5))
    else {
        return Err(Error::InvalidCandidate(Cause::new(format!(
            "truncated candidate: {line:.64}"
        ))));
    };
    if address.ends_with(".local") {
        return Ok(RemoteCandidate::Skipped("mDNS candidates are not resolved"));
    }
    if !transport.eq_ignore_ascii_case("udp") {
        return Ok(RemoteCandidate::Skipped("only UDP candidates are used"));
    }
    let Ok(ip) = address.parse::<IpAddr>() else {
        return Ok(RemoteCandidate::Skipped("host names are not resolved"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(Error::InvalidCandidate(Cause::new(format!(
            "bad port: {line:.64}"
        ))));
    };
    if let Some(why) = unusable_address(ip, port, allow_loopback) {
        return Ok(RemoteCandidate::Skipped(why));
    }
    Ok(RemoteCandidate::Candidate(RTCIceCandidateInit {
        candidate: line.to_owned(),
        sdp_mid: json.sdp_mid,
        // With bundling, every candidate belongs to the first m-line; some stacks send null.
        sdp_mline_index: json.sdp_mline_index.or(Some(0)),
        username_fragment: json.username_fragment,
        url: None,
    }))
}

/// Serializes a local candidate to the JSON js-libp2p and browsers expect.
pub fn to_json(init: &RTCIceCandidateInit) -> String {
    let out = CandidateJsonOut {
        candidate: &init.candidate,
        sdp_mid: init.sdp_mid.as_deref(),
        sdp_mline_index: init.sdp_mline_index,
        username_fragment: init.username_fragment.as_deref(),
    };
    // Serializing a struct of strings and integers cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host";

    #[test]
    fn end_of_candidates_forms() {
        for data in [
            None,
            Some(""),
            Some("null"),
            Some(" "),
            Some(r#"{"candidate":""}"#),
        ] {
            assert_eq!(
                parse(data, false).unwrap(),
                RemoteCandidate::EndOfCandidates,
                "{data:?}"
            );
        }
    }

    #[test]
    fn both_prefixes_and_nulls() {
        let browser = format!(
            r#"{{"candidate":"{LINE}","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}}"#
        );
        let ndc = format!(
            r#"{{"candidate":"a={LINE}","sdpMid":"0","sdpMLineIndex":null,"usernameFragment":null}}"#
        );
        let minimal = format!(r#"{{"candidate":"{LINE}"}}"#);
        for json in [browser, ndc, minimal] {
            let RemoteCandidate::Candidate(init) = parse(Some(&json), false).unwrap() else {
                panic!("not a candidate: {json}");
            };
            assert_eq!(init.candidate, LINE);
            assert_eq!(init.sdp_mline_index, Some(0));
        }
    }

    #[test]
    fn mdns_and_tcp_are_skipped() {
        let mdns = r#"{"candidate":"candidate:1 1 udp 2130706431 4f2e.local 5000 typ host"}"#;
        assert!(matches!(
            parse(Some(mdns), false).unwrap(),
            RemoteCandidate::Skipped(_)
        ));
        let tcp =
            r#"{"candidate":"candidate:1 1 tcp 2130706431 192.0.2.1 9 typ host tcptype active"}"#;
        assert!(matches!(
            parse(Some(tcp), false).unwrap(),
            RemoteCandidate::Skipped(_)
        ));
    }

    fn with_address(addr: &str, port: u16) -> String {
        format!(r#"{{"candidate":"candidate:1 1 udp 2130706431 {addr} {port} typ host"}}"#)
    }

    #[test]
    fn addresses_that_cannot_be_a_peer_are_skipped() {
        for (addr, port) in [
            ("192.0.2.1", 0),
            ("0.0.0.0", 5000),
            ("::", 5000),
            ("224.0.0.251", 5353),
            ("ff02::1", 5000),
            ("255.255.255.255", 5000),
            ("127.0.0.1", 5000),
            ("::1", 5000),
            ("::ffff:192.0.2.1", 5000),
            ("stun.example.org", 5000),
        ] {
            let json = with_address(addr, port);
            assert!(
                matches!(
                    parse(Some(&json), false).unwrap(),
                    RemoteCandidate::Skipped(_)
                ),
                "{addr}:{port}"
            );
        }
        // Peers on a LAN and on the internet, and loopback where allowed.
        for addr in [
            "10.0.0.7",
            "192.168.1.2",
            "169.254.3.4",
            "fe80::1",
            "2001:db8::1",
        ] {
            let json = with_address(addr, 5000);
            assert!(
                matches!(
                    parse(Some(&json), false).unwrap(),
                    RemoteCandidate::Candidate(_)
                ),
                "{addr}"
            );
        }
        let loopback = with_address("127.0.0.1", 5000);
        assert!(matches!(
            parse(Some(&loopback), true).unwrap(),
            RemoteCandidate::Candidate(_)
        ));
        assert!(parse(
            Some(&with_address("192.0.2.1", 1).replace(" 1 typ", " x typ")),
            false
        )
        .is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            "{",
            "[]",
            r#"{"candidate":"hello"}"#,
            r#"{"candidate":"candidate:1 1"}"#,
        ] {
            assert!(parse(Some(bad), false).is_err(), "{bad}");
        }
        assert!(parse(Some(&"x".repeat(MAX_CANDIDATE_JSON + 1)), false).is_err());
    }

    #[test]
    fn json_round_trip() {
        let init = RTCIceCandidateInit {
            candidate: LINE.into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: Some("uf".into()),
            url: None,
        };
        let json = to_json(&init);
        assert!(json.contains("\"sdpMLineIndex\":0"), "{json}");
        assert_eq!(
            parse(Some(&json), false).unwrap(),
            RemoteCandidate::Candidate(init)
        );
    }
}
