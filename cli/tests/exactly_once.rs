//! Exactly-once end to end with real processes (issue 4): `gregor run count.toml --until-end`
//! is killed with SIGKILL at random moments (some during start-up and restore) and restarted
//! until a run finishes by itself; the merged store must hold exactly the counts computed
//! from the input. Then a downstream job reads the first job's output (`key -> new count`)
//! and is killed the same way: per key the committed output must be exactly `1, 2, …, n`
//! (no output of rolled-back processing survived) and the downstream counts must equal what
//! the committed output holds.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gregor::checkpoint::Checkpoint;
use gregor::log::{LogDir, LogError, PartitionReader, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::committed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_gregor");
const PARTITIONS: u32 = 4;
const KEYS: u64 = 20_000;
const MESSAGES: u64 = 400_000;
const MIN_KILLS: u32 = 20;

/// Appends `n` messages over `KEYS` skewed keys to topic `in` (created if missing), placed
/// with murmur2, and adds them to `expected`.
fn produce(state: &Path, n: u64, seed: u64, expected: &mut BTreeMap<String, u64>) {
    let logs = LogDir::open(state).unwrap();
    let topic = match logs.topic("in") {
        Ok(t) => t,
        Err(LogError::TopicNotFound { .. }) => logs
            .create_topic("in", PARTITIONS, TopicConfig::default())
            .unwrap(),
        Err(e) => panic!("{e}"),
    };
    let mut parts: Vec<_> = (0..PARTITIONS)
        .map(|p| topic.open_partition(p).unwrap().0)
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..n {
        // Half uniform (most keys appear), half Zipf-like (a few keys are hot).
        let k = if rng.gen_bool(0.5) {
            rng.gen_range(0..KEYS)
        } else {
            ((KEYS as f64).powf(rng.r#gen::<f64>()) as u64 - 1).min(KEYS - 1)
        };
        let key = format!("key-{k:05}");
        let p = partition_for_key(key.as_bytes(), PARTITIONS);
        parts[p as usize]
            .append(i as i64, key.as_bytes(), Some(format!("v{i}").as_bytes()))
            .unwrap();
        *expected.entry(key).or_insert(0) += 1;
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
}

fn job_file(dir: &Path, name: &str, input: &str, output: Option<&str>, store: &str) -> PathBuf {
    let outputs = output.map_or(String::new(), |o| format!("\"{o}\""));
    let text = format!(
        r#"
[job]
name = "{name}"
task = "count"
inputs = ["{input}"]
outputs = [{outputs}]
commit.ms = 50
# Small changelog segments compacted often, so kills also land around segment rolls and
# compactions (which run right after commits).
changelog.segment.bytes = 65536
changelog.cleanup.ms = 200

[stores.{store}]
engine = "rocksdb"
key.serde = "string"
value.serde = "u64"
changelog = "{store}-changelog"

[task]
store = "{store}"
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Messages of `topic` the job's checkpoints say are processed, over every task.
/// Input offsets of `topic` committed by every task of every job in the state directory.
fn committed_progress(state: &Path, topic: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(state.join("tasks")) else {
        return 0; // nothing has run yet
    };
    tasks
        .filter_map(|task| Checkpoint::read(&task.unwrap().path().join("checkpoint")).unwrap())
        .map(|cp| cp.inputs.get(topic).map_or(0, |m| m.values().sum::<u64>()))
        .sum()
}

fn run_once(state: &Path, job: &Path, log: &Path) -> std::process::Child {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .arg("run")
        .arg(job)
        .arg("--until-end")
        .env("GREGOR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[derive(Debug, Default)]
struct KillStats {
    kills: u32,
    /// Kills after which the checkpoints showed no progress (start-up, restore, or before
    /// the first commit of that run).
    kills_without_progress: u32,
    /// Kills aimed at start-up (within 60 ms of spawning).
    early_kills: u32,
    restarts: u32,
    /// Times the job finished before enough kills and more input was added.
    extended: u32,
    elapsed: Duration,
    /// Per kill: milliseconds after spawn, and committed input messages after it (in 1000s).
    trace: Vec<(u64, u64)>,
}

fn check_exit(status: ExitStatus, log: &Path) {
    assert!(
        status.success(),
        "gregor run failed ({status}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Runs `job` under random SIGKILLs (at least `MIN_KILLS`) and then to completion. `total`
/// returns how many input messages there are; `more_input` is called if the job finishes
/// before enough kills were made.
fn kill_loop(
    state: &Path,
    job: &Path,
    topic: &str,
    seed: u64,
    total: &dyn Fn() -> u64,
    more_input: &mut dyn FnMut(),
) -> KillStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let log = state.with_extension(format!("{topic}.stderr"));
    let started = Instant::now();
    let mut stats = KillStats::default();
    // Upper bound of a run's life before the kill, adapted so that the kills spread over the
    // whole input rather than all landing at the start or the job finishing early.
    let mut cap_ms = 400.0f64;
    loop {
        let before = committed_progress(state, topic);
        let mut child = run_once(state, job, &log);
        if stats.kills >= MIN_KILLS {
            check_exit(child.wait().unwrap(), &log);
            break;
        }
        let early = stats.kills % 4 == 3;
        let delay = Duration::from_micros(if early {
            rng.gen_range(0..60_000)
        } else {
            rng.gen_range(0..(cap_ms * 1000.0) as u64)
        });
        let spawned = Instant::now();
        let exited = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if spawned.elapsed() >= delay {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let exited = match exited {
            Some(status) => Some(status),
            None => {
                child.kill().unwrap();
                let status = child.wait().unwrap();
                // The run may have finished on its own in the instant between the last
                // `try_wait` and the signal: then it was not killed.
                status.success().then_some(status)
            }
        };
        match exited {
            Some(status) => {
                check_exit(status, &log);
                // Finished before enough kills: add input and go on.
                stats.extended += 1;
                cap_ms *= 0.6;
                more_input();
            }
            None => {
                stats.kills += 1;
                if early {
                    stats.early_kills += 1;
                }
                let after = committed_progress(state, topic);
                stats.trace.push((delay.as_millis() as u64, after / 1000));
                assert!(
                    after >= before,
                    "committed progress went backwards: {before} -> {after}"
                );
                if after == before {
                    stats.kills_without_progress += 1;
                }
                if !early {
                    // Aim for the remaining input to take the remaining kills.
                    let left = MIN_KILLS.saturating_sub(stats.kills) as f64 + 1.0;
                    let want = (total().saturating_sub(before)) as f64 / left;
                    let got = (after - before) as f64;
                    let factor = if got == 0.0 {
                        1.3
                    } else if got > want {
                        0.75
                    } else {
                        1.1
                    };
                    cap_ms = (cap_ms * factor).clamp(30.0, 5000.0);
                }
            }
        }
        stats.restarts += 1;
    }
    stats.elapsed = started.elapsed();
    stats
}

/// `gregor store dump --store S`: every task merged.
fn dump(state: &Path, store: &str) -> BTreeMap<String, u64> {
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(["store", "dump", "--store", store])
        .env("GREGOR_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (k, v) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("bad dump line {line:?}"));
        assert!(
            m.insert(k.to_string(), v.parse::<u64>().unwrap()).is_none(),
            "key {k} dumped twice"
        );
    }
    m
}

fn assert_same_counts(what: &str, got: &BTreeMap<String, u64>, want: &BTreeMap<String, u64>) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for k in want.keys().chain(got.keys()) {
        if got.get(k) != want.get(k) {
            diffs.push(format!("{k}: got {:?} want {:?}", got.get(k), want.get(k)));
        }
    }
    diffs.dedup();
    panic!(
        "{what}: {} keys differ (got {} keys / {} total, want {} keys / {} total); first: {:?}",
        diffs.len(),
        got.len(),
        got.values().sum::<u64>(),
        want.len(),
        want.values().sum::<u64>(),
        &diffs[..diffs.len().min(10)]
    );
}

/// The committed part of `topic` (below each partition's `COMMITTED` marker), per key the
/// values in offset order.
fn committed_output(state: &Path, topic: &str) -> (HashMap<String, Vec<u64>>, u64) {
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    let mut n = 0;
    for p in 0..PARTITIONS {
        let dir = state.join(format!("logs/{topic}/{p}"));
        let end = committed::read(&dir)
            .unwrap()
            .expect("a job output has a COMMITTED marker");
        let mut reader = PartitionReader::open(&dir, 0).unwrap();
        let mut next = 0;
        loop {
            let batch = reader.next_batch(4096).unwrap();
            if batch.is_empty() {
                break;
            }
            for r in batch {
                if r.offset >= end {
                    break;
                }
                assert_eq!(r.offset, next, "gap in {topic}/{p}");
                next += 1;
                let key = String::from_utf8(r.key.clone()).unwrap();
                assert_eq!(
                    partition_for_key(&r.key, PARTITIONS),
                    p,
                    "{key} in the wrong partition"
                );
                let v: u64 = std::str::from_utf8(r.value.as_deref().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                per_key.entry(key).or_default().push(v);
            }
        }
        assert_eq!(
            next, end,
            "{topic}/{p}: COMMITTED says {end} but the partition holds {next} records"
        );
        n += next;
    }
    (per_key, n)
}

fn run_to_end(state: &Path, job: &Path) -> String {
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .arg("run")
        .arg(job)
        .arg("--until-end")
        .env("GREGOR_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn count_and_downstream_survive_random_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let started = Instant::now();

    let mut expected = BTreeMap::new();
    produce(&state, MESSAGES, 1, &mut expected);
    let count_job = job_file(tmp.path(), "count", "in", Some("counts-out"), "counts");
    let input_total = std::cell::Cell::new(MESSAGES);
    let expected_cell = std::cell::RefCell::new(expected);
    let mut chunk = 1u64;

    // 1. The count job (input -> counts store + `key -> count` output) under SIGKILLs.
    let s1 = kill_loop(
        &state,
        &count_job,
        "in",
        11,
        &|| input_total.get(),
        &mut || {
            chunk += 1;
            produce(
                &state,
                MESSAGES / 10,
                chunk,
                &mut expected_cell.borrow_mut(),
            );
            input_total.set(input_total.get() + MESSAGES / 10);
        },
    );
    let expected = expected_cell.into_inner();
    eprintln!("count job: {s1:?}, input {} messages", input_total.get());
    assert!(s1.kills >= MIN_KILLS);
    assert_eq!(
        committed_progress(&state, "in"),
        input_total.get(),
        "the finished run did not commit every input"
    );
    let counts = dump(&state, "counts");
    assert_same_counts("count job store", &counts, &expected);

    // Its committed output: per key exactly 1, 2, …, final count.
    let (per_key, out_total) = committed_output(&state, "counts-out");
    assert_eq!(
        out_total,
        input_total.get(),
        "one output message per input message"
    );
    for (k, seq) in &per_key {
        let ok = seq.iter().enumerate().all(|(i, &v)| v == i as u64 + 1);
        assert!(
            ok,
            "output for {k} is not 1..n: {:?}",
            &seq[..seq.len().min(20)]
        );
        assert_eq!(
            Some(&(seq.len() as u64)),
            expected.get(k),
            "output for {k} does not end at its count"
        );
    }
    assert_eq!(per_key.len(), expected.len());

    // 2. A downstream job counting the first job's output, under SIGKILLs, in the same state
    //    directory. If it finishes early, more input goes through the first job.
    let recount_job = job_file(tmp.path(), "recount", "counts-out", None, "recounts");
    let out_total_cell = std::cell::Cell::new(out_total);
    let s2 = kill_loop(
        &state,
        &recount_job,
        "counts-out",
        22,
        &|| out_total_cell.get(),
        &mut || {
            chunk += 1;
            let mut more = BTreeMap::new();
            produce(&state, MESSAGES / 10, chunk, &mut more);
            run_to_end(&state, &count_job);
            out_total_cell.set(out_total_cell.get() + MESSAGES / 10);
        },
    );
    eprintln!(
        "downstream job: {s2:?}, input {} messages",
        out_total_cell.get()
    );
    assert!(s2.kills >= MIN_KILLS);
    let (per_key, out_total) = committed_output(&state, "counts-out");
    assert_eq!(out_total, out_total_cell.get());
    assert_eq!(
        committed_progress(&state, "counts-out"),
        out_total,
        "the finished downstream run did not commit every input"
    );
    let want: BTreeMap<String, u64> = per_key
        .iter()
        .map(|(k, seq)| {
            assert!(
                seq.iter().enumerate().all(|(i, &v)| v == i as u64 + 1),
                "output for {k} is not 1..n"
            );
            (k.clone(), seq.len() as u64)
        })
        .collect();
    assert_same_counts("downstream store", &dump(&state, "recounts"), &want);
    // The first job's state and checkpoint survived the downstream job in the same state
    // directory: it agrees with its output and has nothing left to do.
    assert_same_counts(
        "count job store after the downstream job",
        &dump(&state, "counts"),
        &want,
    );
    let again = run_to_end(&state, &count_job);
    assert!(
        again.contains("processed 0 messages"),
        "the count job re-ran input after the downstream job: {again}"
    );
    eprintln!(
        "exactly-once: {} + {} kills ({} + {} without progress, {} + {} aimed at start-up), {} + {} restarts, {:.1}s + {:.1}s, total {:.1}s",
        s1.kills,
        s2.kills,
        s1.kills_without_progress,
        s2.kills_without_progress,
        s1.early_kills,
        s2.early_kills,
        s1.restarts,
        s2.restarts,
        s1.elapsed.as_secs_f64(),
        s2.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
