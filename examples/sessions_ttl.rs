//! Sessions that expire: each login (topic `logins`, key = user, value = role) opens a
//! session in store `sessions`, which has `ttl.ms` (30 minutes); an admin's session gets its
//! own, shorter TTL (5 minutes, `put_with_ttl`). The job runs three times on a clock the
//! example sets (its store config's clock): at the logins, 10 minutes later, 40 minutes
//! later. An expired session is invisible at once; each run's commits remove the expired
//! entries with a tombstone through the changelog, so they are gone from disk too.
//!
//! ```sh
//! cargo run --release --example sessions_ttl -- /tmp/sessions-state
//! ```

use std::time::Duration;

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::{
    Envelope, JobConfig, RunOptions, StreamTask, TaskContext, TaskError, TaskFactory, run_job,
    task_name,
};
use gregor::statedir::StateDir;
use gregor::store::ttl::{ManualClock, visible_iter};

/// Opens a session per login; admins' sessions last 5 minutes.
struct Sessions;

impl StreamTask for Sessions {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let user = String::from_utf8_lossy(msg.key).into_owned();
        let role = String::from_utf8_lossy(msg.value.unwrap_or_default()).into_owned();
        let mut sessions = ctx.store::<String, String>("sessions")?;
        if role == "admin" {
            sessions.put_with_ttl(&user, &role, Duration::from_secs(5 * 60))?;
        } else {
            sessions.put(&user, &role)?; // the store's ttl.ms: 30 minutes
        }
        Ok(())
    }
}

const JOB: &str = r#"
    [job]
    name = "sessions"
    task = "sessions-example"
    inputs = ["logins"]

    [stores.sessions]
    key.serde = "string"
    value.serde = "string"
    changelog = "sessions-changelog"
    ttl.ms = 1800000               # 30 minutes after each write
"#;

const PARTITIONS: u32 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sessions-state".into());
    let state = StateDir::open(dir.as_ref())?;
    let logins = LogDir::open(state.root())?.topic_or_create(
        "logins",
        PARTITIONS,
        TopicConfig::default(),
    )?;
    for (user, role) in [("ann", "user"), ("bob", "user"), ("cho", "admin")] {
        let (mut p, _) = logins.open_partition(partition_for_key(user.as_bytes(), PARTITIONS))?;
        p.append(0, user.as_bytes(), Some(role.as_bytes()))?;
        p.sync()?;
    }

    let mut job = JobConfig::from_toml_str("<sessions example>", JOB)?;
    // A clock this example moves (the system clock unless a store config says otherwise).
    let clock = ManualClock::new(1_700_000_000_000);
    for store in job.stores.values_mut() {
        store.clock = clock.clock();
    }
    let factory: TaskFactory = Box::new(|_task| Box::new(Sessions));
    for (label, minutes) in [("at login", 0), ("after 10 min", 10), ("after 40 min", 40)] {
        clock.set(1_700_000_000_000 + minutes * 60_000);
        let options = RunOptions {
            until_end: true,
            ..RunOptions::new()
        };
        run_job(&state, &job, &factory, options)?;
        // What the tasks' stores hold on disk, and what a reader sees of it.
        let (mut on_disk, mut live) = (0, Vec::new());
        for p in 0..PARTITIONS {
            let task = task_name("sessions", p);
            if !state.store_dir(&task, "sessions").exists() {
                continue;
            }
            let mut o = gregor::task_storage::open_read_only(state.root(), &task, "sessions")?;
            on_disk += o.engine.all()?.count();
            for e in visible_iter("sessions", o.engine.all()?, clock.now_ms()) {
                live.push(String::from_utf8(e?.0)?);
            }
        }
        live.sort();
        if live.is_empty() {
            println!("{label}: no session ({on_disk} entries on disk)");
        } else {
            println!("{label}: {} ({on_disk} entries on disk)", live.join(" "));
        }
    }
    Ok(())
}
