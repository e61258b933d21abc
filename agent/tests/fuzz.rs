//! Bad input, fuzzed on stable Rust: a mutation fuzzer (bit flips, byte edits, splices of
//! valid bodies, a dictionary of JSON and NaN/Infinity tokens) drives the packet decoder and
//! the intake endpoint. Nothing may panic; whatever the decoder accepts re-encodes (in the
//! seed's form) to a body that decodes to the same packet, or is refused as too large (a
//! compact or UTF-8 body can grow when written with the seed's separators and escapes); the
//! intake answers 202 or 4xx, never 5xx. CI runs a bounded number of executions; `QIS_FUZZ_EXECS=1000000` runs more.

use qis_agent::packet::OutcomePacket;
use tower::ServiceExt;

/// xorshift64*: deterministic, so a failure reproduces from its printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const DICT: &[&str] = &[
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-0.0",
    "null",
    "true",
    "{}",
    "[]",
    "\"\"",
    "\\u0000",
    "\\ud800",
    "\"agent_id\"",
    "\"extra\"",
    ",",
    ":",
    "\"",
    "\\",
    "hvac.>",
    "*",
    "0.5",
    "1.5",
    "-1",
    "9007199254740993",
    "\"confidence\": ",
    "[0.1, NaN]",
];

fn seeds() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/packets.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
    ["valid", "invalid"]
        .iter()
        .flat_map(|k| doc[k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v["body"].as_str().map(|b| b.as_bytes().to_vec()))
        .collect()
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = rng.below(8).min(b.len() - i);
                b.drain(i..i + n);
            }
            3 => {
                let i = rng.below(b.len() + 1);
                let word = DICT[rng.below(DICT.len())].as_bytes();
                b.splice(i..i, word.iter().copied());
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let (i, j) = (rng.below(b.len() + 1), rng.below(other.len() + 1));
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            _ => {
                let i = rng.below(b.len() + 1);
                let n = rng.below(600);
                b.splice(i..i, std::iter::repeat_n(b'x', n));
            }
        }
    }
    b
}

fn execs(default: usize) -> usize {
    std::env::var("QIS_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Proves the decoder never panics and is consistent with the encoder on mutated input.
#[test]
fn decoder_survives_mutations() {
    let seeds = seeds();
    let n = execs(200_000);
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let (mut accepted, started) = (0usize, std::time::Instant::now());
    for _ in 0..n {
        let body = mutate(&mut rng, &seeds);
        if let Ok(p) = OutcomePacket::decode(&body) {
            accepted += 1;
            match p.encode() {
                Ok(again) => {
                    assert!(again.len() <= 512);
                    assert_eq!(OutcomePacket::decode(&again).expect("and decodes"), p);
                }
                Err(qis_agent::packet::PacketError::TooLarge { size }) => assert!(size > 512),
                Err(e) => panic!(
                    "accepted by the decoder, refused by the encoder: {e} for {:?}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }
    eprintln!(
        "decoder: {n} execs, {accepted} accepted, {:.0} execs/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
    assert!(
        accepted > 0 && accepted < n,
        "the mutations reach both outcomes"
    );
}

/// Proves the intake endpoints (single and batch) answer every mutated request with 202 or a
/// 4xx, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_survives_mutations() {
    let dir = tempfile::tempdir().expect("tmp");
    let metrics = std::sync::Arc::new(qis_agent::metrics::Metrics::default());
    // NATS is nowhere: accepted packets go to the outbox, which is all this test needs.
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("127.0.0.1:{}", qis_testkit::free_port()))
        .await
        .expect("client");
    let js = async_nats::jetstream::new(client);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let outbox = qis_agent::outbox::Outbox::open(dir.path(), 100).expect("outbox");
    let depositor = qis_agent::deposit::start(js, outbox, metrics.clone(), stop);
    let api = qis_agent::intake::IntakeState {
        depositor,
        metrics,
        views: Default::default(),
        subjects: Default::default(),
        prefix: "qis.fuzz".into(),
        max_hops: 1,
        // The seeds are stamped when they were written: no window, no skew (an unset clock
        // is still refused).
        time_bounds: qis_agent::intake::clock::TimeBounds {
            window: f64::INFINITY,
            skew: f64::INFINITY,
        },
        connected: Default::default(),
        accepting: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        limits: Default::default(),
        budget: qis_agent::intake::limits::BodyBudget::new(8 << 20),
    };
    let app = qis_agent::intake::router(api);
    let seeds = seeds();
    let mut rng = Rng(0xD1B54A32D192ED03);
    let n = execs(200_000) / 20;
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..n {
        // One request in eight goes to the batch intake, with one to five mutated lines.
        let (path, body) = if rng.below(8) == 0 {
            let lines: Vec<Vec<u8>> = (0..=rng.below(5))
                .map(|_| mutate(&mut rng, &seeds))
                .collect();
            ("/v1/outcomes/batch", lines.join(&b'\n'))
        } else {
            ("/v1/outcomes", mutate(&mut rng, &seeds))
        };
        let mut req = axum::http::Request::post(path);
        if rng.below(4) == 0 {
            req = req.header(
                "Qis-Kind",
                ["outcome", "synthesis", "vote", ""][rng.below(4)],
            );
        }
        if rng.below(4) == 0 {
            req = req.header("Qis-Hops", ["0", "1", "2", "300", "x"][rng.below(5)]);
        }
        let res = app
            .clone()
            .oneshot(req.body(axum::body::Body::from(body)).expect("request"))
            .await
            .expect("a response");
        let code = res.status().as_u16();
        assert!(
            code == 202 || (400..500).contains(&code),
            "intake answered {code}"
        );
        *codes.entry(code).or_insert(0usize) += 1;
    }
    eprintln!("intake: {n} requests, answers {codes:?}");
    assert!(codes.contains_key(&202) && codes.keys().any(|c| *c >= 400));
}
