//! Bounded-staleness reads from standby replicas (issue 9), with real servers: Apache Kafka
//! 0.9.0.1 and its ZooKeeper 3.4.6, two `gregor run` processes of the count job with
//! `standby.replicas = 1`, so each process runs half the tasks and holds a standby of the
//! other half.
//!
//! A GET of a key whose task runs in the other process is a 307 there without `max_lag`;
//! with `?max_lag=N` the standby answers itself (200, `Gregor-Standby-Lag` at most N), with a
//! count that never exceeds the true one and equals it once the standby caught up with the
//! settled job. A malformed `max_lag` is a 400 naming the parameter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gregor::backend::Backend;
use serde_json::Value;

#[path = "support/zk_cluster.rs"]
mod zk_cluster;
use zk_cluster::*;

#[test]
fn a_standby_answers_reads_that_allow_its_lag() {
    let c = Cluster::with_standbys(4_000, 1);
    let mut expected = BTreeMap::new();
    let backend = c.backend();
    let mut sink = backend.open_sink("producer").unwrap();
    produce(&mut *sink, 20_000, 1, &mut expected);
    let mut procs: Vec<Proc> = (0..2).map(|n| c.spawn(n)).collect();
    let took = wait_settled(&c, &mut procs, Duration::from_secs(60));
    eprintln!("2 processes settled in {took:?}");
    let s = c.status();
    for t in s["tasks"].as_array().unwrap() {
        assert_eq!(t["standbys"].as_array().map(Vec::len), Some(1), "{s:#}");
    }

    let no_follow = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    let get = |url: &str| -> (u16, Option<u64>, Option<u64>, String) {
        let mut r = no_follow.get(url).call().unwrap();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
        };
        let lag = header("gregor-standby-lag");
        let age = header("gregor-standby-age-ms");
        let body = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), lag, age, body)
    };
    let entry = procs[1].http();
    let keys: Vec<(&String, &u64)> = expected.iter().step_by(53).collect();

    // Without max_lag: a key of the other process is a 307; one of this process is answered
    // by its active task, without the standby header.
    let mut elsewhere = Vec::new();
    for &(key, n) in &keys {
        let (status, lag, _, body) = get(&format!("http://{entry}/v1/stores/counts/keys/{key}"));
        match status {
            307 => elsewhere.push((key.clone(), *n)),
            200 => {
                assert_eq!(lag, None, "{key}: an active task answered with a lag");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["value"].as_u64(), Some(*n), "{key}: {body}");
                // With max_lag too: the active task answers, no header.
                let (status, lag, _, _) = get(&format!(
                    "http://{entry}/v1/stores/counts/keys/{key}?max_lag=0"
                ));
                assert_eq!((status, lag), (200, None), "{key}");
            }
            s => panic!("GET {key} through {entry}: {s} {body}"),
        }
    }
    assert!(
        !elsewhere.is_empty() && elsewhere.len() < keys.len(),
        "keys on both processes: {} of {}",
        elsewhere.len(),
        keys.len()
    );

    // With max_lag: the standby answers (no redirect), never with a count above the true
    // one, and with the true one once it caught up (the job is settled: every record is in a
    // checkpoint).
    let t = Instant::now();
    let mut exact = 0;
    let mut pending = elsewhere.clone();
    while !pending.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "standby reads not all exact within 20 s: {pending:?}\n{}",
            procs[1].log_tail()
        );
        let mut still = Vec::new();
        for (key, n) in pending {
            let (status, lag, age, body) = get(&format!(
                "http://{entry}/v1/stores/counts/keys/{key}?max_lag=1000000"
            ));
            match status {
                200 => {
                    let lag = lag.unwrap_or_else(|| panic!("{key}: no Gregor-Standby-Lag"));
                    assert!(lag <= 1_000_000);
                    assert!(age.is_some(), "{key}: no Gregor-Standby-Age-Ms");
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let got = v["value"].as_u64().unwrap();
                    assert!(got <= n, "{key}: the standby says {got}, the count is {n}");
                    if got == n {
                        exact += 1;
                    } else {
                        still.push((key, n));
                    }
                }
                // A key the standby does not hold yet (an older count: none).
                404 => {
                    assert!(
                        lag.is_some(),
                        "{key}: 404 without the standby header: {body}"
                    );
                    still.push((key, n));
                }
                // The standby has not caught up yet: as without max_lag.
                307 => still.push((key, n)),
                s => panic!("GET {key}?max_lag through {entry}: {s} {body}"),
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(exact, elsewhere.len());
    eprintln!(
        "{} keys read from the standby, all exact after {:?}",
        exact,
        t.elapsed()
    );

    // The settled job writes no changelog records: the standby is 0 records behind, so even
    // max_lag=0 is answered by it.
    let (key, n) = &elsewhere[0];
    let (status, lag, _, body) = get(&format!(
        "http://{entry}/v1/stores/counts/keys/{key}?max_lag=0"
    ));
    assert_eq!((status, lag), (200, Some(0)), "{key}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["value"].as_u64(), Some(*n));

    // A malformed max_lag: 400 naming the parameter, whatever process runs the task.
    for bad in ["-1", "abc", "", "1.5"] {
        let (status, _, _, body) = get(&format!(
            "http://{entry}/v1/stores/counts/keys/{key}?max_lag={bad}"
        ));
        assert_eq!(status, 400, "max_lag={bad:?}: {body}");
        assert!(body.contains("max_lag"), "{body}");
    }

    for p in procs {
        p.stop();
    }
}
