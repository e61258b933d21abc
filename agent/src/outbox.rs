//! The on-disk outbox: packets that could not be deposited wait here, in order, across agent
//! restarts, until NATS takes them.
//!
//! Policy: bounded by count; when full, the **oldest** packet is dropped (counted and logged),
//! since on an edge device the newest outcomes matter most. Entries are JSON lines in
//! `<data_dir>/outbox.jsonl`; the file is appended on push and rewritten when the head is
//! delivered. Writes go to the page cache (no fsync per packet): the outbox survives an agent
//! crash or restart, not a power cut in the last seconds.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

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

#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    entries: VecDeque<Entry>,
    max: usize,
    file: File,
    /// Packets dropped because the outbox was full.
    pub dropped: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, loading what a previous run left.
    pub fn open(dir: &Path, max: usize) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("outbox.jsonl");
        let mut entries = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                // A torn last line (crash mid-write) is skipped.
                if let Ok(e) = serde_json::from_str::<Entry>(&line?) {
                    entries.push_back(e);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut outbox = Outbox {
            path,
            entries,
            max: max.max(1),
            file,
            dropped: 0,
        };
        if outbox.entries.len() > outbox.max {
            let excess = outbox.entries.len() - outbox.max;
            outbox.entries.drain(..excess);
            outbox.dropped += excess as u64;
            outbox.rewrite()?;
        }
        Ok(outbox)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends packets; drops the oldest when full. Returns how many were dropped.
    pub fn push(&mut self, new: impl IntoIterator<Item = Entry>) -> std::io::Result<u64> {
        let mut buf = String::new();
        let mut dropped = 0;
        for e in new {
            if self.entries.len() >= self.max {
                self.entries.pop_front();
                dropped += 1;
            }
            buf.push_str(&serde_json::to_string(&e).map_err(std::io::Error::other)?);
            buf.push('\n');
            self.entries.push_back(e);
        }
        if dropped > 0 {
            self.dropped += dropped;
            tracing::warn!(
                dropped,
                capacity = self.max,
                "outbox full: dropped the oldest packets"
            );
            self.rewrite()?;
        } else {
            self.file.write_all(buf.as_bytes())?;
        }
        Ok(dropped)
    }

    /// The first `n` entries, oldest first.
    pub fn head(&self, n: usize) -> Vec<Entry> {
        self.entries.iter().take(n).cloned().collect()
    }

    /// Removes the first `n` entries (delivered) and persists the rest.
    pub fn pop(&mut self, n: usize) -> std::io::Result<()> {
        let n = n.min(self.entries.len());
        if n == 0 {
            return Ok(());
        }
        self.entries.drain(..n);
        self.rewrite()
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = String::new();
            for e in &self.entries {
                buf.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
                buf.push('\n');
            }
            f.write_all(buf.as_bytes())?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry {
            subject: "qis.a.b".into(),
            id: format!("id-{i}"),
            kind: "outcome".into(),
            hops: 0,
            body: format!("{{\"n\": {i}}}"),
        }
    }

    #[test]
    fn survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 10).unwrap();
        o.push((0..5).map(entry)).unwrap();
        o.pop(2).unwrap();
        o.push([entry(5)]).unwrap();
        drop(o);
        let o = Outbox::open(dir.path(), 10).unwrap();
        assert_eq!(
            o.head(10).iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["id-2", "id-3", "id-4", "id-5"]
        );
    }

    #[test]
    fn full_drops_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 3).unwrap();
        assert_eq!(o.push((0..5).map(entry)).unwrap(), 2);
        assert_eq!(o.dropped, 2);
        assert_eq!(
            o.head(3).iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["id-2", "id-3", "id-4"]
        );
        drop(o);
        assert_eq!(Outbox::open(dir.path(), 3).unwrap().len(), 3);
    }

    #[test]
    fn torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 10).unwrap();
        o.push([entry(1)]).unwrap();
        drop(o);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("outbox.jsonl"))
            .unwrap()
            .write_all(b"{\"s\": \"tor")
            .unwrap();
        assert_eq!(Outbox::open(dir.path(), 10).unwrap().len(), 1);
    }
}
