//! Read requests from the HTTP server to the run loop, and how a read is answered between
//! two batches of a task (by the run loop, or by the HTTP worker itself through
//! [`Serving::try_read`](super::Serving::try_read)): a point lookup or a bounded scan of one
//! task's store stack (through its write-back cache).

use crate::store::{Entry, KeyValueStore, StoreError};

/// Largest number of entries one range request may ask of a task.
pub const MAX_RANGE_LIMIT: usize = 1000;

/// A request to the run loop.
#[derive(Debug)]
#[non_exhaustive]
pub enum Request {
    /// Read store `store` of the task of partition `task`.
    Read {
        /// The task's partition.
        task: u32,
        /// The store.
        store: String,
        /// What to read.
        op: ReadOp,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Result<ReadAnswer, QueryError>>,
    },
    /// Read the value under `key` in store `store` from this process's *standby* copy of
    /// the task of partition `task` (bounded staleness, `?max_lag=`): answered only if the
    /// standby's lag is at most `max_lag` records, else [`QueryError::NoStandby`].
    StandbyGet {
        /// The task's partition.
        task: u32,
        /// The store.
        store: String,
        /// The serialized key.
        key: Vec<u8>,
        /// The most changelog records the standby may be behind.
        max_lag: u64,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Result<StandbyAnswer, QueryError>>,
    },
    /// New input was appended: an idle loop looks for it at once.
    Wake,
}

/// A value read from a standby copy ([`Request::StandbyGet`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyAnswer {
    /// The value, if the key is there.
    pub value: Option<Vec<u8>>,
    /// The standby's lag in changelog records (`gregor_standby_lag_records`): the
    /// changelog's end at its last catch-up minus the changelog end it has applied.
    pub lag: u64,
    /// Time since that catch-up (changelog records the active task wrote meanwhile are not
    /// in `lag`).
    pub age: std::time::Duration,
}

impl StandbyAnswer {
    /// An answer: `value`, `lag` records behind, caught up `age` ago.
    pub fn new(value: Option<Vec<u8>>, lag: u64, age: std::time::Duration) -> Self {
        StandbyAnswer { value, lag, age }
    }
}

/// What to read, in serialized keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadOp {
    /// The value under a key.
    Get(Vec<u8>),
    /// Up to `limit` entries with `from <= key` (and `key < to` if given), in key order.
    Scan {
        /// First key (inclusive).
        from: Vec<u8>,
        /// End key (exclusive).
        to: Option<Vec<u8>>,
        /// Most entries returned (at most [`MAX_RANGE_LIMIT`] + 1).
        limit: usize,
    },
}

/// The answer to a [`ReadOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadAnswer {
    /// The value, if the key is there.
    Value(Option<Vec<u8>>),
    /// The entries found.
    Entries(Vec<Entry>),
}

/// A read could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The task is not open in this process, restoring, or replaying after a rollback.
    #[error("task of partition {task} {why}")]
    Unavailable {
        /// The task's partition.
        task: u32,
        /// Why.
        why: &'static str,
    },
    /// This process holds no standby of the task that may answer (none, not caught up yet,
    /// or more than `max_lag` records behind).
    #[error("task of partition {task}: {why}")]
    NoStandby {
        /// The task's partition.
        task: u32,
        /// Why.
        why: String,
    },
    /// The task has no such store.
    #[error("no store `{0}`")]
    NoStore(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `op` on `store` (between two batches of its task).
pub fn run(op: &ReadOp, store: &mut dyn KeyValueStore) -> Result<ReadAnswer, StoreError> {
    match op {
        ReadOp::Get(key) => store.get(key).map(ReadAnswer::Value),
        ReadOp::Scan { from, to, limit } => {
            let limit = (*limit).min(MAX_RANGE_LIMIT + 1);
            let entries = store
                .scan(from, to.as_deref())?
                .take(limit)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ReadAnswer::Entries(entries))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Limits;
    use crate::store::memory::MemoryEngine;

    #[test]
    fn scans_are_bounded_and_ordered() {
        let mut s = MemoryEngine::new("s", Limits::default());
        for i in 0..20u8 {
            s.put(&[b'k', i], &[i]).unwrap();
        }
        let op = ReadOp::Scan {
            from: vec![b'k', 5],
            to: Some(vec![b'k', 15]),
            limit: 3,
        };
        let ReadAnswer::Entries(e) = run(&op, &mut s).unwrap() else {
            panic!("entries expected");
        };
        assert_eq!(
            e.iter().map(|(k, _)| k[1]).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert_eq!(
            run(&ReadOp::Get(vec![b'k', 9]), &mut s).unwrap(),
            ReadAnswer::Value(Some(vec![9]))
        );
        assert_eq!(
            run(&ReadOp::Get(b"nope".to_vec()), &mut s).unwrap(),
            ReadAnswer::Value(None)
        );
    }
}
