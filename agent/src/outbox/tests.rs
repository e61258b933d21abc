//! Unit tests of the outbox: order across reopen, the count and byte bounds, torn and garbled
//! lines, the delivered mark and compaction into the next generation, the old log format,
//! and every fsync policy.

use super::*;
use std::io::Write;

fn entry(i: usize) -> Entry {
    Entry {
        subject: "qis.a.b".into(),
        id: format!("id-{i}"),
        kind: "outcome".into(),
        hops: 0,
        body: format!("{{\"n\": {i}}}"),
    }
}

fn ids(o: &Outbox) -> Vec<String> {
    o.head(usize::MAX).into_iter().map(|e| e.id).collect()
}

fn names(r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("id-{i}")).collect()
}

fn append_raw(dir: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(LOG))
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn log_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG)).unwrap().len()
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
    assert_eq!(ids(&o), names(2..6));
}

#[test]
fn full_drops_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 3).unwrap();
    assert_eq!(o.push((0..5).map(entry)).unwrap(), 2);
    assert_eq!(o.dropped, 2);
    assert_eq!(ids(&o), names(2..5));
    drop(o);
    assert_eq!(ids(&Outbox::open(dir.path(), 3).unwrap()), names(2..5));
}

#[test]
fn byte_bound_drops_oldest_and_holds_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::to_vec(&entry(10)).unwrap().len() as u64 + 1;
    let limits = Limits {
        max_packets: 1000,
        max_bytes: 4 * line,
    };
    let mut o = Outbox::open_with(dir.path(), limits, Fsync::Never).unwrap();
    assert_eq!(o.push((10..20).map(entry)).unwrap(), 6);
    assert_eq!(ids(&o), names(16..20));
    assert!(o.pending_bytes() <= limits.max_bytes);
    drop(o);
    let o = Outbox::open_with(dir.path(), limits, Fsync::Never).unwrap();
    assert_eq!(ids(&o), names(16..20), "the drop is recorded on disk");
}

#[test]
fn torn_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 10).unwrap();
    o.push([entry(1)]).unwrap();
    drop(o);
    append_raw(dir.path(), b"{\"s\": \"tor");
    let o = Outbox::open(dir.path(), 10).unwrap();
    assert_eq!(o.len(), 1);
    assert_eq!(o.recovery.torn_bytes, 10);
}

#[test]
fn torn_tail_is_cut_before_appending() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 10).unwrap();
    o.push([entry(1)]).unwrap();
    drop(o);
    append_raw(dir.path(), b"{\"s\": \"tor");
    let mut o = Outbox::open(dir.path(), 10).unwrap();
    o.push([entry(2)]).unwrap();
    drop(o);
    let o = Outbox::open(dir.path(), 10).unwrap();
    assert_eq!(
        ids(&o),
        names(1..3),
        "the packet appended after a torn tail survives the next start"
    );
    assert_eq!(o.recovery.torn_bytes, 0);
}

#[test]
fn a_garbled_middle_line_is_skipped_not_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 10).unwrap();
    o.push([entry(1)]).unwrap();
    drop(o);
    let mut raw = b"not json\n".to_vec();
    raw.extend(serde_json::to_vec(&entry(2)).unwrap());
    raw.push(b'\n');
    append_raw(dir.path(), &raw);
    let mut o = Outbox::open(dir.path(), 10).unwrap();
    assert_eq!((o.recovery.corrupt_lines, o.recovery.torn_bytes), (1, 0));
    o.push([entry(3)]).unwrap();
    drop(o);
    let o = Outbox::open(dir.path(), 10).unwrap();
    assert_eq!(ids(&o), names(1..4));
}

#[test]
fn delivered_packets_are_not_loaded_again_and_the_log_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    o.push((0..10).map(entry)).unwrap();
    let before = log_len(dir.path());
    o.pop(4).unwrap();
    assert_eq!(log_len(dir.path()), before, "delivery writes the mark only");
    drop(o);
    let o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(ids(&o), names(4..10));
    assert_eq!(o.recovery.delivered, 4);
}

#[test]
fn emptied_log_is_truncated_to_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    let empty = log_len(dir.path());
    o.push((0..10).map(entry)).unwrap();
    o.pop(10).unwrap();
    assert_eq!(log_len(dir.path()), empty);
    o.push([entry(10)]).unwrap();
    drop(o);
    assert_eq!(ids(&Outbox::open(dir.path(), 100).unwrap()), names(10..11));
}

#[test]
fn a_large_delivered_prefix_is_compacted_into_the_next_generation() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_packets: 100_000,
        max_bytes: u64::MAX,
    };
    let mut o = Outbox::open_with(dir.path(), limits, Fsync::Never).unwrap();
    let generation = o.mark_on_disk().0;
    o.push((0..10_000).map(entry)).unwrap();
    let full = log_len(dir.path());
    o.pop(9_000).unwrap();
    assert!(log_len(dir.path()) < full / 5, "compacted");
    assert_eq!(o.mark_on_disk().0, generation + 1);
    drop(o);
    let o = Outbox::open_with(dir.path(), limits, Fsync::Never).unwrap();
    assert_eq!(ids(&o), names(9_000..10_000));
}

/// A crash after the compaction's rename, before its mark: the new log is all pending.
#[test]
fn a_log_one_generation_ahead_of_the_mark_is_all_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    o.push((0..6).map(entry)).unwrap();
    o.pop(2).unwrap();
    let (generation, offset) = o.mark_on_disk();
    assert!(offset > 0);
    drop(o);
    let mut text = header_line(generation + 1);
    for i in 2..6 {
        text.extend(serde_json::to_vec(&entry(i)).unwrap());
        text.push(b'\n');
    }
    std::fs::write(dir.path().join(LOG), text).unwrap();
    let o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(ids(&o), names(2..6));
    assert_eq!(
        o.mark_on_disk(),
        (generation + 1, header_line(generation + 1).len() as u64)
    );
}

/// A crash after the truncation of a delivered log, before its mark: nothing pending, and the
/// mark is corrected before anything is appended.
#[test]
fn a_mark_past_the_end_means_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    o.push((0..6).map(entry)).unwrap();
    o.pop(3).unwrap();
    let (_, offset) = o.mark_on_disk();
    drop(o);
    let header = header_line(1).len() as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(LOG))
        .unwrap()
        .set_len(header)
        .unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    assert!(o.is_empty());
    assert!(o.mark_on_disk().1 < offset);
    o.push([entry(7)]).unwrap();
    drop(o);
    assert_eq!(ids(&Outbox::open(dir.path(), 100).unwrap()), names(7..8));
}

#[test]
fn a_log_of_the_old_format_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    for i in 0..3 {
        text.extend(serde_json::to_vec(&entry(i)).unwrap());
        text.push(b'\n');
    }
    text.extend(b"{\"s\":\"to");
    std::fs::write(dir.path().join(LOG), text).unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(ids(&o), names(0..3));
    o.pop(1).unwrap();
    drop(o);
    assert_eq!(ids(&Outbox::open(dir.path(), 100).unwrap()), names(1..3));
}

#[test]
fn every_fsync_policy_keeps_the_packets() {
    for fsync in [
        Fsync::Always,
        Fsync::Interval(Duration::from_millis(1)),
        Fsync::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open_with(dir.path(), Limits::default(), fsync).unwrap();
        o.push((0..5).map(entry)).unwrap();
        match fsync {
            Fsync::Interval(d) => {
                let due = o.sync_due().expect("a sync is due after a write");
                assert!(due <= Instant::now() + d);
                o.sync_now();
                assert_eq!(o.sync_due(), None);
            }
            _ => assert_eq!(o.sync_due(), None, "{fsync:?}"),
        }
        o.pop(1).unwrap();
        drop(o);
        let o = Outbox::open_with(dir.path(), Limits::default(), fsync).unwrap();
        assert_eq!(ids(&o), names(1..5), "{fsync:?}");
    }
}
