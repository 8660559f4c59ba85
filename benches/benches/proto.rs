//! The cost of the wire format: raft-proto's versioned frame (one version byte, then
//! postcard) of an [`Envelope`], encoded and decoded the way the QUIC transport does
//! for every message.
//!
//! - `proto/encode/append_64x128B`: one iteration is one [`Envelope::encode`] (into a
//!   new `Vec`, dropped at the end of the iteration) of an `AppendEntries` carrying 64
//!   command entries of 128 bytes each. Throughput is frame bytes per second.
//! - `proto/decode/append_64x128B`: one iteration is one [`Envelope::decode`] of that
//!   frame into a new `Envelope` (dropped at the end of the iteration). Throughput is
//!   frame bytes per second.
//! - `proto/encode/heartbeat`, `proto/decode/heartbeat`: the same for a heartbeat, an
//!   `AppendEntries` with no entries.

use criterion::{BenchmarkId, Criterion, Throughput};
use raft_proto::{
    AppendEntries, Bytes, Entry, EntryPayload, Envelope, LogId, LogIndex, Message, NodeId, Term,
};

/// Entries in the `append` message.
const ENTRIES: u64 = 64;
/// Bytes of each entry's command.
const PAYLOAD: usize = 128;

/// An `AppendEntries` from a leader of term 3 to a follower that has the log up to
/// index 100,000, carrying the next `entries` entries.
fn append_entries(entries: u64) -> Envelope {
    let term = Term(3);
    let prev = 100_000;
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    Envelope {
        from: NodeId(1),
        to: NodeId(2),
        message: Message::AppendEntries(AppendEntries {
            term,
            prev_log_id: LogId::new(term, LogIndex(prev)),
            entries: (prev + 1..=prev + entries)
                .map(|i| Entry {
                    log_id: LogId::new(term, LogIndex(i)),
                    payload: EntryPayload::Command(payload.clone()),
                })
                .collect(),
            leader_commit: LogIndex(prev),
            round: 4_242,
        }),
    }
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto");
    for (name, envelope) in [
        ("append_64x128B", append_entries(ENTRIES)),
        ("heartbeat", append_entries(0)),
    ] {
        let frame = envelope.encode().expect("encode");
        assert_eq!(
            Envelope::decode(&frame).expect("decode"),
            envelope,
            "the frame decodes to what was encoded"
        );
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &envelope, |b, e| {
            b.iter(|| e.encode().expect("encode"));
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &frame, |b, f| {
            b.iter(|| Envelope::decode(f).expect("decode"));
        });
    }
    group.finish();
}

/// The suite of this layer.
pub(crate) fn suite(c: &mut Criterion) {
    frames(c);
}
