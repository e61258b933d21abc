//! The outcome packet: its JSON body (byte-compatible with the seed article's Python client),
//! the strict decoder that is the agent's privacy firewall, and the NATS headers around it.
//!
//! The body is exactly the seed's eight fields, encoded as Python's `json.dumps(asdict(p))`
//! encodes them (`", "` and `": "` separators, ASCII-only strings, `repr()` floats), so a body we
//! publish is the byte string the seed would have published for the same packet, and the seed's
//! 512-byte rule means the same thing on both sides.

use qis_crds::addressing::{self, AddressError};
use qis_crds::constants::{HEADER_HOPS, HEADER_KIND, HEADER_MSG_ID, MAX_BODY_BYTES};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::{self, Write as _};

/// Most components of a context vector.
pub const MAX_CONTEXT_DIMS: usize = 64;

/// The body fields, in the seed dataclass's order (which is the order on the wire).
pub const FIELDS: [&str; 8] = [
    "agent_id",
    "domain",
    "problem_class",
    "conclusion",
    "confidence",
    "context_vector",
    "timestamp",
    "source_node",
];

/// What an agent learned: the seed's `OutcomePacket`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomePacket {
    pub agent_id: String,
    pub domain: String,
    pub problem_class: String,
    pub conclusion: String,
    pub confidence: f64,
    pub context_vector: Vec<f64>,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    pub source_node: String,
}

/// Why a packet was refused. [`PacketError::rule`] names the rule for metrics and HTTP replies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacketError {
    #[error("body is {size} bytes, the limit is {MAX_BODY_BYTES}")]
    TooLarge { size: usize },
    #[error("body is not a JSON object: {0}")]
    Malformed(String),
    #[error("unknown field {0:?}: the body has exactly the fields {FIELDS:?}")]
    UnknownField(String),
    #[error("field {0:?} appears twice")]
    DuplicateField(String),
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    #[error("field {field:?} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field {0:?} holds NaN or an infinity")]
    NonFinite(&'static str),
    #[error("confidence {0} is outside [0, 1]")]
    ConfidenceOutOfRange(f64),
    #[error("field {0:?} is empty")]
    Empty(&'static str),
    #[error("field {field:?}: {source}")]
    InvalidToken {
        field: &'static str,
        source: AddressError,
    },
    #[error("context_vector has {0} components, the limit is {MAX_CONTEXT_DIMS}")]
    VectorTooLong(usize),
    #[error("timestamp {0} is not a positive number of seconds since the epoch")]
    InvalidTimestamp(f64),
    #[error("header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
}

impl PacketError {
    /// Short stable name of the broken rule (`too_large`, `unknown_field`, …).
    pub fn rule(&self) -> &'static str {
        match self {
            PacketError::TooLarge { .. } => "too_large",
            PacketError::Malformed(_) => "malformed",
            PacketError::UnknownField(_) => "unknown_field",
            PacketError::DuplicateField(_) => "duplicate_field",
            PacketError::MissingField(_) => "missing_field",
            PacketError::WrongType { .. } => "wrong_type",
            PacketError::NonFinite(_) => "non_finite",
            PacketError::ConfidenceOutOfRange(_) => "confidence_range",
            PacketError::Empty(_) => "empty_field",
            PacketError::InvalidToken { .. } => "invalid_token",
            PacketError::VectorTooLong(_) => "vector_too_long",
            PacketError::InvalidTimestamp(_) => "invalid_timestamp",
            PacketError::BadHeader { .. } => "bad_header",
        }
    }
}

impl OutcomePacket {
    /// Checks every rule of the body except its size.
    pub fn validate(&self) -> Result<(), PacketError> {
        for (field, value) in [
            ("agent_id", &self.agent_id),
            ("source_node", &self.source_node),
        ] {
            if value.trim().is_empty() {
                return Err(PacketError::Empty(field));
            }
        }
        addressing::check_domain(&self.domain).map_err(|source| PacketError::InvalidToken {
            field: "domain",
            source,
        })?;
        addressing::check_token("problem_class", &self.problem_class).map_err(|source| {
            PacketError::InvalidToken {
                field: "problem_class",
                source,
            }
        })?;
        if !self.confidence.is_finite() {
            return Err(PacketError::NonFinite("confidence"));
        }
        if !(0.0..=1.0).contains(&self.confidence) {
            return Err(PacketError::ConfidenceOutOfRange(self.confidence));
        }
        if self.context_vector.len() > MAX_CONTEXT_DIMS {
            return Err(PacketError::VectorTooLong(self.context_vector.len()));
        }
        if self.context_vector.iter().any(|x| !x.is_finite()) {
            return Err(PacketError::NonFinite("context_vector"));
        }
        if !self.timestamp.is_finite() {
            return Err(PacketError::NonFinite("timestamp"));
        }
        if self.timestamp <= 0.0 {
            return Err(PacketError::InvalidTimestamp(self.timestamp));
        }
        Ok(())
    }

    /// `<domain>.<problem_class>`: the problem this packet votes for.
    pub fn problem(&self) -> String {
        format!("{}.{}", self.domain, self.problem_class)
    }

    /// Validates and encodes the body as the seed's client does, refusing bodies over 512 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, PacketError> {
        self.validate()?;
        let mut out = String::with_capacity(256);
        out.push('{');
        let mut first = true;
        let mut key = |out: &mut String, name: &str| {
            if !first {
                out.push_str(", ");
            }
            first = false;
            push_py_str(out, name);
            out.push_str(": ");
        };
        key(&mut out, "agent_id");
        push_py_str(&mut out, &self.agent_id);
        key(&mut out, "domain");
        push_py_str(&mut out, &self.domain);
        key(&mut out, "problem_class");
        push_py_str(&mut out, &self.problem_class);
        key(&mut out, "conclusion");
        push_py_str(&mut out, &self.conclusion);
        key(&mut out, "confidence");
        push_py_float(&mut out, self.confidence);
        key(&mut out, "context_vector");
        out.push('[');
        for (i, x) in self.context_vector.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            push_py_float(&mut out, *x);
        }
        out.push(']');
        key(&mut out, "timestamp");
        push_py_float(&mut out, self.timestamp);
        key(&mut out, "source_node");
        push_py_str(&mut out, &self.source_node);
        out.push('}');
        if out.len() > MAX_BODY_BYTES {
            return Err(PacketError::TooLarge { size: out.len() });
        }
        Ok(out.into_bytes())
    }

    /// Decodes and validates a body: exactly the eight fields, each of its type, every rule.
    pub fn decode(body: &[u8]) -> Result<OutcomePacket, PacketError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(PacketError::TooLarge { size: body.len() });
        }
        let text = std::str::from_utf8(body).map_err(|e| PacketError::Malformed(e.to_string()))?;
        let entries = match serde_json::from_str::<Entries>(text) {
            Ok(entries) => entries.0,
            Err(e) => {
                return Err(non_finite_field(text).unwrap_or(PacketError::Malformed(e.to_string())));
            }
        };
        let mut slots: [Option<Value>; 8] = Default::default();
        for (name, value) in entries {
            let Some(i) = FIELDS.iter().position(|f| *f == name) else {
                return Err(PacketError::UnknownField(name));
            };
            if slots[i].replace(value).is_some() {
                return Err(PacketError::DuplicateField(name));
            }
        }
        let mut field = |i: usize| slots[i].take().ok_or(PacketError::MissingField(FIELDS[i]));
        let packet = OutcomePacket {
            agent_id: string(FIELDS[0], field(0)?)?,
            domain: string(FIELDS[1], field(1)?)?,
            problem_class: string(FIELDS[2], field(2)?)?,
            conclusion: string(FIELDS[3], field(3)?)?,
            confidence: number(FIELDS[4], &field(4)?)?,
            context_vector: match field(5)? {
                Value::Array(items) => {
                    if items.len() > MAX_CONTEXT_DIMS {
                        return Err(PacketError::VectorTooLong(items.len()));
                    }
                    items
                        .iter()
                        .map(|x| number(FIELDS[5], x))
                        .collect::<Result<_, _>>()?
                }
                _ => {
                    return Err(PacketError::WrongType {
                        field: FIELDS[5],
                        expected: "an array of numbers",
                    });
                }
            },
            timestamp: number(FIELDS[6], &field(6)?)?,
            source_node: string(FIELDS[7], field(7)?)?,
        };
        packet.validate()?;
        Ok(packet)
    }
}

fn string(field: &'static str, v: Value) -> Result<String, PacketError> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(PacketError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn number(field: &'static str, v: &Value) -> Result<f64, PacketError> {
    v.as_f64().ok_or(PacketError::WrongType {
        field,
        expected: "a number",
    })
}

/// JSON object entries in document order, duplicates kept (so they can be refused).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::with_capacity(8);
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Python's `json.dumps` writes `NaN`, `Infinity`, `-Infinity`, which are not JSON. When the
/// body has such a token outside a string, name the field that holds it.
fn non_finite_field(text: &str) -> Option<PacketError> {
    let mut cleaned = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut found) = (false, false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            cleaned.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            cleaned.push_str("null");
            rest = &rest[token.len()..];
            found = true;
            continue;
        }
        in_string = c == '"';
        cleaned.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !found {
        return None;
    }
    let entries = serde_json::from_str::<Entries>(&cleaned).ok()?.0;
    entries.iter().find_map(|(name, value)| {
        let null_inside = value.is_null()
            || value
                .as_array()
                .is_some_and(|a| a.iter().any(Value::is_null));
        let field = FIELDS.iter().find(|f| **f == name)?;
        null_inside.then_some(PacketError::NonFinite(field))
    })
}

/// Appends `s` as Python's `json.dumps` (ensure_ascii) writes it.
fn push_py_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Appends a finite `x` as Python's `repr(float)` writes it: the shortest digits that round-trip,
/// fixed notation for exponents in [-4, 16), scientific (`1e-05`, `1.5e+16`) otherwise.
fn push_py_float(out: &mut String, x: f64) {
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Rust's `{:e}` prints the shortest round-trip digits, e.g. `-1.8e-1`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if x < 0.0 {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = usize::try_from(exp).unwrap_or(0) + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n(
                '0',
                usize::try_from(-exp - 1).unwrap_or(0),
            ));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// `outcome` (a vote) or `synthesis` (an agent's conclusion from its twins, never a vote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Outcome,
    Synthesis,
}

impl PacketKind {
    /// The `Qis-Kind` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            PacketKind::Outcome => "outcome",
            PacketKind::Synthesis => "synthesis",
        }
    }
}

/// What travels in NATS headers next to a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketMeta {
    /// `Nats-Msg-Id`: stable id of the packet (see [`packet_id`]).
    pub id: String,
    /// `Qis-Kind`; absent means `outcome` (the seed sends no headers).
    pub kind: PacketKind,
    /// `Qis-Hops`: 0 for an outcome, +1 per synthesis generation.
    pub hops: u8,
}

/// Stable id of a packet: the first 32 hex characters of SHA-256 of its body bytes. The same
/// packet retried (from the outbox, after a reconnect) carries the same id, so JetStream drops
/// the repeat within the stream's duplicate window, and synthesis ignores it after that.
pub fn packet_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut hex = String::with_capacity(32);
    for b in digest.iter().take(16) {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

impl PacketMeta {
    /// Meta of an outcome packet with this body.
    pub fn outcome(body: &[u8]) -> PacketMeta {
        PacketMeta {
            id: packet_id(body),
            kind: PacketKind::Outcome,
            hops: 0,
        }
    }

    /// Meta of a synthesis packet made from inputs of generation `input_hops`.
    pub fn synthesis(body: &[u8], input_hops: u8) -> PacketMeta {
        PacketMeta {
            id: packet_id(body),
            kind: PacketKind::Synthesis,
            hops: input_hops.saturating_add(1),
        }
    }

    /// The headers to publish, as (name, value).
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_MSG_ID, self.id.clone()),
            (HEADER_KIND, self.kind.as_str().to_owned()),
            (HEADER_HOPS, self.hops.to_string()),
        ]
    }

    /// Reads the headers of a received message (`get` looks one up by name). Missing headers
    /// take the seed's meaning: an outcome, 0 hops, id computed from the body.
    pub fn from_headers<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
    ) -> Result<PacketMeta, PacketError> {
        let (kind, hops) = Self::kind_and_hops(&get)?;
        let id = match get(HEADER_MSG_ID) {
            Some(id) if !id.trim().is_empty() => id.to_owned(),
            _ => packet_id(body),
        };
        Ok(PacketMeta { id, kind, hops })
    }

    /// `Qis-Kind` and `Qis-Hops` of a message, checked against each other (missing: an
    /// outcome with 0 hops).
    pub fn kind_and_hops<'a>(
        get: &impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(PacketKind, u8), PacketError> {
        let kind = match get(HEADER_KIND) {
            None | Some("outcome") => PacketKind::Outcome,
            Some("synthesis") => PacketKind::Synthesis,
            Some(other) => {
                return Err(PacketError::BadHeader {
                    header: HEADER_KIND,
                    reason: format!("{other:?} is neither \"outcome\" nor \"synthesis\""),
                });
            }
        };
        let hops = match get(HEADER_HOPS) {
            None => 0,
            Some(v) => v.trim().parse::<u8>().map_err(|_| PacketError::BadHeader {
                header: HEADER_HOPS,
                reason: format!("{v:?} is not a number from 0 to 255"),
            })?,
        };
        match (kind, hops) {
            (PacketKind::Outcome, h) if h != 0 => {
                return Err(PacketError::BadHeader {
                    header: HEADER_HOPS,
                    reason: "an outcome has 0 hops".into(),
                });
            }
            (PacketKind::Synthesis, 0) => {
                return Err(PacketError::BadHeader {
                    header: HEADER_HOPS,
                    reason: "a synthesis packet has 1 hop or more".into(),
                });
            }
            _ => {}
        }
        Ok((kind, hops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py_float(x: f64) -> String {
        let mut s = String::new();
        push_py_float(&mut s, x);
        s
    }

    #[test]
    fn floats_print_like_python_repr() {
        for (x, want) in [
            (0.87, "0.87"),
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1732646400.123456, "1732646400.123456"),
            (-0.5, "-0.5"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(py_float(x), want, "{x:e}");
        }
    }

    #[test]
    fn strings_escape_like_python() {
        let mut s = String::new();
        push_py_str(&mut s, "a\"b\\c\nd\u{7f}é😀\u{1}");
        assert_eq!(s, r#""a\"b\\c\nd\u007f\u00e9\ud83d\ude00\u0001""#);
    }
}
