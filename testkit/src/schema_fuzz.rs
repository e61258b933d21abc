//! Schema-driven fuzzing: objects generated from an OpenAPI v3 schema (a CRD's
//! `openAPIV3Schema`), and a checker of the schema's structural rules.
//!
//! [`Generator`] walks a schema and, at every node, picks a valid, edge, extreme or
//! invalid-but-type-correct value (and now and then a value of the wrong type, a missing
//! required field or an unknown one): integers at min-1/min/max/max+1 and the i32/u32/i64
//! extremes, floats including -0.0, the smallest subnormal and ±1e308, strings empty, at their
//! length bound and one over, 64 KiB, non-ASCII/RTL/NUL/emoji, pattern-breaking, durations at
//! their bound and over, lists empty, of one, at their bound, over it and huge (bounded).
//!
//! [`admit`] does what the API server does before it stores an object: it checks type, enum,
//! minimum/maximum, min/maxLength, min/maxItems, required, pattern and list-map key uniqueness,
//! drops unknown fields and nulls of non-nullable fields, and fills defaults. It does not run
//! the CEL rules or string formats, so it admits a superset of what the API server stores.
//!
//! Randomness is [`Rng`] (xorshift64*): a failure reproduces from its printed seed.

use regex::Regex;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};

/// `pattern` compiled once per thread (`None`: not a pattern the regex crate reads).
fn regex(pattern: &str) -> Option<Regex> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<String, Option<Regex>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        c.borrow_mut()
            .entry(pattern.to_owned())
            .or_insert_with(|| Regex::new(pattern).ok())
            .clone()
    })
}

/// xorshift64*: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift never leaves 0).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// Uniform in `[lo, hi]`.
    pub fn float(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }
}

/// The number of objects of a run: `$var` when set, else `default`.
pub fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Strings that break every pattern and most assumptions.
pub const HOSTILE_STRINGS: &[&str] = &[
    "",
    " ",
    "a b",
    "\0",
    "a\0b",
    "\u{202e}evil\u{202c}",
    "\u{feff}bom",
    "🦀🦀",
    "ünïcödé",
    "e\u{301}",
    "日本語",
    "\n",
    "a\r\nb: c",
    "-",
    "_",
    ".",
    "..",
    "a..b",
    ">",
    "*",
    "a.>",
    "a.*.b",
    "UPPER",
    "-lead",
    "trail-",
    "$(rm -rf /)",
    "../../etc/passwd",
    "${QIS_SITE}",
    "=",
    "A=B",
    "%00",
    "null",
    "true",
    "0",
    "-1",
    "NaN",
    "inf",
    "1e400",
    "fp",
    "default",
];

/// Plausible values of unconstrained string fields (so that objects also go deep).
const WORDS: &[&str] = &[
    "a",
    "hall-a",
    "site-1",
    "x",
    "qis.dev/site",
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "nats://127.0.0.1:4222",
    "tls://nats.nats:4222,nats://b:4222",
    "ghcr.io/qis/agent:1.0",
    "Always",
    "IfNotPresent",
    "Never",
    "Exists",
    "Equal",
    "In",
    "NotIn",
    "NoSchedule",
    "NoExecute",
    "PreferNoSchedule",
    "100m",
    "64Mi",
    "1",
    "1Gi",
    "RuntimeDefault",
    "Localhost",
    "TZ",
    "QIS_OUTBOX_MAX",
    "QIS_SITE",
    "value",
    "2026-01-01T00:00:00Z",
    "1970-01-01T00:00:00+00:00",
    "secret",
    "ca.crt",
];

/// Durations around every bound of `qis_crds::Duration`.
const DURATIONS_EDGE: &[&str] = &[
    "0",
    "0s",
    "1ns",
    "999ms",
    "1s",
    "87600h",
    "87599h59m59.999999999s",
    "315360000s",
    "0.5ns",
    "1.000000000000000000001s",
    "00000000000000000000000000001s",
];
const DURATIONS_BAD: &[&str] = &[
    "87600h1ns",
    "87601h",
    "315360001s",
    "99999999999999999999s",
    "9999999999999999999999999999999h",
    "1234567890123456789012345678901234s",
    "-5s",
    "5",
    "5d",
    ".5s",
    "5.s",
    "1e9s",
    "1h-1m",
    "NaNs",
    "1µ",
];

/// How a node's value is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Valid,
    Edge,
    Extreme,
    Invalid,
    WrongType,
}

/// Generates JSON values from an OpenAPI v3 schema.
#[derive(Debug)]
pub struct Generator {
    pub rng: Rng,
    /// Length of a "huge" list (kept small enough that a run stays fast).
    pub huge_list: usize,
    /// Deepest level at which optional fields are still filled in.
    pub max_depth: usize,
    clean: bool,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: Rng::new(seed),
            huge_list: 100,
            max_depth: 12,
            clean: false,
        }
    }

    /// One value of `schema`. About a third of the values are generated "clean" (valid and
    /// edge values only), so that many objects are admissible and reach the deep paths.
    pub fn generate(&mut self, schema: &Value) -> Value {
        self.clean = self.rng.percent(35);
        self.node(schema, 0)
    }

    fn intent(&mut self) -> Intent {
        let r = self.rng.below(100);
        if self.clean {
            return if r < 85 { Intent::Valid } else { Intent::Edge };
        }
        match r {
            0..60 => Intent::Valid,
            60..75 => Intent::Edge,
            75..85 => Intent::Extreme,
            85..98 => Intent::Invalid,
            _ => Intent::WrongType,
        }
    }

    fn node(&mut self, schema: &Value, depth: usize) -> Value {
        let intent = self.intent();
        if intent == Intent::WrongType {
            return self.wrong_type(schema);
        }
        if schema.get("nullable") == Some(&Value::Bool(true)) && self.rng.percent(3) {
            return Value::Null;
        }
        if let Some(e) = schema.get("enum").and_then(Value::as_array)
            && !e.is_empty()
        {
            return match intent {
                Intent::Valid | Intent::Edge => self.rng.pick(e).clone(),
                _ => json!(self.rng.pick(&["", "ALWAYS", "other", "\u{0}", "Never "])),
            };
        }
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return if self.rng.percent(50) {
                self.integer(schema, intent)
            } else {
                self.string(schema, intent)
            };
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => self.object(schema, depth, intent),
            Some("array") => self.array(schema, depth, intent),
            Some("string") => self.string(schema, intent),
            Some("integer") => self.integer(schema, intent),
            Some("number") => self.number(schema, intent),
            Some("boolean") => Value::Bool(self.rng.percent(50)),
            _ => self.anything(depth),
        }
    }

    fn wrong_type(&mut self, schema: &Value) -> Value {
        let ty = schema.get("type").and_then(Value::as_str);
        let options = [
            json!("1"),
            json!(1),
            json!(1.5),
            json!(true),
            json!([]),
            json!({}),
            json!(-1),
            json!(u64::MAX),
        ];
        loop {
            let v = self.rng.pick(&options).clone();
            let same = matches!(
                (ty, &v),
                (Some("string"), Value::String(_))
                    | (Some("integer"), Value::Number(_))
                    | (Some("number"), Value::Number(_))
                    | (Some("boolean"), Value::Bool(_))
                    | (Some("array"), Value::Array(_))
                    | (Some("object"), Value::Object(_))
                    | (None, _)
            );
            if !same || ty.is_none() {
                return v;
            }
        }
    }

    fn anything(&mut self, depth: usize) -> Value {
        match self.rng.below(6) {
            0 => json!({}),
            1 if depth < 4 => json!({"k": self.anything(depth + 1), "n": 1}),
            2 => json!(self.rng.pick(HOSTILE_STRINGS)),
            3 => json!([1, "a", null]),
            4 => json!(i64::MIN),
            _ => Value::Null,
        }
    }

    fn object(&mut self, schema: &Value, depth: usize, intent: Intent) -> Value {
        let mut out = Map::new();
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            // Deeper objects (the embedded Kubernetes types) fill fewer optional fields.
            let fill = match depth {
                0..=2 => 60,
                3..=4 => 35,
                5..=7 => 15,
                _ => 5,
            };
            for (name, sub) in props {
                let want = if required.contains(name.as_str()) {
                    !(intent == Intent::Invalid && self.rng.percent(15))
                } else {
                    depth < self.max_depth && self.rng.percent(fill)
                };
                if want {
                    out.insert(name.clone(), self.node(sub, depth + 1));
                }
            }
        }
        if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            let n = match self.rng.below(10) {
                0..=4 => 0,
                5..=8 => 1 + self.rng.below(3),
                _ => 20,
            };
            for _ in 0..n {
                let key = self.map_key(intent);
                out.insert(key, self.node(extra, depth + 1));
            }
        }
        if !self.clean && self.rng.percent(3) {
            out.insert("zzUnknownField".into(), json!("unknown"));
        }
        Value::Object(out)
    }

    fn map_key(&mut self, intent: Intent) -> String {
        match intent {
            Intent::Valid | Intent::Edge => (*self.rng.pick(&[
                "qis.dev/site",
                "kubernetes.io/hostname",
                "zone",
                "a",
                "example.com/x-y_z.1",
            ]))
            .to_owned(),
            _ => self.hostile(),
        }
    }

    fn hostile(&mut self) -> String {
        match self.rng.below(10) {
            0 => "x".repeat(64 * 1024),
            1 => "é".repeat(300),
            _ => (*self.rng.pick(HOSTILE_STRINGS)).to_owned(),
        }
    }

    fn array(&mut self, schema: &Value, depth: usize, intent: Intent) -> Value {
        let max = schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .map(|m| m as usize);
        let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        let items = schema.get("items").cloned().unwrap_or(json!({}));
        let scalar = matches!(
            items.get("type").and_then(Value::as_str),
            Some("string" | "integer" | "number" | "boolean")
        );
        let len = match intent {
            Intent::Valid => match self.rng.below(10) {
                0..=2 => 0,
                3..=6 => 1,
                _ => 2 + self.rng.below(3),
            },
            Intent::Edge => *self.rng.pick(&[0, 1, max.unwrap_or(8), min]),
            // Huge lists of objects only near the top: a deep one would multiply.
            _ => match max {
                Some(m) if self.rng.percent(50) => m + 1,
                _ if scalar || depth <= 2 => self.huge_list,
                _ => 8,
            },
        };
        // A list of huge length is built of lighter items.
        let item_depth = if len > 16 {
            depth.max(self.max_depth.saturating_sub(2))
        } else {
            depth + 1
        };
        let mut out: Vec<Value> = (0..len).map(|_| self.node(&items, item_depth)).collect();
        if let Some(keys) = list_map_keys(schema)
            && (self.clean || self.rng.percent(80))
        {
            let mut seen = BTreeSet::new();
            out.retain(|item| seen.insert(map_key_of(item, &keys)));
        }
        Value::Array(out)
    }

    fn string(&mut self, schema: &Value, intent: Intent) -> Value {
        let pattern = schema.get("pattern").and_then(Value::as_str).unwrap_or("");
        let max = schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .map(|m| m as usize);
        let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let kind = PatternKind::of(pattern);
        if schema.get("format").and_then(Value::as_str) == Some("date-time") {
            return json!(match intent {
                Intent::Valid | Intent::Edge => *self.rng.pick(&[
                    "2026-01-01T00:00:00Z",
                    "1970-01-01T00:00:00.000000001+23:59",
                    "2024-02-29T23:59:59.999Z",
                    "9999-12-30T00:00:00-00:00",
                    "0001-01-01T00:00:00Z",
                ]),
                _ => *self.rng.pick(&[
                    "2026-02-30T00:00:00Z",
                    "2026-01-01 00:00:00",
                    "2026-01-01T24:00:00Z",
                    "yesterday",
                    "",
                    "2026-01-01T00:00:00+0700",
                ]),
            });
        }
        let s = match intent {
            Intent::Valid if kind == PatternKind::Other && !pattern.is_empty() => {
                let re = regex(pattern);
                let fits: Vec<&str> = WORDS
                    .iter()
                    .copied()
                    .filter(|w| re.as_ref().is_none_or(|re| re.is_match(w)))
                    .collect();
                (*self.rng.pick(if fits.is_empty() { WORDS } else { &fits })).to_owned()
            }
            Intent::Valid => {
                let mut s = kind.valid(&mut self.rng);
                if let Some(max) = max {
                    s = s.chars().take(max).collect();
                }
                s
            }
            Intent::Edge => match self.rng.below(4) {
                0 if max.is_some() => "a".repeat(max.unwrap_or(0)),
                1 if min > 0 => "a".repeat(min),
                _ => kind.edge(&mut self.rng),
            },
            Intent::Extreme => match self.rng.below(3) {
                0 => "x".repeat(64 * 1024),
                1 => format!("{}\u{202e}🦀\0", kind.valid(&mut self.rng)),
                _ => self.hostile(),
            },
            _ => match self.rng.below(4) {
                0 if max.is_some() => "a".repeat(max.unwrap_or(0) + 1),
                1 if min > 0 => "a".repeat(min - 1),
                _ => kind.invalid(&mut self.rng),
            },
        };
        Value::String(s)
    }

    fn integer(&mut self, schema: &Value, intent: Intent) -> Value {
        let min = schema
            .get("minimum")
            .and_then(Value::as_f64)
            .map(|m| m as i64);
        let max = schema
            .get("maximum")
            .and_then(Value::as_f64)
            .map(|m| m as i64);
        let (lo, hi) = (min.unwrap_or(-1000), max.unwrap_or(1_000_000));
        match intent {
            Intent::Valid => {
                json!(lo + (self.rng.next_u64() % ((hi - lo) as u64 + 1)) as i64)
            }
            Intent::Edge => json!(*self.rng.pick(&[lo, hi, 0, 1, -1])),
            Intent::Extreme => match self.rng.below(8) {
                0 => json!(i64::MIN),
                1 => json!(i64::MAX),
                2 => json!(u64::MAX),
                3 => json!(i32::MAX),
                4 => json!(i64::from(i32::MAX) + 1),
                5 => json!(i32::MIN),
                6 => json!(u32::MAX),
                _ => json!(u64::from(u32::MAX) + 1),
            },
            _ => match self.rng.below(3) {
                0 if min.is_some() => json!(lo.saturating_sub(1)),
                1 if max.is_some() => json!(hi.saturating_add(1)),
                _ => json!(-1),
            },
        }
    }

    fn number(&mut self, schema: &Value, intent: Intent) -> Value {
        let min = schema.get("minimum").and_then(Value::as_f64);
        let max = schema.get("maximum").and_then(Value::as_f64);
        let (lo, hi) = (min.unwrap_or(-1e6), max.unwrap_or(1e6));
        let x = match intent {
            Intent::Valid => self.rng.float(lo, hi),
            Intent::Edge => *self.rng.pick(&[lo, hi, -0.0, 0.0, 5e-324, (lo + hi) / 2.0]),
            Intent::Extreme => *self.rng.pick(&[1e308, -1e308, f64::MAX, f64::MIN, 5e-324]),
            _ => *self.rng.pick(&[
                next_up(hi),
                -next_up(-lo),
                hi + 1.0,
                lo - 1.0,
                1.0000000000000002,
                -5e-324,
            ]),
        };
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// The next float above `x` (finite `x`).
fn next_up(x: f64) -> f64 {
    if x == 0.0 {
        return 5e-324;
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// The patterns of our schemas, each with generators of matching, edge and breaking values;
/// any other pattern gets generic strings (and the checker decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternKind {
    Token,
    Prefix,
    DnsLabel,
    Duration,
    Other,
}

impl PatternKind {
    fn of(pattern: &str) -> PatternKind {
        if pattern.contains("(ns|us") {
            PatternKind::Duration
        } else if pattern.contains("(\\.[a-z0-9_-]") {
            PatternKind::Prefix
        } else if pattern.starts_with("^[a-z0-9]([-a-z0-9]") {
            PatternKind::DnsLabel
        } else if pattern.starts_with("^[a-z0-9_-]{1,64}") {
            PatternKind::Token
        } else {
            PatternKind::Other
        }
    }

    fn token(rng: &mut Rng, alphabet: &[u8], max: usize) -> String {
        let len = 1 + rng.below(max);
        (0..len)
            .map(|_| char::from(alphabet[rng.below(alphabet.len())]))
            .collect()
    }

    fn valid(self, rng: &mut Rng) -> String {
        const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
        const LABEL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        match self {
            PatternKind::Token => Self::token(rng, TOKEN, 12),
            PatternKind::Prefix => (0..=rng.below(3))
                .map(|_| Self::token(rng, TOKEN, 8))
                .collect::<Vec<_>>()
                .join("."),
            PatternKind::DnsLabel => {
                let mut s = Self::token(rng, LABEL, 10);
                s.insert(0, 'a');
                s.push('z');
                s
            }
            PatternKind::Duration => (*rng
                .pick(&["30s", "1h30m", "500ms", "24h", "2m", "1.5s", "10µs", "7ns"]))
            .to_owned(),
            PatternKind::Other => (*rng.pick(WORDS)).to_owned(),
        }
    }

    fn edge(self, rng: &mut Rng) -> String {
        match self {
            PatternKind::Token => "a".repeat(64),
            PatternKind::Prefix => vec!["a".repeat(64); 8].join("."),
            PatternKind::DnsLabel => format!("a{}", "-".repeat(61)) + "a",
            PatternKind::Duration => (*rng.pick(DURATIONS_EDGE)).to_owned(),
            PatternKind::Other => (*rng.pick(&["", "a", " ", "0"])).to_owned(),
        }
    }

    fn invalid(self, rng: &mut Rng) -> String {
        match self {
            PatternKind::Token => (*rng.pick(&["a.b", ">", "*", "A", "", "fp"])).to_owned(),
            PatternKind::Prefix => {
                (*rng.pick(&["qis.>", "qis..a", ".qis", "a.b.c.d.e.f.g.h.i", "Q"])).to_owned()
            }
            PatternKind::DnsLabel => {
                (*rng.pick(&["-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)])).to_owned()
            }
            PatternKind::Duration => (*rng.pick(DURATIONS_BAD)).to_owned(),
            PatternKind::Other => (*rng.pick(HOSTILE_STRINGS)).to_owned(),
        }
    }
}

fn list_map_keys(schema: &Value) -> Option<Vec<String>> {
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|k| {
            k.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
}

fn map_key_of(item: &Value, keys: &[String]) -> String {
    keys.iter()
        .map(|k| item.get(k).map(Value::to_string).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\u{0}")
}

/// A structural rule an object breaks, at a path such as `spec.sites[2].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub rule: &'static str,
}

/// Checks `value` against `schema` as the API server does before storing it. On success,
/// the object as stored: unknown fields and non-nullable nulls pruned, defaults filled in.
pub fn admit(schema: &Value, value: &Value) -> Result<Value, Vec<Violation>> {
    let mut checker = Checker;
    let mut out = Vec::new();
    let pruned = checker.check(schema, value, "", &mut out);
    match (out.is_empty(), pruned) {
        (true, Some(v)) => Ok(v),
        (true, None) => Err(vec![Violation {
            path: String::new(),
            rule: "required",
        }]),
        (false, _) => Err(out),
    }
}

struct Checker;

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Checker {
    /// The value as stored, or `None` when it is pruned (a null the schema does not allow).
    fn check(
        &mut self,
        schema: &Value,
        v: &Value,
        path: &str,
        out: &mut Vec<Violation>,
    ) -> Option<Value> {
        let mut bad = |rule| {
            out.push(Violation {
                path: path.to_owned(),
                rule,
            })
        };
        if v.is_null() {
            return (schema.get("nullable") == Some(&Value::Bool(true))).then_some(Value::Null);
        }
        if let Some(e) = schema.get("enum").and_then(Value::as_array)
            && !e.contains(v)
        {
            bad("enum");
        }
        let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if int_or_string {
            if !(v.is_string() || is_integer(v)) {
                bad("type");
            }
            return Some(v.clone());
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => {
                let Some(obj) = v.as_object() else {
                    bad("type");
                    return Some(v.clone());
                };
                return Some(self.object(schema, obj, path, out));
            }
            Some("array") => {
                let Some(items) = v.as_array() else {
                    bad("type");
                    return Some(v.clone());
                };
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && items.len() as u64 > max
                {
                    bad("maxItems");
                }
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                    && (items.len() as u64) < min
                {
                    bad("minItems");
                }
                if let Some(keys) = list_map_keys(schema) {
                    let mut seen = BTreeSet::new();
                    if !items.iter().all(|i| seen.insert(map_key_of(i, &keys))) {
                        bad("listMapKeys");
                    }
                }
                let item_schema = schema.get("items").cloned().unwrap_or(json!({}));
                let stored = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.check(&item_schema, item, &format!("{path}[{i}]"), out)
                            .unwrap_or(Value::Null)
                    })
                    .collect();
                return Some(Value::Array(stored));
            }
            Some("string") => {
                let Some(s) = v.as_str() else {
                    bad("type");
                    return Some(v.clone());
                };
                let chars = s.chars().count() as u64;
                if schema
                    .get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| chars > m)
                {
                    bad("maxLength");
                }
                if schema
                    .get("minLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| chars < m)
                {
                    bad("minLength");
                }
                if schema.get("format").and_then(Value::as_str) == Some("date-time")
                    && !is_date_time(s)
                {
                    bad("format");
                }
                if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                    && regex(p).is_some_and(|re| !re.is_match(s))
                {
                    bad("pattern");
                }
            }
            Some("integer") => {
                if !is_integer(v) {
                    bad("type");
                } else {
                    bounds(schema, v, &mut bad);
                }
            }
            Some("number") => {
                if !v.is_number() {
                    bad("type");
                } else {
                    bounds(schema, v, &mut bad);
                }
            }
            Some("boolean") if !v.is_boolean() => bad("type"),
            _ => {}
        }
        Some(v.clone())
    }

    fn object(
        &mut self,
        schema: &Value,
        obj: &Map<String, Value>,
        path: &str,
        out: &mut Vec<Violation>,
    ) -> Value {
        let props = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties").filter(|a| a.is_object());
        let keep_unknown =
            schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let mut stored = Map::new();
        for (k, v) in obj {
            let sub = props.and_then(|p| p.get(k)).or(extra);
            match sub {
                Some(sub) => {
                    if let Some(s) = self.check(sub, v, &child(path, k), out) {
                        stored.insert(k.clone(), s);
                    }
                }
                None if keep_unknown => {
                    stored.insert(k.clone(), v.clone());
                }
                None => {}
            }
        }
        if let Some(props) = props {
            for (k, sub) in props {
                if !stored.contains_key(k)
                    && let Some(d) = sub.get("default")
                {
                    // Defaults are stored as given and checked like any value.
                    if let Some(s) = self.check(sub, d, &child(path, k), out) {
                        stored.insert(k.clone(), s);
                    }
                }
            }
        }
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !stored.contains_key(r) {
                out.push(Violation {
                    path: child(path, r),
                    rule: "required",
                });
            }
        }
        Value::Object(stored)
    }
}

/// An RFC 3339 date-time, as the API server's `date-time` format takes it.
pub fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let fields = (|| {
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        Some((y, mo, d, h, mi, sec))
    })();
    let Some((y, mo, d, h, mi, sec)) = fields else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let date_ok = (1..=12).contains(&mo) && d >= 1 && d <= days[(mo - 1) as usize];
    if !(date_ok && h < 24 && mi < 60 && sec < 60)
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        "Z" | "z" => true,
        zone => {
            let z = zone.as_bytes();
            z.len() == 6
                && matches!(z[0], b'+' | b'-')
                && z[3] == b':'
                && zone[1..3].parse::<u32>().is_ok_and(|h| h < 24)
                && zone[4..6].parse::<u32>().is_ok_and(|m| m < 60)
        }
    }
}

fn is_integer(v: &Value) -> bool {
    // The API server holds integers as int64.
    v.as_i64().is_some()
}

fn bounds(schema: &Value, v: &Value, bad: &mut impl FnMut(&'static str)) {
    let x = v.as_f64().unwrap_or(f64::NAN);
    let exclusive = |k: &str| schema.get(k) == Some(&Value::Bool(true));
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && (x < min || (exclusive("exclusiveMinimum") && x == min))
    {
        bad("minimum");
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && (x > max || (exclusive("exclusiveMaximum") && x == max))
    {
        bad("maximum");
    }
}

/// Every path present in `v`, in the form the operator's errors use: `spec.sites[2].name`.
pub fn paths(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, path: String, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    walk(v, child(&path, k), out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
        if !path.is_empty() {
            out.insert(path);
        }
    }
    let mut out = BTreeSet::new();
    walk(v, String::new(), &mut out);
    out
}

/// The schema node of `path` (`spec.sites[2].name`) under `schema`.
pub fn schema_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        node = node
            .get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| node.get("additionalProperties"))?;
        for _ in rest.split('[').filter(|s| !s.is_empty()) {
            node = node.get("items")?;
        }
    }
    Some(node)
}

/// Does a refusal's `field` name a field of `object`? Either the path is present in the object,
/// or it is a field the schema defines directly under an object that is present (a field whose
/// absence is the fault, e.g. `spec.consumer.optStartTime` required by `deliverPolicy`).
pub fn names_a_field(schema: &Value, object: &Value, field: &str) -> bool {
    let present = paths(object);
    if present.contains(field) {
        return true;
    }
    let parent_present = match field.rsplit_once('.') {
        Some((parent, _)) => present.contains(parent),
        None => true,
    };
    parent_present && schema_at(schema, field).is_some()
}

/// Removes fields and list items from `value` while `fails` still holds: a smaller object
/// that shows the same failure.
pub fn minimize(value: &Value, fails: &mut impl FnMut(&Value) -> bool) -> Value {
    let mut best = value.clone();
    let mut budget = 400usize;
    loop {
        let mut shrunk = false;
        for path in paths(&best).into_iter().rev() {
            if budget == 0 {
                return best;
            }
            budget -= 1;
            let Some(candidate) = without(&best, &path) else {
                continue;
            };
            if fails(&candidate) {
                best = candidate;
                shrunk = true;
                break;
            }
        }
        if !shrunk {
            return best;
        }
    }
}

fn without(v: &Value, path: &str) -> Option<Value> {
    let mut out = v.clone();
    let (parent, last) = match path.rfind(['.', '[']) {
        Some(i) => (&path[..i], &path[i..]),
        None => ("", path),
    };
    let target = if parent.is_empty() {
        Some(&mut out)
    } else {
        pointer_mut(&mut out, parent)
    }?;
    if let Some(idx) = last.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let i: usize = idx.parse().ok()?;
        target.as_array_mut()?.remove(i);
    } else {
        target
            .as_object_mut()?
            .remove(last.trim_start_matches('.'))?;
    }
    Some(out)
}

fn pointer_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut node = v;
    for part in path.split('.') {
        let mut pieces = part.split('[');
        let name = pieces.next()?;
        if !name.is_empty() {
            node = node.get_mut(name)?;
        }
        for idx in pieces {
            let i: usize = idx.trim_end_matches(']').parse().ok()?;
            node = node.get_mut(i)?;
        }
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
            "n": {"type": "integer", "minimum": 1, "maximum": 3, "default": 2},
            "x": {"type": "number", "maximum": 1.0, "nullable": true},
            "list": {"type": "array", "maxItems": 2, "items": {"type": "object",
                "properties": {"k": {"type": "string"}}},
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]},
            "kind": {"type": "string", "enum": ["a", "b"]}
        }})
    }

    #[test]
    fn admits_prunes_and_defaults() {
        let stored =
            admit(&schema(), &json!({"name": "abc", "zz": 1, "kind": null})).expect("admissible");
        assert_eq!(stored, json!({"name": "abc", "n": 2}));
        assert_eq!(
            admit(&schema(), &json!({"name": "abc", "x": null})).expect("nullable"),
            json!({"name": "abc", "n": 2, "x": null})
        );
    }

    #[test]
    fn refuses_each_rule_at_its_path() {
        let cases = [
            (json!({}), "name", "required"),
            (json!({"name": "ABC"}), "name", "pattern"),
            (json!({"name": "abcdef"}), "name", "maxLength"),
            (json!({"name": "a", "n": 4}), "n", "maximum"),
            (json!({"name": "a", "n": 0}), "n", "minimum"),
            (json!({"name": "a", "n": 1.5}), "n", "type"),
            (
                json!({"name": "a", "x": 1.0000000000000002}),
                "x",
                "maximum",
            ),
            (json!({"name": "a", "kind": "c"}), "kind", "enum"),
            (
                json!({"name": "a", "list": [{}, {}, {}]}),
                "list",
                "maxItems",
            ),
            (
                json!({"name": "a", "list": [{"k": "1"}, {"k": "1"}]}),
                "list",
                "listMapKeys",
            ),
            (json!({"name": "a", "n": u64::MAX}), "n", "type"),
        ];
        for (v, path, rule) in cases {
            let got = admit(&schema(), &v).expect_err("refused");
            assert!(
                got.contains(&Violation {
                    path: path.into(),
                    rule
                }),
                "{v}: {got:?}"
            );
        }
    }

    #[test]
    fn date_times() {
        for ok in [
            "2026-01-01T00:00:00Z",
            "2024-02-29T23:59:59.5+01:00",
            "2026-01-01t00:00:00z",
        ] {
            assert!(is_date_time(ok), "{ok}");
        }
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00",
            "x",
            "",
        ] {
            assert!(!is_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn field_names() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "sites": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "consumer": {"type": "object", "properties": {"optStartTime": {"type": "string"}}}}}}});
        let obj = json!({"spec": {"sites": [{"name": "a"}, {}], "consumer": {}}});
        assert!(names_a_field(&s, &obj, "spec.sites[0].name"));
        assert!(names_a_field(&s, &obj, "spec.consumer.optStartTime"));
        assert!(names_a_field(&s, &obj, "spec.sites[1].name"));
        assert!(!names_a_field(&s, &obj, "spec.sites[2].name"));
        assert!(!names_a_field(&s, &obj, "spec.nothing"));
    }

    #[test]
    fn generates_admissible_and_inadmissible_values_reproducibly() {
        let (mut a, mut b) = (Generator::new(7), Generator::new(7));
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..500 {
            let v = a.generate(&schema());
            assert_eq!(v, b.generate(&schema()), "the same seed, the same values");
            match admit(&schema(), &v) {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(ok > 50 && refused > 50, "{ok} admissible, {refused} not");
    }

    #[test]
    fn minimizes() {
        let v = json!({"a": 1, "b": {"c": [1, 2, 3], "d": "x"}});
        let small = minimize(&v, &mut |v| v.pointer("/b/c/1").is_some());
        assert_eq!(small, json!({"b": {"c": [1, 2]}}));
    }
}
