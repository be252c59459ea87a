//! Where a score run starts, as a value: [`plan`] takes the progress recorded in ClickHouse,
//! the `start` setting, what the table allows and the state file's version, and says what to
//! do before streaming. Nothing here reads or writes; the run carries the plan out
//! ([`super::restore`]).
//!
//! - Progress recorded: the history is restored up to it (from the state file when it is not
//!   past it, else from the table), and the stream goes on after it.
//! - No progress, `earliest`: the log is read commit by commit from version 0 in bounded
//!   micro-batches while it still holds every commit and the table has Kafka positions; else the
//!   table is scored whole (a table without positions is ordered by event time over all of it,
//!   as train orders it, which micro-batches cannot do).
//! - No progress, `latest`: the history is restored up to the newest version, nothing before it
//!   is scored.
//! - No progress, a version N: restored up to N − 1, scored from N (N = 0: from the start).

use super::config::Start;

/// What the table allows, as read at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TableState {
    /// The newest version.
    pub newest: u64,
    /// The table has Kafka positions and its log still holds every commit from version 0.
    pub log_from_zero: bool,
}

/// What a run does before it streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartPlan {
    /// Stream every commit from version 0; until the commits through `until` are handed out,
    /// a log that turns out unreadable (a commit's file vacuumed) falls back to scoring the
    /// table whole.
    FromLog { until: u64 },
    /// Score every row of the table at `version` at once, then stream after it.
    WholeTable { version: u64 },
    /// Feed every row up to `through` into the history without scoring it (from the state file
    /// at `state_file` and the commits after it, or else from the table at `through`), then
    /// stream after it. `complete`: the progress already recorded.
    Restore { through: u64, state_file: Option<u64>, complete: Option<u64> },
    /// Stream from version 0, nothing to restore.
    Fresh,
}

/// The plan for a start (see the module's doc). `state_file`: the version of a state file that
/// fits this table and model, if any; one past the point restored to is not used.
pub(super) fn plan(
    progress: Option<u64>,
    start: Start,
    table: TableState,
    state_file: Option<u64>,
) -> StartPlan {
    let restore = |through: u64, complete| StartPlan::Restore {
        through,
        state_file: state_file.filter(|&v| v <= through),
        complete,
    };
    match (progress, start) {
        (Some(v), _) => restore(v.min(table.newest), Some(v)),
        (None, Start::Earliest) if table.log_from_zero => StartPlan::FromLog { until: table.newest },
        (None, Start::Earliest) => StartPlan::WholeTable { version: table.newest },
        (None, Start::Latest) => restore(table.newest, None),
        (None, Start::Version(0)) => StartPlan::Fresh,
        (None, Start::Version(n)) => restore((n - 1).min(table.newest), None),
    }
}

/// Whether a start restores the history (so a state file can serve it): every start but a
/// catch-up from the start (`earliest`, or version 0, without progress).
pub(super) fn restores(progress: Option<u64>, start: Start) -> bool {
    progress.is_some() || !matches!(start, Start::Earliest | Start::Version(0))
}

/// Whether the stream has handed out every commit through a version. Only a batch handed out
/// counts: the log is read ahead of the batches handed out, so the commit read last may not
/// have been fed into the history yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HandedOut {
    target: u64,
    reached: bool,
}

impl HandedOut {
    pub fn through(target: u64) -> HandedOut {
        HandedOut { target, reached: false }
    }

    /// Notes a batch handed out (the version it completes, if any); true once the target is.
    pub fn batch(&mut self, complete_through: Option<u64>) -> bool {
        self.reached |= complete_through.is_some_and(|v| v >= self.target);
        self.reached
    }

    pub fn reached(&self) -> bool {
        self.reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: TableState = TableState { newest: 10, log_from_zero: true };

    #[test]
    fn recorded_progress_restores_up_to_it_from_a_state_file_not_past_it() {
        let restore =
            |through, state_file| StartPlan::Restore { through, state_file, complete: Some(through) };
        for start in [Start::Earliest, Start::Latest, Start::Version(3)] {
            assert_eq!(plan(Some(7), start, TABLE, None), restore(7, None), "{start:?}: progress wins");
        }
        assert_eq!(plan(Some(7), Start::Earliest, TABLE, Some(5)), restore(7, Some(5)));
        assert_eq!(plan(Some(7), Start::Earliest, TABLE, Some(7)), restore(7, Some(7)));
        // A state file past the progress (ClickHouse restored from an older backup): the table.
        assert_eq!(plan(Some(7), Start::Earliest, TABLE, Some(8)), restore(7, None));
    }

    #[test]
    fn progress_past_the_newest_version_restores_the_whole_table() {
        assert_eq!(
            plan(Some(12), Start::Earliest, TABLE, None),
            StartPlan::Restore { through: 10, state_file: None, complete: Some(12) }
        );
    }

    #[test]
    fn earliest_reads_the_log_while_it_holds_every_commit_else_the_table_whole() {
        assert_eq!(plan(None, Start::Earliest, TABLE, Some(4)), StartPlan::FromLog { until: 10 });
        let cleaned = TableState { log_from_zero: false, ..TABLE };
        assert_eq!(plan(None, Start::Earliest, cleaned, None), StartPlan::WholeTable { version: 10 });
    }

    /// The ordering fix: a table without Kafka positions (`log_from_zero` is false for it) is
    /// scored whole, ordered by event time over all of it as train orders it, never commit by
    /// commit.
    #[test]
    fn a_table_without_kafka_positions_is_scored_whole() {
        let spark_table = TableState { newest: 3, log_from_zero: false };
        assert_eq!(plan(None, Start::Earliest, spark_table, None), StartPlan::WholeTable { version: 3 });
    }

    #[test]
    fn latest_and_a_version_restore_up_to_the_point_before_them() {
        let restore = |through, state_file| StartPlan::Restore { through, state_file, complete: None };
        assert_eq!(plan(None, Start::Latest, TABLE, None), restore(10, None));
        assert_eq!(plan(None, Start::Latest, TABLE, Some(9)), restore(10, Some(9)));
        assert_eq!(plan(None, Start::Version(5), TABLE, None), restore(4, None));
        assert_eq!(plan(None, Start::Version(5), TABLE, Some(6)), restore(4, None), "a file past it");
        assert_eq!(plan(None, Start::Version(50), TABLE, None), restore(10, None));
        assert_eq!(plan(None, Start::Version(0), TABLE, Some(3)), StartPlan::Fresh);
    }

    #[test]
    fn only_a_start_that_restores_reads_the_state_file() {
        for (progress, start, wanted) in [
            (Some(3), Start::Earliest, true),
            (None, Start::Earliest, false),
            (None, Start::Version(0), false),
            (None, Start::Version(4), true),
            (None, Start::Latest, true),
        ] {
            assert_eq!(restores(progress, start), wanted, "{progress:?} {start:?}");
            let planned = plan(progress, start, TABLE, Some(2));
            assert_eq!(matches!(planned, StartPlan::Restore { .. }), wanted, "{planned:?}");
        }
    }

    /// The lost-commit fix: a replay (or a catch-up) that stopped once the log had been read
    /// through the target lost the commit read ahead; only batches handed out count.
    #[test]
    fn only_batches_handed_out_reach_the_target() {
        let mut until = HandedOut::through(5);
        // The reader has read versions 0..=5 from the log, but the batch handed out completes 3.
        assert!(!until.batch(Some(3)));
        assert!(!until.batch(None), "a batch that completes no version");
        assert!(!until.reached());
        assert!(until.batch(Some(5)));
        assert!(until.batch(None), "once reached, it stays");
        assert!(HandedOut::through(5).batch(Some(6)), "a batch past the target");
    }
}
