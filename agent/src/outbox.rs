//! The on-disk outbox: packets that could not be deposited wait here, in order, across agent
//! restarts, until NATS takes them.
//!
//! On disk (in `<data_dir>`):
//! - `outbox.jsonl`, an append-only log: a header line `{"qisOutbox":1,"generation":N}`, then one
//!   JSON line per packet. Packets are only ever appended.
//! - `outbox.mark` (see [`mark`]): how far the log is delivered (generation + byte offset),
//!   overwritten in place in one of two checksummed slots.
//!
//! Delivering the head writes the mark (32 bytes in place), never the log. When everything is
//! delivered the log is truncated to its header (which frees space even on a full disk); when
//! the delivered prefix is at least as large as what is pending (and 256 KiB), the pending
//! part is copied to a new log of the next generation (tmp + rename). A crash between the
//! rename and the mark write is safe: a log one generation newer than the mark is all
//! pending.
//!
//! Integrity: memory and disk stay in step. A push enters memory only after its lines are
//! written (and synced, with `fsync: always`); a failed write is cut back off the log, and the
//! error goes to the caller (the intake answers 503, nothing was acknowledged). On open, a torn
//! last line (crash mid-append) is cut before anything is appended. Delivered packets are
//! never sent again after a restart unless the 32-byte mark write itself failed (counted,
//! logged, retried on every later operation).
//!
//! Bounds: packets and bytes pending. When a push goes over either, the **oldest** packets are
//! dropped (counted and logged), since on an edge device the newest outcomes matter most. The
//! log is at most about twice the byte bound (pending + a delivered prefix no larger).

mod mark;

use mark::{Mark, MarkFile};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One packet waiting to be deposited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// NATS subject.
    #[serde(rename = "s")]
    pub subject: String,
    /// `Nats-Msg-Id`.
    #[serde(rename = "id")]
    pub id: String,
    /// `Qis-Kind`.
    #[serde(rename = "k")]
    pub kind: String,
    /// `Qis-Hops`.
    #[serde(rename = "h")]
    pub hops: u8,
    /// The body (ASCII JSON).
    #[serde(rename = "b")]
    pub body: String,
}

/// When the outbox calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every write, before the intake acknowledges: survives a power cut.
    Always,
    /// At most this long after a write: a power cut loses at most that much; an agent crash
    /// loses nothing (the page cache survives the process).
    Interval(Duration),
    /// Left to the kernel.
    Never,
}

impl Default for Fsync {
    fn default() -> Self {
        Fsync::Interval(Duration::from_secs(1))
    }
}

/// How much the outbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Packets pending.
    pub max_packets: usize,
    /// Bytes pending (the JSON lines on disk).
    pub max_bytes: u64,
}

impl Limits {
    pub const DEFAULT_MAX_PACKETS: usize = 10_000;
    pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packets: Self::DEFAULT_MAX_PACKETS,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// An outbox operation that failed; nothing it was given was kept.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox entry cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl OutboxError {
    /// The refusal rule the intake counts.
    pub fn rule(&self) -> &'static str {
        "outbox_unwritable"
    }
}

/// The smallest delivered prefix worth compacting away.
const COMPACT_MIN: u64 = 256 * 1024;
const LOG: &str = "outbox.jsonl";
const MARK: &str = "outbox.mark";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Header {
    qis_outbox: u32,
    generation: u64,
}

fn header_line(generation: u64) -> Vec<u8> {
    // Two integers: serializing cannot fail; written by hand to keep `Result` out of it.
    format!("{{\"qisOutbox\":1,\"generation\":{generation}}}\n").into_bytes()
}

/// What opening found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of a torn last line cut off.
    pub torn_bytes: u64,
    /// Lines in the middle that did not parse (skipped).
    pub corrupt_lines: u64,
    /// Packets found already delivered by the mark.
    pub delivered: u64,
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    entries: VecDeque<(Entry, u64)>,
    pending_bytes: u64,
    limits: Limits,
    fsync: Fsync,
    log: File,
    mark: MarkFile,
    generation: u64,
    header_len: u64,
    /// Bytes of the log that are known good (where the next append goes).
    log_len: u64,
    /// Where the first pending entry starts.
    start: u64,
    /// The mark on disk is behind `start`/`generation` (its write failed): retried.
    mark_stale: bool,
    /// A failed append may have left bytes after `log_len`: cut before the next append.
    tail_dirty: bool,
    /// Unsynced writes (fsync interval) since this instant.
    dirty_since: Option<Instant>,
    /// Packets dropped because the outbox was full.
    pub dropped: u64,
    /// Mark writes that failed (each risks re-sending delivered packets after a crash).
    pub mark_failures: u64,
    pub recovery: Recovery,
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> OutboxError + use<> {
    let path = path.to_owned();
    move |source| OutboxError::Io { path, op, source }
}

/// One line of the log as read back.
enum Line {
    Entry(Entry),
    Header(u64),
    Bad,
}

fn parse(line: &[u8]) -> Line {
    if let Ok(e) = serde_json::from_slice::<Entry>(line) {
        return Line::Entry(e);
    }
    match serde_json::from_slice::<Header>(line) {
        Ok(h) if h.qis_outbox == 1 => Line::Header(h.generation),
        _ => Line::Bad,
    }
}

/// The outbox's files in `dir` (created if missing): the log (read and append), its path, the
/// mark file and the mark it held. A temporary file left by an interrupted rewrite is removed.
fn open_files(dir: &Path) -> Result<(File, PathBuf, MarkFile, Option<Mark>), OutboxError> {
    std::fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
    let path = dir.join(LOG);
    let tmp = dir.join("outbox.jsonl.tmp");
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(io(&tmp, "remove leftover"))?;
    }
    let mark_path = dir.join(MARK);
    let (mark, found) = MarkFile::open(&mark_path).map_err(io(&mark_path, "open"))?;
    let log = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(io(&path, "open"))?;
    Ok((log, path, mark, found))
}

/// What reading the log back found.
#[derive(Default)]
struct LogScan {
    /// The header's generation and length, if the log opens with one.
    header: Option<(u64, u64)>,
    /// Every entry, with where its line starts and its length.
    lines: Vec<(Entry, u64, u64)>,
    /// Where the last good line ends.
    good_len: u64,
    /// Where the log ends.
    end: u64,
    /// An entry came before any header: the format before the mark.
    legacy: bool,
    /// Bad lines followed by a good one (bad lines at the end are the torn tail).
    corrupt_lines: u64,
}

impl LogScan {
    /// Reads every line of `log`, with where it starts.
    fn read(log: &mut File, path: &Path) -> Result<LogScan, OutboxError> {
        let mut scan = LogScan::default();
        // Bad lines not yet followed by a good one: at the end, they are the torn tail.
        let mut bad_run = 0u64;
        let mut reader = BufReader::new(log);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(io(path, "read"))? as u64;
            if n == 0 {
                return Ok(scan);
            }
            let pos = scan.end;
            let parsed = match buf.strip_suffix(b"\n") {
                Some(line) => parse(line),
                None => Line::Bad,
            };
            match parsed {
                Line::Header(g) if pos == 0 => {
                    scan.header = Some((g, n));
                    scan.good_len = pos + n;
                }
                Line::Entry(e) => {
                    scan.legacy |= scan.header.is_none();
                    scan.lines.push((e, pos, n));
                    scan.good_len = pos + n;
                    scan.corrupt_lines += bad_run;
                    bad_run = 0;
                }
                _ => bad_run += 1,
            }
            scan.end += n;
        }
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir` with a packet bound and the default byte bound
    /// and fsync policy.
    pub fn open(dir: &Path, max_packets: usize) -> Result<Outbox, OutboxError> {
        let limits = Limits {
            max_packets,
            ..Limits::default()
        };
        Self::open_with(dir, limits, Fsync::default())
    }

    /// Opens (or creates) the outbox in `dir`, loading what a previous run left: a torn last
    /// line is cut, the delivered prefix skipped, a log of the old format (no header)
    /// rewritten.
    pub fn open_with(dir: &Path, limits: Limits, fsync: Fsync) -> Result<Outbox, OutboxError> {
        let (mut log, path, mark, found) = open_files(dir)?;
        let scan = LogScan::read(&mut log, &path)?;
        let mut recovery = Recovery {
            corrupt_lines: scan.corrupt_lines,
            ..Recovery::default()
        };
        if scan.end > scan.good_len {
            // The bad bytes at the end are a torn append, not corruption.
            recovery.torn_bytes = scan.end - scan.good_len;
            tracing::warn!(
                bytes = recovery.torn_bytes,
                "outbox: cutting a torn last line"
            );
            log.set_len(scan.good_len)
                .map_err(io(&path, "cut torn tail"))?;
        }
        if recovery.corrupt_lines > 0 {
            tracing::warn!(
                lines = recovery.corrupt_lines,
                "outbox: skipped lines that do not parse"
            );
        }
        let (generation, header_len) = scan.header.unwrap_or_default();
        let start = match found {
            Some(m) if m.generation == generation => m.offset.clamp(header_len, scan.good_len),
            // A compaction renamed its log and stopped before the mark: all pending.
            _ => header_len,
        };
        let mut outbox = Outbox {
            dir: dir.to_owned(),
            entries: VecDeque::new(),
            pending_bytes: 0,
            limits: Limits {
                max_packets: limits.max_packets.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
            fsync,
            log,
            mark,
            generation,
            header_len,
            log_len: scan.good_len,
            start,
            mark_stale: false,
            tail_dirty: false,
            dirty_since: None,
            dropped: 0,
            mark_failures: 0,
            recovery,
        };
        outbox.load(scan.lines);
        outbox.settle_format(found, scan.header.is_none() || scan.legacy)?;
        Ok(outbox)
    }

    /// Takes the log's entries from `start` on as pending; those before it were delivered.
    fn load(&mut self, lines: Vec<(Entry, u64, u64)>) {
        for (e, at, n) in lines {
            if at >= self.start {
                self.pending_bytes += n;
                self.entries.push_back((e, n));
            } else {
                self.recovery.delivered += 1;
            }
        }
    }

    /// Brings what was loaded to the current format and bounds: a log without a header (new,
    /// or of the format before the mark) is rewritten as the next generation; a mark that
    /// disagrees with what was loaded is written again.
    fn settle_format(&mut self, found: Option<Mark>, old_format: bool) -> Result<(), OutboxError> {
        if old_format {
            // No header (a new file, or the format before the mark): start generation 1.
            let marked = found.map(|m| m.generation).unwrap_or(0);
            self.generation = marked.max(self.generation) + 1;
            self.rewrite()?;
        } else if found.map(|m| (m.generation, m.offset)) != Some((self.generation, self.start)) {
            self.write_mark()?;
        }
        self.enforce_bounds();
        self.persist_mark();
        self.sync_now();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes pending (the packets' lines).
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Appends packets, then drops the oldest while over a bound. Returns how many were
    /// dropped. On error nothing was added: the log is cut back to before the write.
    pub fn push(&mut self, new: impl IntoIterator<Item = Entry>) -> Result<u64, OutboxError> {
        let mut buf = Vec::new();
        let mut sizes = Vec::new();
        let mut fresh = Vec::new();
        for e in new {
            let before = buf.len();
            serde_json::to_writer(&mut buf, &e)?;
            buf.push(b'\n');
            sizes.push((buf.len() - before) as u64);
            fresh.push(e);
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        self.persist_mark();
        let path = self.dir.join(LOG);
        if self.tail_dirty {
            self.log
                .set_len(self.log_len)
                .map_err(io(&path, "cut a failed append"))?;
            self.tail_dirty = false;
        }
        let written = self.log.write_all(&buf).and_then(|()| match self.fsync {
            Fsync::Always => self.log.sync_data(),
            _ => Ok(()),
        });
        if let Err(e) = written {
            // Cut what part of the write landed; if even that fails, before the next append.
            self.tail_dirty = self.log.set_len(self.log_len).is_err();
            return Err(io(&path, "append")(e));
        }
        self.log_len += buf.len() as u64;
        self.touch();
        for (e, n) in fresh.into_iter().zip(sizes) {
            self.pending_bytes += n;
            self.entries.push_back((e, n));
        }
        let dropped = self.enforce_bounds();
        self.persist_mark();
        Ok(dropped)
    }

    /// Drops the oldest entries while over a bound (in memory; the mark follows).
    fn enforce_bounds(&mut self) -> u64 {
        let mut dropped = 0;
        while self.entries.len() > self.limits.max_packets
            || (self.pending_bytes > self.limits.max_bytes && self.entries.len() > 1)
        {
            self.advance(1);
            dropped += 1;
        }
        if dropped > 0 {
            self.dropped += dropped;
            tracing::warn!(
                dropped,
                max_packets = self.limits.max_packets,
                max_bytes = self.limits.max_bytes,
                "outbox full: dropped the oldest packets"
            );
        }
        dropped
    }

    fn advance(&mut self, n: usize) {
        for (_, len) in self.entries.drain(..n) {
            self.start += len;
            self.pending_bytes -= len;
        }
        self.mark_stale = true;
    }

    /// The first `n` entries, oldest first.
    pub fn head(&self, n: usize) -> Vec<Entry> {
        self.entries
            .iter()
            .take(n)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// Removes the first `n` entries (delivered). They leave memory whatever the disk says
    /// (re-sending them now would duplicate them); the mark write that records it is
    /// retried on every later operation when it fails, and the error is returned.
    pub fn pop(&mut self, n: usize) -> Result<(), OutboxError> {
        let n = n.min(self.entries.len());
        if n == 0 {
            return Ok(());
        }
        self.advance(n);
        self.compact();
        self.write_mark()
    }

    /// Writes the mark if it is behind; a failure is counted and left for the next call.
    fn persist_mark(&mut self) {
        if self.mark_stale
            && let Err(e) = self.write_mark()
        {
            tracing::error!(error = %e, "outbox: cannot record delivered packets yet");
        }
    }

    fn write_mark(&mut self) -> Result<(), OutboxError> {
        let path = self.dir.join(MARK);
        let r = self
            .mark
            .write(self.generation, self.start)
            .and_then(|()| match self.fsync {
                Fsync::Always => self.mark.sync(),
                _ => Ok(()),
            });
        match r {
            Ok(()) => {
                self.mark_stale = false;
                self.touch();
                Ok(())
            }
            Err(e) => {
                self.mark_stale = true;
                self.mark_failures += 1;
                Err(io(&path, "write mark")(e))
            }
        }
    }

    /// Frees the delivered prefix when it is worth it. Failures change nothing (logged).
    fn compact(&mut self) {
        let path = self.dir.join(LOG);
        if self.entries.is_empty() {
            // Truncate first, then the mark: a mark past the end means all delivered.
            match self.log.set_len(self.header_len) {
                Ok(()) => {
                    self.log_len = self.header_len;
                    self.start = self.header_len;
                    self.tail_dirty = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "outbox: cannot truncate")
                }
            }
            return;
        }
        let prefix = self.start - self.header_len;
        if prefix >= COMPACT_MIN && prefix >= self.pending_bytes {
            self.generation += 1;
            if let Err(e) = self.rewrite() {
                self.generation -= 1;
                tracing::warn!(error = %e, "outbox: compaction failed; the log keeps its delivered prefix");
            }
        }
    }

    /// Writes the pending entries to a new log of generation `self.generation` (tmp + rename), then
    /// the mark.
    fn rewrite(&mut self) -> Result<(), OutboxError> {
        let path = self.dir.join(LOG);
        let tmp = self.dir.join("outbox.jsonl.tmp");
        let header = header_line(self.generation);
        let result = (|| -> Result<File, OutboxError> {
            // Opened for appending before the rename: after it, this handle is the log (no
            // reopen that could fail with the new log already in place).
            let _ = std::fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(&tmp, "create"))?;
            let mut buf = header.clone();
            for (e, _) in &self.entries {
                serde_json::to_writer(&mut buf, e)?;
                buf.push(b'\n');
            }
            f.write_all(&buf).map_err(io(&tmp, "write"))?;
            if self.fsync != Fsync::Never {
                f.sync_data().map_err(io(&tmp, "sync"))?;
            }
            std::fs::rename(&tmp, &path).map_err(io(&path, "rename"))?;
            if self.fsync != Fsync::Never
                && let Ok(d) = File::open(&self.dir)
            {
                let _ = d.sync_all();
            }
            Ok(f)
        })();
        let log = match result {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.log = log;
        self.header_len = header.len() as u64;
        self.start = self.header_len;
        self.log_len = self.header_len + self.pending_bytes;
        self.tail_dirty = false;
        self.mark_stale = true;
        // The new log is safe without its mark (one generation ahead = all pending).
        self.persist_mark();
        Ok(())
    }

    fn touch(&mut self) {
        if matches!(self.fsync, Fsync::Interval(_)) && self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
    }

    /// When the next interval fsync is due (`None`: nothing unsynced).
    pub fn sync_due(&self) -> Option<Instant> {
        match (self.fsync, self.dirty_since) {
            (Fsync::Interval(d), Some(t)) => Some(t + d),
            _ => None,
        }
    }

    /// Syncs if the interval has passed.
    pub fn sync_if_due(&mut self) {
        if self.sync_due().is_some_and(|t| t <= Instant::now()) {
            self.sync_now();
        }
    }

    /// Syncs log and mark now (interval policy; no-op otherwise).
    pub fn sync_now(&mut self) {
        if self.dirty_since.take().is_some()
            && let Err(e) = self.log.sync_data().and_then(|()| self.mark.sync())
        {
            tracing::warn!(error = %e, "outbox: fsync failed");
        }
    }

    /// The generation and delivered offset the mark on disk holds (tests, diagnostics).
    pub fn mark_on_disk(&self) -> (u64, u64) {
        let m = self.mark.current();
        (m.generation, m.offset)
    }
}

#[cfg(test)]
mod tests;
