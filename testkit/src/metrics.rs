//! The tests' reader of Prometheus text exposition (what the agent and the operator serve at
//! `/metrics`): one parser, exact metric names, label filters, sums over label sets.
//!
//! Fetch with [`crate::http::Http::metrics`]; this module only reads text.

use std::collections::BTreeMap;

/// One sample: the metric's name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses text exposition. Comments, blank lines and lines it cannot read are skipped
    /// (a test asserts on the samples it needs, and a missing one shows as `None`).
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Metrics { samples }
    }

    /// The samples named exactly `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sum of `name` over all its label sets, `None` when no sample has that name.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.value_where(name, &[])
    }

    /// The sum of `name` over the label sets that carry every `(label, value)` of `filter`,
    /// `None` when none does.
    pub fn value_where(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut matched = self
            .series(name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .peekable();
        matched.peek()?;
        Some(matched.sum())
    }

    /// [`Metrics::value`], 0 when absent (a counter nothing has incremented yet).
    pub fn count(&self, name: &str) -> f64 {
        self.value(name).unwrap_or(0.0)
    }

    /// [`Metrics::value_where`], 0 when absent.
    pub fn count_where(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.value_where(name, filter).unwrap_or(0.0)
    }
}

/// `name{a="x",b="y"} value [timestamp]` or `name value [timestamp]`.
fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let (labels, rest) = parse_labels(&line[i + 1..])?;
            (&line[..i], labels, rest)
        }
        Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
        None => return None,
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The label set after `{` up to its `}`, and what follows it.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        let (value, rest) = parse_quoted(s[eq + 1..].trim_start())?;
        labels.insert(key, value);
        s = rest;
    }
}

/// A quoted label value with `\\`, `\"` and `\n` escapes, and what follows it.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP qis_packets_total Packets.
# TYPE qis_packets_total counter
qis_packets_total{rule="oversize",site="a"} 3
qis_packets_total{rule="clock",site="b"} 4
qis_packets_total_created{rule="clock"} 1700000000
qis_packets 9
qis_odd{note="a \"quoted\}, value",site="a"} 2.5 1700000000000
qis_up +Inf
garbage line without a value
# EOF
"#;

    #[test]
    fn exact_names_sum_over_label_sets_and_filter_by_label() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.value("qis_packets_total"), Some(7.0));
        assert_eq!(m.value("qis_packets"), Some(9.0));
        assert_eq!(
            m.value_where("qis_packets_total", &[("rule", "clock")]),
            Some(4.0)
        );
        assert_eq!(
            m.value_where("qis_packets_total", &[("rule", "none")]),
            None
        );
        assert_eq!(m.count_where("qis_packets_total", &[("rule", "none")]), 0.0);
        assert_eq!(m.value("qis_packets_tot"), None);
    }

    #[test]
    fn quoted_values_escapes_timestamps_and_infinities_are_read() {
        let m = Metrics::parse(TEXT);
        let odd = m.series("qis_odd").next().expect("qis_odd");
        assert_eq!(odd.labels["note"], r#"a "quoted}, value"#);
        assert_eq!(odd.value, 2.5);
        assert_eq!(m.value("qis_up"), Some(f64::INFINITY));
        assert_eq!(m.value("garbage"), None);
    }
}
