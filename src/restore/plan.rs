//! The restore planner: a pure function from what is on disk and in the changelog to the
//! actions that make a store equal to its last checkpoint. No I/O here, so every
//! combination of inputs is tested (see the tests at the bottom).
//!
//! All offsets are *end* offsets (exclusive): "the changelog records with offset < N".
//!
//! - The checkpoint holds `C`, the changelog end at the last commit: the committed state is
//!   the changelog records `[start, C)`.
//! - Records at `C` and after were written by processing that was never committed; they are
//!   dropped (the changelog is truncated to `C`) so they can never be replayed later.
//! - The engine records `E`, the changelog end its contents reflect, atomically with its data.
//!   `E <= C`: replay `[E, C)` on top (a delta restore). `E > C`: the engine holds
//!   uncommitted writes, so it is wiped and rebuilt from `[start, C)` (a full restore).
//! - The `OFFSET` file holds the changelog end at the last commit that flushed the engine; an
//!   engine whose marker is behind it lost flushed data and is rebuilt too.

/// What the local store looks like before restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalStore {
    /// No store directory (first start, task moved here, or deleted by hand).
    Missing,
    /// It exists but cannot be used (fails to open, corrupt manifest or marker, engine
    /// without persistence such as memory).
    Unusable {
        /// Why.
        reason: String,
    },
    /// An engine that opened fine.
    Present {
        /// The changelog end recorded inside the engine (`None`: never written through the
        /// logged layer or restore).
        engine_end: Option<u64>,
        /// The changelog end in the store's `OFFSET` file (`None`: no commit yet).
        offset_file: Option<u64>,
        /// Whether the engine holds no entries.
        empty: bool,
    },
}

/// Everything the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInputs {
    /// The local store.
    pub local: LocalStore,
    /// The changelog end recorded for this store in the task's checkpoint; `None` if the task
    /// has no checkpoint (its directory was lost): then the whole changelog is trusted, as in
    /// Samza's non-transactional restore.
    pub checkpoint: Option<u64>,
    /// The changelog's first offset.
    pub changelog_start: u64,
    /// The changelog's end offset (next offset to be written).
    pub changelog_end: u64,
    /// Whether the backend can drop changelog records (the embedded log can, Kafka cannot).
    /// Records past the checkpoint are truncated where it can, and overwritten by
    /// [`Action::Trim`] where it cannot.
    pub truncatable: bool,
}

/// One step of a restore, run in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Drop changelog records at offsets `>= to` (uncommitted).
    TruncateChangelog {
        /// First offset dropped.
        to: u64,
        /// Number of offsets dropped (`changelog_end - to`).
        records: u64,
    },
    /// Remove every entry from the local engine (or recreate it).
    WipeLocal {
        /// Why the local store cannot be kept.
        reason: String,
    },
    /// Apply changelog records with offsets in `[from, to)` to the engine, then record `to`
    /// as the engine's changelog end (even when the range is empty).
    Replay {
        /// First offset replayed.
        from: u64,
        /// End (exclusive).
        to: u64,
    },
    /// Samza's TRIM, for changelogs that cannot be truncated: after the replay, append the
    /// restored value (or a tombstone) of every key that the uncommitted records in
    /// `[from, to)` touched, so that replaying the whole changelog later gives the
    /// checkpointed state again. The next commit seals them; a crash before it trims again.
    Trim {
        /// First uncommitted offset (the checkpoint).
        from: u64,
        /// The changelog's end.
        to: u64,
    },
}

/// How much work a plan does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreKind {
    /// The local store is already at the checkpoint.
    UpToDate,
    /// The local store is kept and only newer records are replayed.
    Delta,
    /// The local store is rebuilt from the start of the changelog.
    Full,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// The steps, in order.
    pub actions: Vec<Action>,
    /// Which kind of restore this is.
    pub kind: RestoreKind,
    /// The changelog end the store will be at (= the checkpoint when there is one).
    pub target: u64,
}

/// Inputs that no restore can reconcile: data the checkpoint relies on is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The checkpoint points past the changelog's end: committed records are missing.
    #[error(
        "the checkpoint says the changelog reached offset {checkpoint}, but it ends at {end}: committed changelog records are missing (was the changelog deleted or truncated, or a `gregor job reset` interrupted? run the reset again to start the task from scratch)"
    )]
    ChangelogBehindCheckpoint {
        /// Checkpointed end.
        checkpoint: u64,
        /// Actual end.
        end: u64,
    },
    /// The changelog starts after the checkpoint: committed records were deleted.
    #[error(
        "the changelog starts at offset {start}, after the checkpointed end {checkpoint}: committed records were deleted (retention on a changelog?)"
    )]
    ChangelogStartsAfterCheckpoint {
        /// Checkpointed end.
        checkpoint: u64,
        /// Changelog start.
        start: u64,
    },
}

/// Plans the restore of one store.
pub fn plan(inputs: &RestoreInputs) -> Result<RestorePlan, PlanError> {
    let RestoreInputs {
        local,
        checkpoint,
        changelog_start: start,
        changelog_end: end,
        truncatable,
    } = inputs;
    let (start, end) = (*start, *end);
    let target = match *checkpoint {
        Some(c) if c > end => {
            return Err(PlanError::ChangelogBehindCheckpoint { checkpoint: c, end });
        }
        Some(c) if c < start => {
            return Err(PlanError::ChangelogStartsAfterCheckpoint {
                checkpoint: c,
                start,
            });
        }
        Some(c) => c,
        None => end,
    };
    let mut actions = Vec::new();
    let mut trim = None;
    if end > target {
        if *truncatable {
            actions.push(Action::TruncateChangelog {
                to: target,
                records: end - target,
            });
        } else {
            trim = Some(Action::Trim {
                from: target,
                to: end,
            });
        }
    }
    let full = |mut actions: Vec<Action>, wipe: Option<String>| {
        if let Some(reason) = wipe {
            actions.push(Action::WipeLocal { reason });
        }
        actions.push(Action::Replay {
            from: start,
            to: target,
        });
        RestorePlan {
            actions,
            kind: RestoreKind::Full,
            target,
        }
    };
    let mut plan = match local {
        LocalStore::Missing => full(actions, None),
        LocalStore::Unusable { reason } => full(actions, Some(reason.clone())),
        LocalStore::Present {
            engine_end,
            offset_file,
            empty,
        } => match *engine_end {
            None if *empty => full(actions, None),
            None => full(
                actions,
                Some("the engine holds data but no changelog offset".into()),
            ),
            Some(e) if e > target => full(
                actions,
                Some(format!(
                    "the engine reflects the changelog up to {e}, past the checkpoint at {target}"
                )),
            ),
            Some(e) if offset_file.is_some_and(|o| o > e) => full(
                actions,
                Some(format!(
                    "the engine reflects the changelog up to {e}, behind its OFFSET file ({})",
                    offset_file.unwrap_or(0)
                )),
            ),
            Some(e) if e < start => full(
                actions,
                Some(format!(
                    "the engine reflects the changelog up to {e}, before its start at {start}"
                )),
            ),
            Some(e) => {
                let kind = if e == target {
                    RestoreKind::UpToDate
                } else {
                    RestoreKind::Delta
                };
                actions.push(Action::Replay {
                    from: e,
                    to: target,
                });
                RestorePlan {
                    actions,
                    kind,
                    target,
                }
            }
        },
    };
    plan.actions.extend(trim);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state after applying changelog records `[from, to)` of `log` on top of `state`.
    /// The model changelog has one record per offset: offset `i` writes key `i % 3` = `i`,
    /// except every 4th offset which deletes key `i % 3`.
    fn apply(mut state: [Option<u64>; 3], from: u64, to: u64) -> [Option<u64>; 3] {
        for i in from..to {
            state[(i % 3) as usize] = if i % 4 == 3 { None } else { Some(i) };
        }
        state
    }

    /// Every combination of small offsets and local states: running the plan on the model
    /// gives exactly the checkpointed state, or the planner refuses with an error exactly
    /// when the inputs are irreconcilable.
    #[test]
    fn every_combination_restores_exactly_the_checkpoint() {
        const N: u64 = 7;
        let mut checked = 0;
        for (start, truncatable) in (0..=2u64).flat_map(|s| [(s, true), (s, false)]) {
            for end in start..=N {
                for checkpoint in std::iter::once(None).chain((0..=N + 1).map(Some)) {
                    let mut locals = vec![
                        LocalStore::Missing,
                        LocalStore::Unusable {
                            reason: "corrupt".into(),
                        },
                    ];
                    for engine_end in std::iter::once(None).chain((0..=N + 1).map(Some)) {
                        for offset_file in std::iter::once(None).chain((0..=N + 1).map(Some)) {
                            for empty in [false, true] {
                                locals.push(LocalStore::Present {
                                    engine_end,
                                    offset_file,
                                    empty,
                                });
                            }
                        }
                    }
                    for local in locals {
                        let inputs = RestoreInputs {
                            local: local.clone(),
                            checkpoint,
                            changelog_start: start,
                            changelog_end: end,
                            truncatable,
                        };
                        let result = plan(&inputs);
                        checked += 1;
                        let c = checkpoint.unwrap_or(end);
                        if checkpoint.is_some_and(|c| c > end || c < start) {
                            assert!(result.is_err(), "{inputs:?} should be refused");
                            continue;
                        }
                        let p = result.unwrap_or_else(|e| panic!("{inputs:?}: {e}"));
                        assert_eq!(p.target, c);
                        // The local engine's contents before restore: a prefix of the log
                        // (records before `start` are long gone but were applied); an engine
                        // with no marker and data holds garbage.
                        let garbage = [Some(999), None, Some(998)];
                        let mut state = match &local {
                            LocalStore::Missing => [None; 3],
                            LocalStore::Unusable { .. } => garbage,
                            LocalStore::Present {
                                engine_end: None,
                                empty: true,
                                ..
                            } => [None; 3],
                            LocalStore::Present {
                                engine_end: None,
                                empty: false,
                                ..
                            } => garbage,
                            LocalStore::Present {
                                engine_end: Some(e),
                                ..
                            } => apply([None; 3], 0, *e),
                        };
                        // Records before `start` were compacted away but their effect is in the
                        // full state; model that by treating [0, start) as applied by a
                        // full restore too (compaction keeps the newest value per key).
                        let mut log_end = end;
                        let mut trimmed: Vec<(usize, Option<u64>)> = Vec::new();
                        for a in &p.actions {
                            match a {
                                Action::TruncateChangelog { to, records } => {
                                    assert_eq!(*records, log_end - to);
                                    log_end = *to;
                                }
                                Action::WipeLocal { .. } => state = [None; 3],
                                Action::Replay { from, to } => {
                                    assert!(
                                        *to <= log_end,
                                        "replays past the (truncated) end: {inputs:?} {p:?}"
                                    );
                                    assert!(
                                        *from >= start,
                                        "replays before the start: {inputs:?} {p:?}"
                                    );
                                    if *from == start {
                                        state = apply(state, 0, start);
                                    }
                                    state = apply(state, *from, *to);
                                }
                                Action::Trim { from, to } => {
                                    assert!(!truncatable, "{inputs:?} {p:?}");
                                    assert_eq!((*from, *to), (c, log_end), "{inputs:?}");
                                    for k in (*from..*to).map(|i| (i % 3) as usize) {
                                        trimmed.push((k, state[k]));
                                    }
                                }
                            }
                        }
                        if truncatable {
                            assert_eq!(
                                log_end, c,
                                "changelog must end at the checkpoint: {inputs:?} {p:?}"
                            );
                        } else {
                            // Sealed: replaying the whole changelog, trim records included,
                            // gives the checkpointed state too.
                            let mut replayed = apply([None; 3], 0, log_end);
                            for (k, v) in &trimmed {
                                replayed[*k] = *v;
                            }
                            assert_eq!(
                                replayed,
                                apply([None; 3], 0, c),
                                "trim does not seal {inputs:?} with {p:?}"
                            );
                        }
                        assert_eq!(
                            state,
                            apply([None; 3], 0, c),
                            "wrong state for {inputs:?} with {p:?}"
                        );
                        // Never wipe a store that is exactly at the checkpoint.
                        if let LocalStore::Present {
                            engine_end: Some(e),
                            offset_file,
                            ..
                        } = &local
                            && *e == c
                            && offset_file.is_none_or(|o| o <= *e)
                            && *e >= start
                        {
                            assert_eq!(p.kind, RestoreKind::UpToDate, "{inputs:?}");
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "only {checked} combinations checked");
    }

    #[test]
    fn uncommitted_records_are_truncated_before_replay() {
        let p = plan(&RestoreInputs {
            local: LocalStore::Present {
                engine_end: Some(5),
                offset_file: Some(5),
                empty: false,
            },
            checkpoint: Some(8),
            changelog_start: 0,
            changelog_end: 12,
            truncatable: true,
        })
        .unwrap();
        assert_eq!(
            p.actions,
            vec![
                Action::TruncateChangelog { to: 8, records: 4 },
                Action::Replay { from: 5, to: 8 }
            ]
        );
        assert_eq!(p.kind, RestoreKind::Delta);
    }

    #[test]
    fn uncommitted_records_are_trimmed_after_replay_without_truncation() {
        let p = plan(&RestoreInputs {
            local: LocalStore::Present {
                engine_end: Some(5),
                offset_file: Some(5),
                empty: false,
            },
            checkpoint: Some(8),
            changelog_start: 0,
            changelog_end: 12,
            truncatable: false,
        })
        .unwrap();
        assert_eq!(
            p.actions,
            vec![
                Action::Replay { from: 5, to: 8 },
                Action::Trim { from: 8, to: 12 }
            ]
        );
        assert_eq!(p.kind, RestoreKind::Delta);
    }

    #[test]
    fn engine_ahead_of_checkpoint_is_rebuilt() {
        let p = plan(&RestoreInputs {
            local: LocalStore::Present {
                engine_end: Some(10),
                offset_file: Some(10),
                empty: false,
            },
            checkpoint: Some(8),
            changelog_start: 0,
            changelog_end: 12,
            truncatable: true,
        })
        .unwrap();
        assert_eq!(p.kind, RestoreKind::Full);
        assert!(matches!(p.actions[1], Action::WipeLocal { .. }));
        assert_eq!(p.actions[2], Action::Replay { from: 0, to: 8 });
    }

    #[test]
    fn missing_committed_records_are_an_error() {
        let e = plan(&RestoreInputs {
            local: LocalStore::Missing,
            checkpoint: Some(9),
            changelog_start: 0,
            changelog_end: 4,
            truncatable: true,
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("offset 9") && e.to_string().contains("ends at 4"),
            "{e}"
        );
    }
}
