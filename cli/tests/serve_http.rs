//! The HTTP API (docs/http-api.md) end to end: real `gregor serve` / `gregor run --http`
//! processes on free loopback ports, a blocking HTTP client.
//!
//! - reads, writes, meta, paging, job status, health, metrics and error replies;
//! - read-your-writes (a PUT then a GET or a range at once, 1000 times);
//! - the ready-made job's partitions: 1 by default, `--partitions N`, checked;
//! - batches are all-or-nothing; malformed keys are 400s naming the serde;
//! - 503 + Retry-After while tasks restore;
//! - kill -9 after acknowledged PUTs: every acknowledged write is readable after a restart;
//! - kill -9 under 8 concurrent clients doing mixed PUTs and GETs, 8 times: no acknowledged
//!   write lost, every read a value written and no older than the last acknowledged one;
//! - reads while the count job processes flat out only ever see counts grow;
//! - the group-commit counters: every write counted once, groups by who led them.

#[path = "support/count_input.rs"]
mod count_input;
#[path = "support/http_server.rs"]
mod http_server;
#[path = "../../tests/support/promtool.rs"]
mod promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use serde_json::{Value, json};

use count_input::{COUNT_JOB, produce};
use http_server::{Server, b64, key_path};

/// Follows the cursor from the first page to the last; returns every key in order.
fn page_all(s: &Server, query: &str, limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut q = format!("/v1/stores/kv/range?limit={limit}{query}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let r = s.get(&q);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let entries = v["entries"].as_array().unwrap();
        assert!(entries.len() <= limit);
        keys.extend(
            entries
                .iter()
                .map(|e| e["key"].as_str().unwrap().to_string()),
        );
        match &v["cursor"] {
            Value::Null => return keys,
            Value::String(c) => {
                assert_eq!(entries.len(), limit, "a page before the last is full");
                cursor = Some(c.clone());
            }
            other => panic!("cursor {other}"),
        }
    }
    panic!("paging did not end");
}

#[test]
fn serve_reads_writes_pages_and_explains_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &["serve", "--http", "127.0.0.1:0", "--partitions", "4"],
        &[],
    );
    s.wait_ready();

    // A missing key; an unknown store; an unknown route; a wrong method.
    let r = s.get(&key_path("kv", "nope"));
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    assert!(r.message().contains("nope"), "{}", r.body);
    let r = s.get(&key_path("nostore", "k"));
    assert_eq!(r.status, 404);
    assert!(r.message().contains("nostore"), "{}", r.body);
    assert_eq!(s.get("/v1/nothing").status, 404);
    let r = s.post("/v1/job", "{}");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );

    // Put, get, meta: the key's partition is murmur2 of its bytes mod 4.
    let key = "user/1 é";
    assert_eq!(s.put(&key_path("kv", key), b"\x00\xffvalue").status, 204);
    let r = s.get(&key_path("kv", key));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"key": key, "value": b64(b"\x00\xffvalue")})
    );
    let meta = s.get(&format!("{}/meta", key_path("kv", key))).json();
    let p = partition_for_key(key.as_bytes(), 4);
    assert_eq!(meta["partition"], p);
    assert_eq!(meta["task"], format!("kv.partition-{p}"));
    assert_eq!(
        meta["process"]["http"],
        s.base.trim_start_matches("http://")
    );

    // Read-your-writes: every PUT is visible to the GET right after it, and to a range
    // (a PUT is answered once durable; the read waits for its task to apply it).
    for i in 0..1000 {
        let k = format!("ryw-{}", i % 37);
        let v = format!("v{i}");
        assert_eq!(s.put(&key_path("kv", &k), v.as_bytes()).status, 204);
        let r = s.get(&key_path("kv", &k));
        assert_eq!(r.json()["value"], b64(v.as_bytes()), "write {i}");
        if i % 10 == 0 {
            let v2 = format!("w{i}");
            assert_eq!(s.put(&key_path("kv", &k), v2.as_bytes()).status, 204);
            let r = s.get(&format!("/v1/stores/kv/range?prefix={k}&limit=1000"));
            assert_eq!(r.status, 200, "{}", r.body);
            let found = r.json()["entries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["key"] == k.as_str())
                .map(|e| e["value"].clone());
            assert_eq!(
                found,
                Some(Value::from(b64(v2.as_bytes()))),
                "range after write {i}"
            );
        }
    }

    // Delete: gone at once; deleting again is fine.
    assert_eq!(s.delete(&key_path("kv", key)).status, 204);
    assert_eq!(s.get(&key_path("kv", key)).status, 404);
    assert_eq!(s.delete(&key_path("kv", key)).status, 204);

    // A batch with one bad op writes nothing.
    let bad = json!({"ops": [
        {"op": "put", "key": "b1", "value": b64(b"1")},
        {"op": "delete", "key": "ryw-1"},
        {"op": "put", "key": "b2", "value": "not base64!"},
    ]});
    let r = s.post("/v1/stores/kv/batch", &bad.to_string());
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    assert!(
        r.message().contains("ops[2]") && r.message().contains("bytes"),
        "{}",
        r.body
    );
    assert_eq!(s.get(&key_path("kv", "b1")).status, 404);
    assert_eq!(s.get(&key_path("kv", "ryw-1")).status, 200);
    for body in ["{", "[]", r#"{"ops": [{"op": "merge", "key": "a"}]}"#] {
        let r = s.post("/v1/stores/kv/batch", body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    // A good batch: in order, so the later write to a key wins.
    let good = json!({"ops": [
        {"op": "put", "key": "b1", "value": b64(b"1")},
        {"op": "put", "key": "b1", "value": b64(b"2")},
        {"op": "delete", "key": "ryw-1"},
    ]});
    let r = s.post("/v1/stores/kv/batch", &good.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"applied": 3}));
    assert_eq!(s.get(&key_path("kv", "b1")).json()["value"], b64(b"2"));
    assert_eq!(s.get(&key_path("kv", "ryw-1")).status, 404);

    // Oversized values are refused naming the size and the limit, and not written.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let r = s.put(&key_path("kv", "big"), &big);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large"),
        "{}",
        r.body
    );
    assert!(
        r.message().contains("1048577") && r.message().contains("1048576"),
        "{}",
        r.body
    );
    assert_eq!(s.get(&key_path("kv", "big")).status, 404);

    // Paging: 300 keys over 4 tasks, every key exactly once, in order, at any page size.
    let ops: Vec<Value> = (0..300)
        .map(|i| json!({"op": "put", "key": format!("page-{i:04}"), "value": b64(b"p")}))
        .collect();
    let r = s.post("/v1/stores/kv/batch", &json!({ "ops": ops }).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let want: Vec<String> = (0..300).map(|i| format!("page-{i:04}")).collect();
    let tasks: BTreeSet<u32> = want
        .iter()
        .map(|k| partition_for_key(k.as_bytes(), 4))
        .collect();
    assert_eq!(tasks.len(), 4, "the keys cover every task");
    for limit in [1, 7, 100, 1000] {
        assert_eq!(page_all(&s, "&prefix=page-", limit), want, "limit {limit}");
    }
    let all = page_all(&s, "", 13);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted, "ascending, no key twice");
    assert!(all.contains(&"b1".to_string()) && all.contains(&"page-0299".to_string()));
    let r = s
        .get("/v1/stores/kv/range?from=page-0010&to=page-0013")
        .json();
    let keys: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["page-0010", "page-0011", "page-0012"]);
    for (q, why) in [
        ("limit=1001", "1000"),
        ("limit=0", "1000"),
        ("prefix=a&from=b", "prefix"),
        ("cursor=!!", "cursor"),
        ("color=red", "color"),
    ] {
        let r = s.get(&format!("/v1/stores/kv/range?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.message().contains(why), "{q}: {}", r.body);
    }

    // Job status, health, metrics.
    let job = s.get("/v1/job").json();
    assert_eq!(job["job"], "kv");
    assert_eq!(job["process"], json!({"id": 0, "processes": 1}));
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4);
    assert!(tasks.iter().all(|t| t["state"] == "running"), "{job}");
    assert_eq!(tasks[2]["task"], "kv.partition-2");
    assert_eq!(
        job["stores"],
        json!([{"name": "kv", "key_serde": "string", "value_serde": "bytes"}])
    );
    let r = s.get("/health");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ready"})));
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("# TYPE"), "{}", m.body);
    // Requests by route and status: the PUTs above, the 413 among them.
    assert!(
        m.body
            .lines()
            .any(|l| l.starts_with("gregor_http_requests_total")
                && l.contains(r#"route="/v1/stores/{store}/keys/{key}""#)
                && l.contains(r#"status="413""#)),
        "{}",
        m.body
    );
    s.stop();
}

#[test]
fn keys_and_values_go_through_the_store_serdes() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("kv.toml");
    std::fs::write(
        &job,
        r#"
        [job]
        name = "numbers"
        task = "kv"
        inputs = ["numbers-in"]
        commit.ms = 200

        [stores.kv]
        key.serde = "u64"
        value.serde = "json"
        changelog = "numbers-changelog"
        "#,
    )
    .unwrap();
    let state = dir.path().join("state");
    let logs = LogDir::open(&state).unwrap();
    logs.create_topic("numbers-in", 2, TopicConfig::default())
        .unwrap();
    drop(logs);
    let s = Server::start(
        &state,
        &["serve", "--http", "127.0.0.1:0", job.to_str().unwrap()],
        &[],
    );
    s.wait_ready();
    assert_eq!(
        s.put("/v1/stores/kv/keys/42", br#"{"a": [1, 2]}"#).status,
        204
    );
    let r = s.get("/v1/stores/kv/keys/42");
    assert_eq!(r.json(), json!({"key": 42, "value": {"a": [1, 2]}}));
    for (path, serde) in [
        ("/v1/stores/kv/keys/forty-two", "`u64`"),
        ("/v1/stores/kv/keys/-1", "`u64`"),
        ("/v1/stores/kv/range?from=x", "`u64`"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.message().contains(serde), "{path}: {}", r.body);
    }
    let r = s.put("/v1/stores/kv/keys/43", b"{not json");
    assert_eq!(r.status, 400);
    assert!(r.message().contains("`json`"), "{}", r.body);
    assert_eq!(s.get("/v1/stores/kv/keys/43").status, 404);
    let r = s.post(
        "/v1/stores/kv/batch",
        r#"{"ops": [{"op": "put", "key": "7", "value": 1}]}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.message().contains("JSON integer"), "{}", r.body);
    let r = s.post(
        "/v1/stores/kv/batch",
        r#"{"ops": [{"op": "put", "key": 7, "value": [true]}, {"op": "put", "key": 8, "value": null}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.get("/v1/stores/kv/range").json();
    assert_eq!(
        r["entries"],
        json!([
            {"key": 7, "value": [true]},
            {"key": 8, "value": null},
            {"key": 42, "value": {"a": [1, 2]}},
        ])
    );
    s.stop();
}

/// `gregor run --http` of an ordinary job: its store is readable while it runs, counts read
/// concurrently only ever grow, and writes are 405.
#[test]
fn reads_while_the_count_job_runs_only_see_counts_grow() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let want = produce(&state, 400_000, 64);
    let job = dir.path().join("count.toml");
    std::fs::write(&job, COUNT_JOB).unwrap();
    let s = Arc::new(Server::start(
        &state,
        &["run", job.to_str().unwrap(), "--http", "127.0.0.1:0"],
        &[],
    ));
    let keys: Vec<String> = want.keys().take(8).cloned().collect();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (s, keys, done) = (Arc::clone(&s), keys.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut last: BTreeMap<String, u64> = BTreeMap::new();
                let (mut reads, mut between) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(120);
                while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                    for k in keys.iter().skip(r) {
                        let reply = s.get(&format!("/v1/stores/counts/keys/{k}"));
                        let n = match reply.status {
                            200 => reply.json()["value"].as_u64().unwrap(),
                            404 => 0,
                            503 => continue,
                            other => panic!("{other}: {}", reply.body),
                        };
                        let before = last.insert(k.clone(), n).unwrap_or(0);
                        assert!(n >= before, "count of {k} went from {before} to {n}");
                        reads += 1;
                        between += u64::from(n > 0 && n < 6250);
                    }
                }
                (reads, between, last)
            })
        })
        .collect();
    // Wait until every count is final.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (k, &n) in &want {
        loop {
            let r = s.get(&format!("/v1/stores/counts/keys/{k}"));
            if r.status == 200 && r.json()["value"].as_u64() == Some(n) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{k} never reached {n}: {}",
                r.body
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut total_reads = 0;
    for r in readers {
        let (reads, between, last) = r.join().unwrap();
        eprintln!("reader: {reads} reads, {between} saw a count between 0 and final");
        total_reads += reads;
        for (k, n) in last {
            assert!(n <= want[&k], "{k}: read {n}, final {}", want[&k]);
        }
    }
    assert!(total_reads > 0);
    // Writes to an ordinary job are 405; the range merges the four tasks' stores.
    let r = s.put("/v1/stores/counts/keys/k1", b"5");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    let r = s.get("/v1/stores/counts/range?limit=1000").json();
    let got: BTreeMap<String, u64> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["value"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let s = Arc::into_inner(s).unwrap();
    s.stop();
}

/// While tasks restore, reads, writes and health are 503 with Retry-After; `/v1/job` shows
/// the tasks restoring; then everything is there.
#[test]
fn restoring_tasks_answer_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let s = Server::start(
            &state,
            &["serve", "--http", "127.0.0.1:0", "--partitions", "4"],
            &[],
        );
        s.wait_ready();
        assert_eq!(s.put(&key_path("kv", "kept"), b"v1").status, 204);
        s.stop();
    }
    // Each task takes 1.5 s to open: 6 s of restore to observe.
    let s = Server::start(
        &state,
        &["serve", "--http", "127.0.0.1:0", "--partitions", "4"],
        &[("GREGOR_TEST_OPEN_DELAY_MS", "1500")],
    );
    let mut saw_restoring = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = s.get("/health");
        if h.status == 200 {
            break;
        }
        assert_eq!(h.status, 503, "{}", h.body);
        assert_eq!(h.retry_after.as_deref(), Some("1"));
        let r = s.get(&key_path("kv", "kept"));
        if r.status == 200 {
            // Its own task may be open already; then the value is the right one.
            assert_eq!(r.json()["value"], b64(b"v1"));
        } else {
            assert_eq!((r.status, r.error_code().as_str()), (503, "unavailable"));
            assert_eq!(r.retry_after.as_deref(), Some("1"));
        }
        let w = s.put(&key_path("kv", "during"), b"x");
        assert_eq!(w.status, 503, "{}", w.body);
        let job = s.get("/v1/job").json();
        if let Some(tasks) = job["tasks"].as_array()
            && tasks.iter().any(|t| t["state"] == "restoring")
        {
            saw_restoring = true;
        }
        assert!(Instant::now() < deadline, "never ready: {}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_restoring, "no task was seen restoring");
    assert_eq!(s.get(&key_path("kv", "kept")).json()["value"], b64(b"v1"));
    assert_eq!(
        s.get(&key_path("kv", "during")).status,
        404,
        "a 503 write wrote nothing"
    );
    s.stop();
}

/// kill -9 of `gregor serve` at random points while a client writes: after each restart every
/// acknowledged write is readable with its value (or the one write in flight at the kill).
#[test]
fn kill9_loses_no_acknowledged_write() {
    let rounds: u64 = std::env::var("GREGOR_SERVE_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut seq = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut total_acked = 0;
    for round in 0..rounds {
        let s = Server::start(&state, &["serve", "--http", "127.0.0.1:0"], &[]);
        s.wait_ready();
        // Every write acknowledged so far is there.
        for (k, v) in &acked {
            let r = s.get(&key_path("kv", k));
            assert_eq!(r.json()["value"], b64(v.as_bytes()), "round {round}: {k}");
        }
        // Write until killed at a random point.
        let kill_after = Duration::from_millis(50 + next() % 400);
        let pid = s.child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        });
        let mut in_flight = loop {
            seq += 1;
            let k = format!("key-{}", next() % 50);
            let v = format!("round-{round}-seq-{seq}");
            match s.try_put(&key_path("kv", &k), v.as_bytes()) {
                Ok(r) if r.status == 204 => {
                    acked.insert(k, v);
                    total_acked += 1;
                }
                Ok(r) => panic!("round {round}: PUT {}: {}", r.status, r.body),
                Err(_) => break Some((k, v)),
            }
        };
        killer.join().unwrap();
        s.kill9();
        let s = Server::start(&state, &["serve", "--http", "127.0.0.1:0"], &[]);
        s.wait_ready();
        // The value read must be the acknowledged one or the in-flight write's.
        for (k, v) in &acked {
            let r = s.get(&key_path("kv", k));
            assert_eq!(r.status, 200, "round {round}: {k}: {}", r.body);
            let got = r.json()["value"].as_str().unwrap().to_string();
            if let Some((fk, fv)) = &in_flight
                && fk == k
                && got == b64(fv.as_bytes())
            {
                continue;
            }
            assert_eq!(got, b64(v.as_bytes()), "round {round}: {k}");
        }
        // Settle the in-flight write either way, so later rounds know the value.
        if let Some((k, v)) = in_flight.take() {
            let got = s.get(&key_path("kv", &k));
            if got.status == 200 && got.json()["value"] == b64(v.as_bytes()) {
                acked.insert(k, v);
            }
        }
        s.kill9();
    }
    eprintln!("{rounds} kill -9 rounds, {total_acked} acknowledged writes");
    assert!(
        total_acked >= rounds,
        "only {total_acked} writes acknowledged"
    );
}

/// `http.auth.token` (here through `GREGOR_HTTP_AUTH_TOKEN`): every request but `/health`
/// needs the bearer token (401 with `WWW-Authenticate` otherwise, nothing written); and a
/// client that never finishes its request neither blocks other clients nor the server.
#[test]
fn a_token_guards_reads_and_writes_and_slow_clients_block_nobody() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-for-the-test";
    let s = Server::start(
        dir.path(),
        &["serve", "--http", "127.0.0.1:0"],
        &[("GREGOR_HTTP_AUTH_TOKEN", token)],
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = |p: &str| format!("{}{p}", s.base);
    // Health is open (load balancers probe it).
    let t = std::time::Instant::now();
    loop {
        let r = agent.get(url("/health")).call().unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (method, path) in [
        ("PUT", "/v1/stores/kv/keys/a"),
        ("GET", "/v1/stores/kv/keys/a"),
        ("GET", "/v1/job"),
        ("GET", "/metrics"),
    ] {
        for auth in [None, Some("Bearer wrong-token-of-some-length")] {
            let mut req = ureq::http::Request::builder().method(method).uri(url(path));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let r = agent.run(req.body(b"v".to_vec()).unwrap()).unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    let bearer = format!("Bearer {token}");
    let r = agent
        .put(url("/v1/stores/kv/keys/a"))
        .header("Authorization", &bearer)
        .send(&b"v1"[..])
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut r = agent
        .get(url("/v1/stores/kv/keys/a"))
        .header("Authorization", &bearer)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains(&b64(b"v1")));

    // Slow clients: half-sent headers and a body that never comes; others are served.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        if i % 2 == 0 {
            c.write_all(b"GET /v1/stores/kv/keys/a HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        } else {
            c.write_all(
                format!(
                    "PUT /v1/stores/kv/keys/a HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\nContent-Length: 1000\r\n\r\npartial"
                )
                .as_bytes(),
            )
            .unwrap();
        }
        stalled.push(c);
    }
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let r = agent
            .get(url("/v1/stores/kv/keys/a"))
            .header("Authorization", &bearer)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a read waited behind slow clients"
        );
    }
    drop(stalled);
    s.stop();
}

/// Clients of the load-and-kill test, each writing its own keys and reading everyone's.
const LOAD_CLIENTS: usize = 8;
/// Keys each client writes.
const KEYS_PER_CLIENT: usize = 16;
/// Bytes of every value.
const VALUE_SIZE: usize = 100;

/// The value of write number `seq` (from 1) to `key`: `key#seq#` padded to [`VALUE_SIZE`]
/// with a filler that depends on both, so a read can be checked byte for byte.
fn load_value(key: &str, seq: u64) -> Vec<u8> {
    let mut v = format!("{key}#{seq}#").into_bytes();
    let fill = b'a' + ((seq * 7 + key.len() as u64) % 26) as u8;
    v.resize(VALUE_SIZE, fill);
    v
}

/// The write number of a value read for `key`; panics unless it is exactly a value
/// [`load_value`] makes for that key.
fn load_seq(key: &str, value_b64: &str, context: &str) -> u64 {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value_b64)
        .unwrap_or_else(|e| panic!("{context}: {key}: value not base64 ({e})"));
    let text = String::from_utf8_lossy(&bytes);
    let seq = text
        .strip_prefix(&format!("{key}#"))
        .and_then(|rest| rest.split('#').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{context}: {key}: {text:?} was never written to it"));
    assert_eq!(
        bytes,
        load_value(key, seq),
        "{context}: {key}: a value never written"
    );
    seq
}

/// Per key: the last write number sent (before sending) and the last acknowledged.
struct KeyLog {
    name: String,
    sent: std::sync::atomic::AtomicU64,
    acked: std::sync::atomic::AtomicU64,
}

/// After a restart: every key holds its last acknowledged write, or the one write that was
/// in flight at the kill (which then counts as acknowledged). Returns (writes in flight,
/// of which applied).
fn check_after_restart(s: &Server, keys: &[KeyLog], round: u64) -> (u64, u64) {
    let (mut in_flight, mut applied) = (0, 0);
    for k in keys {
        let (sent, acked) = (
            k.sent.load(Ordering::SeqCst),
            k.acked.load(Ordering::SeqCst),
        );
        let r = s.get(&key_path("kv", &k.name));
        let got = match r.status {
            404 => 0,
            200 => load_seq(&k.name, r.json()["value"].as_str().unwrap(), "restart"),
            other => panic!("round {round}: GET {}: {other}: {}", k.name, r.body),
        };
        assert!(
            got == acked || (got == sent && sent == acked + 1),
            "round {round}: {} holds write {got}; last acknowledged {acked}, last sent {sent}",
            k.name
        );
        in_flight += u64::from(sent > acked);
        applied += u64::from(sent > acked && got == sent);
        k.acked.store(got, Ordering::SeqCst);
    }
    (in_flight, applied)
}

/// One client until the server dies or `stop`: random puts of its own keys and gets of any
/// key, each read checked (a value written to that key, no older than the last write
/// acknowledged before the read began). Returns (puts acknowledged, reads checked).
fn load_client(s: &Server, keys: &[KeyLog], me: usize, seed: u64, stop: &AtomicBool) -> (u64, u64) {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut puts, mut reads) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        if next() % 2 == 0 {
            let k = &keys[me * KEYS_PER_CLIENT + (next() as usize % KEYS_PER_CLIENT)];
            let seq = k.sent.load(Ordering::SeqCst) + 1;
            k.sent.store(seq, Ordering::SeqCst);
            match s.try_put(&key_path("kv", &k.name), &load_value(&k.name, seq)) {
                Ok(r) if r.status == 204 => {
                    k.acked.store(seq, Ordering::SeqCst);
                    puts += 1;
                }
                Ok(r) => panic!("PUT {}: {}: {}", k.name, r.status, r.body),
                // Killed: this write is in flight (sent > acked).
                Err(_) => break,
            }
        } else {
            let k = &keys[next() as usize % keys.len()];
            let floor = k.acked.load(Ordering::SeqCst);
            let r = match s.try_get(&key_path("kv", &k.name)) {
                Ok(r) => r,
                Err(_) => break,
            };
            let got = match r.status {
                404 => 0,
                200 => load_seq(&k.name, r.json()["value"].as_str().unwrap(), "read"),
                other => panic!("GET {}: {other}: {}", k.name, r.body),
            };
            assert!(
                got >= floor,
                "{}: read write {got} after write {floor} was acknowledged",
                k.name
            );
            assert!(
                got <= k.sent.load(Ordering::SeqCst),
                "{}: read a write never sent",
                k.name
            );
            reads += 1;
        }
    }
    (puts, reads)
}

/// Concurrent clients doing mixed puts and gets while `gregor serve` is killed (SIGKILL) at
/// random points and restarted: after each restart every acknowledged put is readable with
/// its last acknowledged value (or the write in flight at the kill), and every read, during
/// the load and after, returns a value that was written to that key and no older than what
/// was acknowledged before the read began.
#[test]
fn kill9_under_concurrent_mixed_load_loses_no_acknowledged_write() {
    let rounds: u64 = std::env::var("GREGOR_SERVE_LOAD_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let keys: Vec<KeyLog> = (0..LOAD_CLIENTS * KEYS_PER_CLIENT)
        .map(|i| KeyLog {
            name: format!("load-{}-{}", i / KEYS_PER_CLIENT, i % KEYS_PER_CLIENT),
            sent: 0.into(),
            acked: 0.into(),
        })
        .collect();
    let (mut puts, mut reads, mut in_flight, mut applied) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    for round in 0..=rounds {
        let s = Server::start(
            &state,
            &["serve", "--http", "127.0.0.1:0", "--partitions", "4"],
            &[],
        );
        s.wait_ready();
        let (f, a) = check_after_restart(&s, &keys, round);
        in_flight += f;
        applied += a;
        if round == rounds {
            s.stop();
            break;
        }
        // Load until killed at a random point (200..1200 ms in).
        let kill_after = Duration::from_millis(200 + (round * 7919 + 13) % 1000);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let clients: Vec<_> = (0..LOAD_CLIENTS)
                .map(|c| {
                    let (s, keys, stop) = (&s, &keys, &stop);
                    let seed = round * 1000 + c as u64 + 0x5eed;
                    scope.spawn(move || load_client(s, keys, c, seed, stop))
                })
                .collect();
            std::thread::sleep(kill_after);
            s.sigkill();
            // A client between requests sees the refused connection; none waits long.
            stop.store(true, Ordering::SeqCst);
            for c in clients {
                let (p, r) = c.join().unwrap();
                puts += p;
                reads += r;
            }
        });
        s.kill9();
    }
    eprintln!(
        "{rounds} kills under {LOAD_CLIENTS} clients: {puts} acknowledged puts, {reads} checked reads; {in_flight} puts in flight at a kill, {applied} of them applied; {:?}",
        started.elapsed()
    );
    assert!(puts >= rounds * 10, "only {puts} puts acknowledged");
    assert!(reads >= rounds * 10, "only {reads} reads");
}

/// The key-value service's counters of partition 0 in `/metrics`: writes made durable,
/// group commits led by a request, group commits led by the writer thread.
fn kv_write_counters(s: &Server) -> (u64, u64, u64) {
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    let value = |prefix: &str, label: &str| -> u64 {
        m.body
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(r#"partition="0""#))
            .filter(|l| l.contains(label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    };
    (
        value("gregor_kv_writes_total{", r#"job="kv""#),
        value("gregor_kv_write_groups_total{", r#"leader="request""#),
        value("gregor_kv_write_groups_total{", r#"leader="writer""#),
    )
}

/// The group-commit counters (docs/design.md, "Metrics"): a lone client's writes each lead
/// their own group on the HTTP worker; concurrent clients' writes share groups, led by the
/// writer thread when they queued behind another; every acknowledged write counts once.
/// `gregor serve`'s whole `/metrics` passes `promtool check metrics` (the test fails if
/// promtool is missing).
#[test]
fn group_commits_are_counted_with_who_led_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("state"),
        &["serve", "--http", "127.0.0.1:0"],
        &[],
    );
    s.wait_ready();
    let sequential = 20u64;
    for i in 0..sequential {
        assert_eq!(s.put(&key_path("kv", &format!("s{i}")), b"v").status, 204);
    }
    assert_eq!(
        kv_write_counters(&s),
        (sequential, sequential, 0),
        "one group per write, each led by its request"
    );
    // Concurrent clients: some writes queue behind a group and share the next one. Whether
    // they do in a given round is timing (an fsync on tmpfs is nearly free), so rounds repeat
    // until they have, up to a deadline; every write is counted once in every round.
    let (clients, each) = (16u64, 50u64);
    let mut expected = sequential;
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0.. {
        std::thread::scope(|scope| {
            for c in 0..clients {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..each {
                        let r = s.put(&key_path("kv", &format!("r{round}-c{c}-{i}")), b"v");
                        assert_eq!(r.status, 204);
                    }
                });
            }
        });
        expected += clients * each;
        let (writes, by_request, by_writer) = kv_write_counters(&s);
        assert_eq!(writes, expected, "every acknowledged write counted once");
        if by_writer > 0 && by_request + by_writer < writes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{clients} concurrent clients, {} rounds: {writes} writes in {by_request} groups \
             led by a request and {by_writer} by the writer thread; no write ever queued",
            round + 1
        );
    }
    let m = s.get("/metrics").body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gregor_http_requests_total{")),
        "{m}"
    );
    let (ok, out) = promtool::promtool_check(&m);
    assert!(
        ok,
        "promtool check metrics failed:\n{out}\n--- /metrics:\n{m}"
    );
    s.stop();
}

/// `gregor --state-dir STATE ARGS…`, expected to fail: its stderr.
fn serve_fails(state: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gregor"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_ready_made_job_has_one_partition_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let s = Server::start(&state, &["serve", "--http", "127.0.0.1:0"], &[]);
    s.wait_ready();
    let job = s.get("/v1/job").json();
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{job}");
    assert_eq!(tasks[0]["task"], "kv.partition-0");
    assert_eq!(s.put(&key_path("kv", "a"), b"1").status, 204);
    s.stop();

    // The topic exists: another count is refused, naming both; the same count is fine.
    let err = serve_fails(
        &state,
        &["serve", "--http", "127.0.0.1:0", "--partitions", "4"],
    );
    assert!(
        err.contains("--partitions 4") && err.contains("exists with 1 partitions"),
        "{err}"
    );
    let s = Server::start(
        &state,
        &["serve", "--http", "127.0.0.1:0", "--partitions", "1"],
        &[],
    );
    s.wait_ready();
    assert_eq!(s.get(&key_path("kv", "a")).json()["value"], b64(b"1"));
    s.stop();

    // Not with a job file (it names its own input); out of range is refused by the parser.
    let job = dir.path().join("kv.toml");
    std::fs::write(
        &job,
        "[job]\nname = \"kv\"\ntask = \"kv\"\ninputs = [\"kv-in\"]\n",
    )
    .unwrap();
    let err = serve_fails(
        &state,
        &["serve", "--partitions", "2", job.to_str().unwrap()],
    );
    assert!(
        err.contains("--partitions sets the ready-made job's input"),
        "{err}"
    );
    let err = serve_fails(&dir.path().join("other"), &["serve", "--partitions", "0"]);
    assert!(err.contains("--partitions"), "{err}");
}
