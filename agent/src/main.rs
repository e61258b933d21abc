//! `qis-agent`: the edge agent. For now: synthesis of packet bodies from files or stdin.

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
    let cli = Cli::parse();
    match cli.command {
        Command::Synthesize {
            files,
            method,
            window,
            half_life,
            threshold,
            quorum,
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
                    ..Settings::default()
                },
            };
            synthesize(&files, settings, now)
        }
    }
}

fn synthesize(files: &[String], settings: Settings, now: Option<f64>) -> ExitCode {
    let mut packets = Vec::new();
    let mut refused = 0usize;
    let sources: Vec<String> = if files.is_empty() {
        vec!["-".into()]
    } else {
        files.to_vec()
    };
    for source in &sources {
        let reader: Box<dyn Read> = if source == "-" {
            Box::new(std::io::stdin())
        } else {
            match std::fs::File::open(source) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    eprintln!("error: {source}: {e}");
                    return ExitCode::from(2);
                }
            }
        };
        for (n, line) in BufReader::new(reader).lines().enumerate() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {source}: {e}");
                    return ExitCode::from(2);
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            match OutcomePacket::decode(line.as_bytes()) {
                Ok(p) => packets.push((PacketMeta::outcome(line.as_bytes()), p)),
                Err(e) => {
                    refused += 1;
                    eprintln!("refused {source}:{}: {} ({e})", n + 1, e.rule());
                }
            }
        }
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
    println!("consensus_problem:   {}", s.problem);
    println!("consensus_strength:  {:.3}", s.strength);
    println!("weighted_confidence: {:.3}", s.weighted_confidence);
    println!("n_agents:            {}", s.agents);
    println!("packets:             {} ({refused} refused)", s.packets);
    println!("synthesis_pairs:     {}", s.synthesis_pairs);
    println!("dispersion (IQR):    {:.3}", s.dispersion);
    println!("effective_n:         {:.2}", s.effective_n);
    println!("alert:               {}", s.alert);
    println!("recommendation:      {}", s.recommendation);
    ExitCode::SUCCESS
}
