//! SQL of the hub link: the usage report over a period, and the agent's
//! running time in hourly buckets (`agent_uptime_hours`).

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreResult;

const HOUR_MS: i64 = 3_600_000;

/// Totals over a period `[from, to)`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UsageSummary {
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tool_calls: i64,
    /// Ledger entries, one per finished run.
    pub runs: i64,
    /// Running time of the agent, from hourly buckets: a bucket counts
    /// whole when its hour overlaps the period (hour granularity).
    pub agent_uptime_ms: i64,
    /// Entries of the period the hub has not acknowledged yet.
    pub unreported: i64,
}

/// Sum the usage ledger and the agent's running time over `[from_ms, to_ms)`.
pub fn usage_summary(conn: &Connection, from_ms: i64, to_ms: i64) -> StoreResult<UsageSummary> {
    let mut s = conn.query_row(
        "SELECT coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0),
                coalesce(sum(tool_calls), 0), count(*), coalesce(sum(reported = 0), 0)
         FROM usage_ledger WHERE created_at >= ?1 AND created_at < ?2",
        params![from_ms, to_ms],
        |r| {
            Ok(UsageSummary {
                tokens_in: r.get(0)?,
                tokens_out: r.get(1)?,
                tool_calls: r.get(2)?,
                runs: r.get(3)?,
                agent_uptime_ms: 0,
                unreported: r.get(4)?,
            })
        },
    )?;
    s.agent_uptime_ms = conn.query_row(
        "SELECT coalesce(sum(running_ms), 0) FROM agent_uptime_hours
         WHERE hour_start >= ?1 AND hour_start < ?2",
        params![floor_hour(from_ms), to_ms],
        |r| r.get(0),
    )?;
    Ok(s)
}

fn floor_hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Add the running interval `[from_ms, to_ms)` to its hourly buckets, in
/// one transaction. A bucket never exceeds an hour (a clock step cannot
/// make an hour last longer).
pub fn add_agent_running(conn: &mut Connection, from_ms: i64, to_ms: i64) -> StoreResult<()> {
    if to_ms <= from_ms {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO agent_uptime_hours (hour_start, running_ms) VALUES (?1, min(?2, 3600000))
             ON CONFLICT (hour_start) DO UPDATE
             SET running_ms = min(3600000, running_ms + excluded.running_ms)",
        )?;
        let mut start = from_ms;
        while start < to_ms {
            let hour = floor_hour(start);
            let end = to_ms.min(hour + HOUR_MS);
            stmt.execute(params![hour, end - start])?;
            start = end;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Drop buckets older than `before_ms`; returns how many.
pub fn prune_agent_uptime(conn: &Connection, before_ms: i64) -> StoreResult<usize> {
    Ok(conn.execute(
        "DELETE FROM agent_uptime_hours WHERE hour_start < ?1",
        [floor_hour(before_ms)],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrations;
    use crate::store::usage::{self, NewUsage};

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().expect("open");
        migrations::apply(&mut c).expect("migrate");
        c
    }

    #[test]
    fn running_time_splits_across_hours_and_caps_each_bucket() {
        let mut c = db();
        let h = 1_000 * HOUR_MS;
        // 10:30 to 12:15 -> 30 min, 60 min, 15 min.
        add_agent_running(&mut c, h + HOUR_MS / 2, h + 2 * HOUR_MS + HOUR_MS / 4).expect("add");
        let total = |c: &Connection, from, to| usage_summary(c, from, to).expect("sum");
        assert_eq!(
            total(&c, h, h + 3 * HOUR_MS).agent_uptime_ms,
            HOUR_MS / 2 + HOUR_MS + HOUR_MS / 4
        );
        assert_eq!(
            total(&c, h + HOUR_MS, h + 2 * HOUR_MS).agent_uptime_ms,
            HOUR_MS
        );
        // Overlapping additions never make an hour longer than an hour.
        add_agent_running(&mut c, h + HOUR_MS, h + 2 * HOUR_MS).expect("add");
        assert_eq!(
            total(&c, h + HOUR_MS, h + 2 * HOUR_MS).agent_uptime_ms,
            HOUR_MS
        );
        add_agent_running(&mut c, h, h).expect("empty is fine");
        assert_eq!(prune_agent_uptime(&c, h + 2 * HOUR_MS).expect("prune"), 2);
    }

    #[test]
    fn usage_summary_sums_the_period_only() {
        let mut c = db();
        for (tin, tout, tools) in [(10, 20, 1), (5, 7, 0), (1, 1, 3)] {
            usage::record(
                &c,
                &NewUsage {
                    run_id: Some(format!("run-{tin}")),
                    tokens_in: tin,
                    tokens_out: tout,
                    tool_calls: tools,
                    ..Default::default()
                },
            )
            .expect("record");
        }
        c.execute("UPDATE usage_ledger SET created_at = 0 WHERE seq = 3", [])
            .expect("age one");
        usage::acknowledge(&mut c, 1).expect("ack");
        let now = crate::store::now_ms();
        let s = usage_summary(&c, 1, now + 1).expect("sum");
        assert_eq!(
            s,
            UsageSummary {
                tokens_in: 15,
                tokens_out: 27,
                tool_calls: 1,
                runs: 2,
                agent_uptime_ms: 0,
                unreported: 1,
            }
        );
        assert_eq!(usage_summary(&c, now + 1, now + 2).expect("sum").runs, 0);
    }
}
