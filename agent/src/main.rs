//! `qis-agent`: the edge agent.
//!
//! - `qis-agent run [--config agent.yaml]`: the agent loop (standalone with a file, cluster
//!   mode from the pod's environment without one).
//! - `qis-agent publish [--agent http://127.0.0.1:8080] [FILE…]`: hand outcome packets (JSON
//!   lines) to a running agent's intake; refusals are printed with their rule.
//! - `qis-agent synthesize [FILE…]`: offline synthesis of packet bodies.

use clap::{Parser, Subcommand, ValueEnum};
use qis_agent::packet::{OutcomePacket, PacketMeta};
use qis_agent::synthesis::{Settings, Synthesizer};
use qis_crds::SynthesisMethod;
use std::io::{BufRead, BufReader, Read};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(version, about = "QIS edge agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: standalone with --config, in a cluster from the pod's environment.
    Run {
        /// Standalone YAML configuration; without it, cluster mode (QIS_* environment).
        #[arg(long, env = "QIS_CONFIG")]
        config: Option<std::path::PathBuf>,
        /// Log format.
        #[arg(long, env = "QIS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
    },
    /// Hand outcome packets (one JSON object per line) to a running agent's intake.
    Publish {
        /// Files of packets; none or `-` reads stdin.
        files: Vec<String>,
        /// The agent's intake address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        agent: String,
    },
    /// Synthesize outcome-packet bodies (one JSON object per line) into a consensus.
    Synthesize {
        /// Files of packet bodies; none or `-` reads stdin.
        files: Vec<String>,
        /// How votes are counted and confidences combined.
        #[arg(long, value_enum, default_value_t = Method::TrimmedMean)]
        method: Method,
        /// Window, seconds.
        #[arg(long, default_value_t = Settings::DEFAULT_WINDOW)]
        window: f64,
        /// Half-life of a vote's weight, seconds (no decay when left out).
        #[arg(long)]
        half_life: Option<f64>,
        /// Strength above which to alert.
        #[arg(long, default_value_t = 0.6)]
        threshold: f64,
        /// Distinct agents needed to alert.
        #[arg(long, default_value_t = 2)]
        quorum: u32,
        /// Combined confidence needed to alert.
        #[arg(long, default_value_t = 0.5)]
        min_confidence: f64,
        /// Synthesize as of this time (seconds since the epoch); default: the newest packet's.
        #[arg(long)]
        now: Option<f64>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Method {
    Seed,
    Mean,
    TrimmedMean,
    Median,
}

fn main() -> ExitCode {
    qis_agent::contain::abort_outside_contained_work();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => run_agent(config, &log_format),
        Command::Publish { files, agent } => publish(&files, &agent),
        Command::Synthesize {
            files,
            method,
            window,
            half_life,
            threshold,
            quorum,
            min_confidence,
            now,
        } => {
            let settings = match method {
                Method::Seed => Settings::seed(),
                m => Settings {
                    method: match m {
                        Method::Mean => SynthesisMethod::Mean,
                        Method::Median => SynthesisMethod::Median,
                        _ => SynthesisMethod::TrimmedMean,
                    },
                    window,
                    half_life,
                    threshold,
                    quorum,
                    min_confidence,
                    ..Settings::default()
                },
            };
            synthesize(&files, settings, now)
        }
    }
}

fn run_agent(config: Option<std::path::PathBuf>, log_format: &str) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,async_nats=warn".into());
    if log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = match config {
        Some(path) => qis_agent::config::Config::from_file(&path),
        None => qis_agent::config::Config::from_env(|k| std::env::var(k).ok()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(qis_agent::run::run(config, None)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// POSTs one body to `path` of the agent at `addr` and returns (status, response body).
fn post(addr: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr.trim_start_matches("http://"))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Calls `f(source, line number, line)` for every non-blank line of the files (stdin for none
/// or `-`); `f` returns `Err(code)` to stop. Unreadable input stops with code 2.
fn for_each_line(
    files: &[String],
    mut f: impl FnMut(&str, usize, &str) -> Result<(), ExitCode>,
) -> Result<(), ExitCode> {
    let sources: Vec<String> = if files.is_empty() {
        vec!["-".into()]
    } else {
        files.to_vec()
    };
    for source in &sources {
        let reader: Box<dyn Read> = if source == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(source).map_err(|e| {
                eprintln!("error: {source}: {e}");
                ExitCode::from(2)
            })?)
        };
        for (n, line) in BufReader::new(reader).lines().enumerate() {
            let line = line.map_err(|e| {
                eprintln!("error: {source}: {e}");
                ExitCode::from(2)
            })?;
            if !line.trim().is_empty() {
                f(source, n + 1, line.trim())?;
            }
        }
    }
    Ok(())
}

/// Lines sent in one batch by `qis-agent publish`.
const PUBLISH_BATCH: usize = 256;

/// Sends the lines in batches (`POST /v1/outcomes/batch`, all or nothing); a refused batch is
/// sent again line by line, so only the bad lines are refused, each named.
fn publish(files: &[String], agent: &str) -> ExitCode {
    let (mut sent, mut refused) = (0usize, 0usize);
    let mut pending: Vec<(String, usize, String)> = Vec::new();
    let mut flush = |pending: &mut Vec<(String, usize, String)>| -> Result<(), ExitCode> {
        if pending.is_empty() {
            return Ok(());
        }
        let body: String = pending.iter().map(|(_, _, l)| format!("{l}\n")).collect();
        let unreachable = |e: std::io::Error| {
            eprintln!("error: agent at {agent}: {e}");
            ExitCode::from(1)
        };
        match post(agent, "/v1/outcomes/batch", &body).map_err(unreachable)? {
            (202, _) => sent += pending.len(),
            (code, _) if (400..500).contains(&code) => {
                for (source, n, line) in pending.iter() {
                    match post(agent, "/v1/outcomes", line).map_err(unreachable)? {
                        (202, _) => sent += 1,
                        (code, body) => {
                            refused += 1;
                            eprintln!("refused {source}:{n}: {code} {body}");
                        }
                    }
                }
            }
            (code, body) => {
                eprintln!("error: agent at {agent}: {code} {body}");
                return Err(ExitCode::from(1));
            }
        }
        pending.clear();
        Ok(())
    };
    let done = for_each_line(files, |source, n, line| {
        pending.push((source.to_owned(), n, line.to_owned()));
        if pending.len() >= PUBLISH_BATCH {
            flush(&mut pending)?;
        }
        Ok(())
    })
    .and_then(|()| flush(&mut pending));
    if let Err(code) = done {
        return code;
    }
    println!("{sent} accepted, {refused} refused");
    if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn synthesize(files: &[String], settings: Settings, now: Option<f64>) -> ExitCode {
    let mut packets = Vec::new();
    let mut refused = 0usize;
    let done = for_each_line(files, |source, n, line| {
        match OutcomePacket::decode(line.as_bytes()) {
            Ok(p) => packets.push((PacketMeta::outcome(line.as_bytes()), p)),
            Err(e) => {
                refused += 1;
                eprintln!("refused {source}:{n}: {} ({e})", e.rule());
            }
        }
        Ok(())
    });
    if let Err(code) = done {
        return code;
    }
    let now = now.unwrap_or_else(|| packets.iter().map(|(_, p)| p.timestamp).fold(0.0, f64::max));
    let mut synth = Synthesizer::new(settings);
    for (meta, p) in &packets {
        synth.ingest(p, meta, now);
    }
    let Some(s) = synth.snapshot(now) else {
        println!("no packets in the window ({refused} refused)");
        return ExitCode::from(1);
    };
    let report = format!(
        "consensus_problem:   {}\nconsensus_strength:  {:.3}\nweighted_confidence: {:.3}\n\
         n_agents:            {}\npackets:             {} ({refused} refused)\n\
         synthesis_pairs:     {}\ndispersion (IQR):    {:.3}\neffective_n:         {:.2}\n\
         alert:               {}\nrecommendation:      {}\n",
        s.problem,
        s.strength,
        s.weighted_confidence,
        s.agents,
        s.packets,
        s.synthesis_pairs,
        s.dispersion,
        s.effective_n,
        s.alert,
        s.recommendation
    );
    // A reader that stops early (`| head`, `| grep -q`) is not an error: no panic on EPIPE.
    use std::io::Write;
    match std::io::stdout().lock().write_all(report.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: stdout: {e}");
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
