//! The event log's stored form, without I/O. A batch's events of one job
//! are ONE `job_events` row (a *block*): their per-job numbers and farm
//! positions as bounds, the events themselves in one payload
//! (length-delimited `JobEvent`s in seq order). One row per job per batch
//! instead of one per event is what keeps the log's share of the batch
//! writes small (`batch_writer.rs`); every reader goes through here.
//!
//! Order on reading:
//! - a job's blocks do not overlap in seq: its events in seq order are its
//!   blocks by `first_seq`, each in payload order;
//! - a batch's blocks overlap in farm position (the farm positions of
//!   different jobs interleave within a batch), blocks of different batches
//!   do not (a batch's positions are all above every earlier batch's). So
//!   farm order is read a whole batch at a time (its blocks share
//!   `batch_first`, the lowest position in the batch), sorted.
//!
//! Readers page through either sequence by *groups* that do not overlap
//! and are keyed by their first position (a job's blocks by `first_seq`, the
//! farm's batches by `batch_first`): [`Window`] picks the groups to read
//! after a position, and says nothing of SQL.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_proto::v1 as pb;
use prost::Message;
use uuid::Uuid;

/// A stored block that does not decode: the bytes are damaged, or were not
/// written by [`pack`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored block of job events is corrupt: {0}")]
pub struct CorruptBlock(String);

/// One `job_events` row: one job's events of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub job_id: Uuid,
    pub first_seq: i64,
    pub last_seq: i64,
    /// The lowest farm position of the batch that wrote the block, shared
    /// by all its blocks: the key farm-wide reads group them by.
    pub batch_first: i64,
    pub first_farm_seq: i64,
    pub last_farm_seq: i64,
    pub payload: Vec<u8>,
}

/// A batch's events (in the order the core numbered them) as one block per
/// job, in the order each job first appears. Each block's events are in
/// seq order, which is their farm order too.
pub fn pack(events: &[(Uuid, Arc<pb::JobEvent>)]) -> Vec<Block> {
    let Some(batch_first) = events.iter().map(|(_, e)| e.farm_seq).min() else {
        return Vec::new();
    };
    let mut by_job: Vec<(Uuid, Vec<&pb::JobEvent>)> = Vec::new();
    let mut position: HashMap<Uuid, usize> = HashMap::new();
    for (job_id, event) in events {
        let i = *position.entry(*job_id).or_insert_with(|| {
            by_job.push((*job_id, Vec::new()));
            by_job.len() - 1
        });
        by_job[i].1.push(event);
    }
    by_job
        .into_iter()
        .map(|(job_id, mut events)| {
            // The core numbers a job's events in order; sorting (a no-op on
            // sorted input) keeps the payload's promise whatever the caller.
            events.sort_by_key(|e| e.seq);
            let mut payload = Vec::with_capacity(events.iter().map(|e| e.encoded_len() + 2).sum());
            for event in &events {
                payload.extend_from_slice(&event.encode_length_delimited_to_vec());
            }
            let seqs = events.iter().map(|e| e.seq as i64);
            let farm_seqs = events.iter().map(|e| e.farm_seq as i64);
            Block {
                job_id,
                first_seq: seqs.clone().min().unwrap_or_default(),
                last_seq: seqs.max().unwrap_or_default(),
                batch_first: batch_first as i64,
                first_farm_seq: farm_seqs.clone().min().unwrap_or_default(),
                last_farm_seq: farm_seqs.max().unwrap_or_default(),
                payload,
            }
        })
        .collect()
}

/// A block's events, in seq order.
pub fn unpack(payload: &[u8]) -> Result<Vec<pb::JobEvent>, CorruptBlock> {
    if payload.is_empty() {
        return Err(CorruptBlock("no events".into()));
    }
    let mut rest = payload;
    let mut events = Vec::new();
    while !rest.is_empty() {
        let at = payload.len() - rest.len();
        let event = pb::JobEvent::decode_length_delimited(&mut rest).map_err(|err| {
            CorruptBlock(format!("event {} at byte {at}: {err}", events.len() + 1))
        })?;
        events.push(event);
    }
    Ok(events)
}

/// The events of a job's blocks (any order) after its event `after`, in seq
/// order.
pub fn job_order_after(blocks: Vec<Vec<pb::JobEvent>>, after: u64) -> Vec<pb::JobEvent> {
    let mut events: Vec<pb::JobEvent> = blocks
        .into_iter()
        .flatten()
        .filter(|e| e.seq > after)
        .collect();
    events.sort_by_key(|e| e.seq);
    events
}

/// The events of whole batches' blocks, each with what its reader keeps of
/// the block (`T`), after farm position `after`, in farm order. Only whole
/// batches may be given: a block left out could hold a position between
/// two that are returned.
pub fn farm_order_after<T: Clone>(
    blocks: Vec<(T, Vec<pb::JobEvent>)>,
    after: u64,
) -> Vec<(T, pb::JobEvent)> {
    let mut events: Vec<(T, pb::JobEvent)> = blocks
        .into_iter()
        .flat_map(|(tag, events)| events.into_iter().map(move |e| (tag.clone(), e)))
        .filter(|(_, e)| e.farm_seq > after)
        .collect();
    events.sort_by_key(|(_, e)| e.farm_seq);
    events
}

/// Which groups to read after position `after`, by key (both ends
/// included): the group that may hold `after` (its events after it are due
/// first), then every group that starts within `span` positions of the
/// first group wholly after `after`. Positions are unique, so that is at
/// most `span` events plus the two end groups' overhangs; a group, however
/// large, is never split. Starting from the first group after `after`
/// rather than from `after` itself steps over holes in the positions (the
/// events of a deleted job), so a window is empty only when nothing follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

impl Window {
    /// `containing`: the greatest key at or below `after`; `next`: the least
    /// above it. `None` when neither exists: nothing was written after.
    pub fn after(containing: Option<i64>, next: Option<i64>, span: i64) -> Option<Self> {
        let from = containing.or(next)?;
        let to = next.map_or(from, |next| next.saturating_add(span.max(1) - 1));
        Some(Self { from, to })
    }
}

/// One page of the farm's sequence, from what a reader fetched in ONE
/// snapshot: the events (in farm order) of the blocks in a [`Window`] of
/// batches; where the first batch past the window starts (`None`: the
/// window reached the end); the farm events after the position and before
/// that batch, in order, at most `farm_limit`. The page is every event after
/// `after` up to the first position it may not have read, so the next page
/// goes on from its last event; `more` tells whether one may follow.
pub fn farm_page(
    job_events: Vec<pb::JobEvent>,
    beyond: Option<i64>,
    farm_events: Vec<pb::JobEvent>,
    farm_limit: usize,
) -> (Vec<pb::JobEvent>, bool) {
    let farm_full = !farm_events.is_empty() && farm_events.len() >= farm_limit;
    // Beyond the last farm event of a full read there may be farm events
    // not read; beyond the window's end, job events not read.
    let upto = match (farm_full, farm_events.last(), beyond) {
        (true, Some(last), _) => last.farm_seq,
        (_, _, Some(beyond)) => (beyond as u64).saturating_sub(1),
        _ => u64::MAX,
    };
    let mut page: Vec<pb::JobEvent> = job_events
        .into_iter()
        .filter(|e| e.farm_seq <= upto)
        .chain(farm_events)
        .collect();
    page.sort_by_key(|e| e.farm_seq);
    (page, beyond.is_some() || farm_full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::v1::job_event::Event;

    fn job(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn event(job_id: Uuid, seq: u64, farm_seq: u64) -> pb::JobEvent {
        pb::JobEvent {
            job_id: job_id.to_string(),
            seq,
            farm_seq,
            event: Some(Event::TaskProgress(pb::TaskProgress {
                task_id: format!("task {seq}"),
                ..Default::default()
            })),
            at: None,
        }
    }

    fn farm_event(farm_seq: u64) -> pb::JobEvent {
        pb::JobEvent {
            farm_seq,
            event: Some(Event::WorkerChanged(pb::WorkerChanged::default())),
            ..Default::default()
        }
    }

    /// A log as the core numbers it: batches of (job, or None for a farm
    /// event), each event the next farm position, each job's the next seq.
    struct Log {
        blocks: Vec<Block>,
        farm: Vec<pb::JobEvent>,
        all: Vec<pb::JobEvent>,
    }

    fn log(batches: &[&[Option<u128>]]) -> Log {
        let mut seqs: HashMap<Uuid, u64> = HashMap::new();
        let mut farm_seq = 0;
        let mut log = Log {
            blocks: Vec::new(),
            farm: Vec::new(),
            all: Vec::new(),
        };
        for batch in batches {
            let mut events = Vec::new();
            for who in *batch {
                farm_seq += 1;
                match who {
                    Some(n) => {
                        let seq = seqs.entry(job(*n)).or_default();
                        *seq += 1;
                        let e = event(job(*n), *seq, farm_seq);
                        log.all.push(e.clone());
                        events.push((job(*n), Arc::new(e)));
                    }
                    None => {
                        log.farm.push(farm_event(farm_seq));
                        log.all.push(farm_event(farm_seq));
                    }
                }
            }
            log.blocks.extend(pack(&events));
        }
        log
    }

    /// A farm page as `event_replay.rs` reads it, against blocks in memory:
    /// the same selections its SQL makes.
    fn read_farm_page(log: &Log, after: u64, span: i64) -> (Vec<pb::JobEvent>, bool) {
        let keys = log.blocks.iter().map(|b| b.batch_first);
        let containing = keys.clone().filter(|k| *k <= after as i64).max();
        let next = keys.clone().filter(|k| *k > after as i64).min();
        let (job_events, beyond) = match Window::after(containing, next, span) {
            Some(window) => {
                let rows: Vec<((), Vec<pb::JobEvent>)> = log
                    .blocks
                    .iter()
                    .filter(|b| (window.from..=window.to).contains(&b.batch_first))
                    .map(|b| ((), unpack(&b.payload).expect("decodes")))
                    .collect();
                let events = farm_order_after(rows, after).into_iter().map(|(_, e)| e);
                (events.collect(), keys.filter(|k| *k > window.to).min())
            }
            None => (Vec::new(), None),
        };
        let farm: Vec<pb::JobEvent> = log
            .farm
            .iter()
            .filter(|e| e.farm_seq > after && beyond.is_none_or(|b| (e.farm_seq as i64) < b))
            .take(span as usize)
            .cloned()
            .collect();
        farm_page(job_events, beyond, farm, span as usize)
    }

    fn read_farm_from(log: &Log, mut after: u64, span: i64) -> Vec<pb::JobEvent> {
        let mut read = Vec::new();
        for _ in 0..1000 {
            let (page, more) = read_farm_page(log, after, span);
            if let Some(last) = page.last() {
                after = last.farm_seq;
            }
            read.extend(page);
            if !more {
                return read;
            }
        }
        panic!("paging did not end");
    }

    #[test]
    fn a_batch_packs_into_one_block_per_job_and_unpacks_to_the_same_events() {
        let log = log(&[&[Some(1), Some(2), Some(1), None, Some(1), Some(2)]]);
        assert_eq!(log.blocks.len(), 2, "one block per job");
        let first = &log.blocks[0];
        assert_eq!(first.job_id, job(1));
        assert_eq!((first.first_seq, first.last_seq), (1, 3));
        assert_eq!((first.first_farm_seq, first.last_farm_seq), (1, 5));
        assert_eq!(first.batch_first, 1);
        let second = &log.blocks[1];
        assert_eq!((second.first_seq, second.last_seq), (1, 2));
        assert_eq!((second.first_farm_seq, second.last_farm_seq), (2, 6));
        assert_eq!(second.batch_first, 1, "the batch's lowest, not the job's");
        let of = |n| -> Vec<pb::JobEvent> {
            log.all
                .iter()
                .filter(|e| e.job_id == job(n).to_string())
                .cloned()
                .collect()
        };
        assert_eq!(unpack(&first.payload), Ok(of(1)));
        assert_eq!(unpack(&second.payload), Ok(of(2)));
        assert!(pack(&[]).is_empty());
    }

    #[test]
    fn a_jobs_events_come_back_in_seq_order_after_a_position() {
        let log = log(&[
            &[Some(1), Some(2), Some(1)],
            &[Some(1)],
            &[Some(2), Some(1)],
        ]);
        let blocks: Vec<Vec<pb::JobEvent>> = log
            .blocks
            .iter()
            .filter(|b| b.job_id == job(1))
            .rev()
            .map(|b| unpack(&b.payload).expect("decodes"))
            .collect();
        let seqs = |after| -> Vec<u64> {
            job_order_after(blocks.clone(), after)
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(0), [1, 2, 3, 4]);
        assert_eq!(seqs(1), [2, 3, 4], "from the middle of a block");
        assert_eq!(seqs(4), Vec::<u64>::new());
    }

    #[test]
    fn a_batchs_overlapping_blocks_merge_into_farm_order() {
        let log = log(&[&[
            Some(1),
            Some(2),
            Some(3),
            Some(2),
            Some(1),
            Some(3),
            Some(3),
        ]]);
        assert_eq!(log.blocks.len(), 3);
        let rows: Vec<(Uuid, Vec<pb::JobEvent>)> = log
            .blocks
            .iter()
            .rev()
            .map(|b| (b.job_id, unpack(&b.payload).expect("decodes")))
            .collect();
        let merged = farm_order_after(rows, 0);
        let positions: Vec<u64> = merged.iter().map(|(_, e)| e.farm_seq).collect();
        assert_eq!(positions, [1, 2, 3, 4, 5, 6, 7]);
        assert!(
            merged.iter().all(|(id, e)| e.job_id == id.to_string()),
            "each event keeps its block's tag"
        );
    }

    #[test]
    fn a_farm_read_resumes_in_the_middle_of_a_batch() {
        let log = log(&[
            &[Some(1), Some(2), Some(1), Some(2)],
            &[Some(2), None, Some(1), Some(2)],
        ]);
        // Position 6 is the second batch's farm event; 7 and 8 are blocks
        // of the batch starting at 5, which overlap each other.
        let (page, more) = read_farm_page(&log, 6, 100);
        assert_eq!(page.iter().map(|e| e.farm_seq).collect::<Vec<_>>(), [7, 8]);
        assert!(!more);
        let (page, _) = read_farm_page(&log, 2, 100);
        assert_eq!(
            page.iter().map(|e| e.farm_seq).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn farm_pages_end_at_a_batch_boundary_and_never_split_a_batch() {
        // Batches of 4 job events; a span of 2 still reads a batch whole.
        let log = log(&[
            &[Some(1), Some(2), Some(1), Some(2)],
            &[Some(1), Some(2), Some(1), Some(2)],
            &[Some(3), Some(3), Some(3), Some(3)],
        ]);
        let (page, more) = read_farm_page(&log, 0, 2);
        assert_eq!(
            page.iter().map(|e| e.farm_seq).collect::<Vec<_>>(),
            [1, 2, 3, 4],
            "the first batch, whole"
        );
        assert!(more);
        let (page, more) = read_farm_page(&log, 4, 6);
        assert_eq!(page.len(), 8, "two whole batches");
        assert!(!more);
        let (page, _) = read_farm_page(&log, 3, 2);
        assert_eq!(
            page.iter().map(|e| e.farm_seq).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8],
            "the rest of the batch holding the position, then the next whole"
        );
    }

    #[test]
    fn farm_paging_from_any_position_reads_every_later_event_once_in_order() {
        let log = log(&[
            &[Some(1), None, Some(2), Some(1)],
            &[None, None, None],
            &[Some(3)],
            &[Some(2), Some(3), None, Some(2), Some(1), Some(1), Some(3)],
            &[None],
            &[
                Some(1),
                Some(1),
                Some(1),
                Some(1),
                Some(1),
                Some(1),
                Some(1),
            ],
        ]);
        let end = log.all.len() as u64;
        for span in [1, 2, 3, 500] {
            for after in 0..=end + 1 {
                let expected: Vec<u64> = (after + 1..=end).collect();
                let read: Vec<u64> = read_farm_from(&log, after, span)
                    .iter()
                    .map(|e| e.farm_seq)
                    .collect();
                assert_eq!(read, expected, "after {after}, span {span}");
            }
        }
    }

    #[test]
    fn holes_in_the_positions_do_not_end_paging_early() {
        let mut log = log(&[
            &[Some(1), Some(2)],
            &[Some(2), Some(2)],
            &[Some(3), Some(1)],
        ]);
        // Job 2 deleted (its blocks go with it): positions 2, 3, 4 are gone.
        log.blocks.retain(|b| b.job_id != job(2));
        let read: Vec<u64> = read_farm_from(&log, 0, 1)
            .iter()
            .map(|e| e.farm_seq)
            .collect();
        assert_eq!(read, [1, 5, 6]);
    }

    #[test]
    fn a_full_page_of_farm_events_ends_the_page_at_its_last() {
        let log = log(&[&[None, Some(1), None, None, Some(1)]]);
        let (page, more) = read_farm_page(&log, 0, 2);
        assert_eq!(
            page.iter().map(|e| e.farm_seq).collect::<Vec<_>>(),
            [1, 2, 3],
            "job events past the last farm event read wait for the next page"
        );
        assert!(more);
    }

    #[test]
    fn a_window_starts_at_the_group_holding_the_position() {
        assert_eq!(Window::after(None, None, 10), None);
        assert_eq!(
            Window::after(Some(5), None, 10),
            Some(Window { from: 5, to: 5 })
        );
        assert_eq!(
            Window::after(None, Some(7), 10),
            Some(Window { from: 7, to: 16 })
        );
        assert_eq!(
            Window::after(Some(5), Some(100), 10),
            Some(Window { from: 5, to: 109 }),
            "past a hole"
        );
    }

    #[test]
    fn a_corrupt_block_is_an_error() {
        let good = pack(&[(job(1), Arc::new(event(job(1), 1, 1)))])
            .remove(0)
            .payload;
        assert!(unpack(&[]).is_err(), "empty");
        assert!(unpack(&good[..good.len() - 1]).is_err(), "cut short");
        let mut longer = good.clone();
        longer.push(0x7f);
        assert!(unpack(&longer).is_err(), "a length past the end");
        assert!(unpack(&[0xff; 12]).is_err(), "no valid length");
        let mut damaged = good;
        // The first field's key, now of wire type 7, which does not exist.
        damaged[1] = 0x0f;
        assert!(unpack(&damaged).is_err(), "a damaged field");
    }
}
