//! The delivered mark: where the undelivered part of the outbox log begins.
//!
//! `outbox.mark` is 64 bytes, two slots of 32, overwritten in place (never grown, so a full
//! disk does not refuse it) and alternately, so a write torn by a crash or power cut leaves
//! the other slot intact. A slot: magic `QOM1`, sequence (u64), log generation (u64), byte
//! offset (u64), FNV-1a checksum of the 28 bytes before it (u32), all little-endian. The valid
//! slot with the higher sequence wins.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"QOM1";
const SLOT: usize = 32;

/// What a slot says: the log of generation `generation` is delivered up to byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub seq: u64,
    pub generation: u64,
    pub offset: u64,
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn encode(m: &Mark) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[..4].copy_from_slice(MAGIC);
    b[4..12].copy_from_slice(&m.seq.to_le_bytes());
    b[12..20].copy_from_slice(&m.generation.to_le_bytes());
    b[20..28].copy_from_slice(&m.offset.to_le_bytes());
    let sum = fnv1a(&b[..28]);
    b[28..].copy_from_slice(&sum.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Mark> {
    if b.len() < SLOT || &b[..4] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let mut sum = [0u8; 4];
    sum.copy_from_slice(&b[28..32]);
    (fnv1a(&b[..28]) == u32::from_le_bytes(sum)).then(|| Mark {
        seq: u64_at(4),
        generation: u64_at(12),
        offset: u64_at(20),
    })
}

/// The mark file, open for in-place writes.
#[derive(Debug)]
pub struct MarkFile {
    file: File,
    last: Mark,
}

impl MarkFile {
    /// Opens (creating and sizing it when missing) and reads the newest valid slot.
    pub fn open(path: &Path) -> std::io::Result<(MarkFile, Option<Mark>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::with_capacity(2 * SLOT);
        file.read_to_end(&mut bytes)?;
        let found = [bytes.get(..SLOT), bytes.get(SLOT..2 * SLOT)]
            .into_iter()
            .flatten()
            .filter_map(decode)
            .max_by_key(|m| m.seq);
        if bytes.len() < 2 * SLOT {
            // Reserve both slots now, so later writes never need a new block.
            file.write_all_at(&[0u8; 2 * SLOT][bytes.len()..], bytes.len() as u64)?;
        }
        let last = found.unwrap_or(Mark {
            seq: 0,
            generation: 0,
            offset: 0,
        });
        Ok((MarkFile { file, last }, found))
    }

    /// Records `generation`/`offset` in the older slot.
    pub fn write(&mut self, generation: u64, offset: u64) -> std::io::Result<()> {
        let m = Mark {
            seq: self.last.seq + 1,
            generation,
            offset,
        };
        let slot = (m.seq % 2) * SLOT as u64;
        self.file.write_all_at(&encode(&m), slot)?;
        self.last = m;
        Ok(())
    }

    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    pub fn current(&self) -> Mark {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_valid_slot_wins_and_a_torn_slot_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let (mut f, none) = MarkFile::open(&path).unwrap();
        assert_eq!(none, None);
        f.write(1, 100).unwrap();
        f.write(1, 200).unwrap();
        drop(f);
        let (_, m) = MarkFile::open(&path).unwrap();
        assert_eq!(m.map(|m| (m.generation, m.offset)), Some((1, 200)));
        // Tear the newest slot (seq 2 lives in slot 0): the older one is used.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"xx", 10)
            .unwrap();
        let (mut f, m) = MarkFile::open(&path).unwrap();
        assert_eq!(m.map(|m| (m.generation, m.offset)), Some((1, 100)));
        f.write(1, 300).unwrap();
        drop(f);
        let (_, m) = MarkFile::open(&path).unwrap();
        assert_eq!(m.map(|m| (m.generation, m.offset)), Some((1, 300)));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64);
    }
}
