//! Benchmark helper (bench/journal-floor.sh): SQLite alone writing mw's per-task journal
//! rows, with nothing else of mw running: one `INSERT` per task (as a sweep's chunk records
//! it) and one `UPDATE` per task (the row of a task done), each set in one transaction with
//! one prepared statement, the connection set up as the journal's (WAL, `synchronous =
//! FULL`). The `tasks` table's schema is read from a journal `mw run` made, so it is the
//! one mw writes. Prints the seconds of the whole, of the inserts and of the updates.
//!
//! Usage: `journal-floor JOURNAL N SCRATCH_DB`
use rusqlite::{params, Connection};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(journal), Some(n), Some(db)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: journal-floor JOURNAL N SCRATCH_DB");
    };
    let n: u32 = n.parse()?;
    let schema: String = Connection::open(&journal)?.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
        [],
        |r| r.get(0),
    )?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db}{suffix}"));
    }
    let t0 = Instant::now();
    let mut c = Connection::open(&db)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.execute_batch(&schema)?;
    let tx = c.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT OR IGNORE INTO tasks (idx, input, state, submitted) VALUES (?1, ?2, 'queued', ?3)",
        )?;
        for i in 0..n {
            insert.execute(params![i, format!("{{\"i\":{i}}}"), 1.0])?;
        }
    }
    tx.commit()?;
    let t1 = Instant::now();
    let tx = c.transaction()?;
    {
        let mut done = tx.prepare(
            "UPDATE tasks SET state = 'done', attempts = ?2, started = ?3, finished = ?4,
             wall = ?5, cpu = ?6, host = ?7, output = ?8, exit = 'exit status 0', error = NULL,
             output_files = '[]'
             WHERE idx = ?1 AND state <> 'done' AND state <> 'failed' AND state <> 'cancelled'",
        )?;
        for i in 0..n {
            done.execute(params![
                i,
                1,
                2.0,
                3.0,
                1.0,
                0.0,
                "h",
                format!("{{\"i\":{i}}}")
            ])?;
        }
    }
    tx.commit()?;
    let t2 = Instant::now();
    println!(
        "{:.4} {:.4} {:.4}",
        (t2 - t0).as_secs_f64(),
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64()
    );
    Ok(())
}
