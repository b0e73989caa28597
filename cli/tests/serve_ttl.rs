//! Issue 13 part 1 over HTTP: a `gregor serve` job whose store has `ttl.ms`. A PUT with
//! `?ttl_ms=` (or a batch op with `"ttl_ms"`) expires on its own deadline, the others after
//! `ttl.ms`; an expired key is invisible to GET and range at once; the deadline travels in
//! the input record, so after kill -9 the replayed input brings no expired key back; bad
//! `ttl_ms` values and a `ttl_ms` for a store without `ttl.ms` are 400s naming what is wrong.

#[path = "support/http_server.rs"]
mod http_server;

use std::time::{Duration, Instant};

use serde_json::Value;

use http_server::{Server, b64, key_path};

const JOB: &str = r#"
[job]
name = "sessions"
task = "kv"
inputs = ["sessions-in"]
commit.ms = 50

[stores.kv]
key.serde = "string"
value.serde = "bytes"
changelog = "sessions-changelog"
ttl.ms = 600000
"#;

fn create_input(state: &std::path::Path, topic: &str) {
    gregor::log::LogDir::open(state)
        .unwrap()
        .create_topic(topic, 2, gregor::log::TopicConfig::default())
        .unwrap();
}

fn range_keys(s: &Server) -> Vec<String> {
    let r = s.get("/v1/stores/kv/range");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn per_write_ttls_over_http_expire_at_once_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let job = dir.path().join("sessions.toml");
    std::fs::write(&job, JOB).unwrap();
    create_input(&state, "sessions-in");
    let args = ["serve", "--http", "127.0.0.1:0", job.to_str().unwrap()];
    let s = Server::start(&state, &args, &[]);
    s.wait_ready();
    let written = Instant::now();
    assert_eq!(
        s.put(&format!("{}?ttl_ms=1500", key_path("kv", "short")), b"s")
            .status,
        204
    );
    assert_eq!(s.put(&key_path("kv", "long"), b"l").status, 204);
    let batch = r#"{"ops": [{"op": "put", "key": "b-short", "value": "eA==", "ttl_ms": 1500},
                            {"op": "put", "key": "b-long", "value": "eQ=="}]}"#;
    let r = s.post("/v1/stores/kv/batch", batch);
    assert_eq!(r.status, 200, "{}", r.body);
    // Every deadline so far was taken before this instant (when each write was accepted).
    let all_written = Instant::now();
    // Bad values, refused before anything is written.
    for q in ["ttl_ms=0", "ttl_ms=abc", "ttl_ms=-1", "ttl=5"] {
        let r = s.put(&format!("{}?{q}", key_path("kv", "bad")), b"x");
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.message().contains("ttl"), "{q}: {}", r.body);
    }
    let r = s.post(
        "/v1/stores/kv/batch",
        r#"{"ops": [{"op": "put", "key": "bad", "value": "eA==", "ttl_ms": "soon"}]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.message().contains("ops[0]") && r.message().contains("ttl_ms"),
        "{}",
        r.body
    );
    assert_eq!(s.get(&key_path("kv", "bad")).status, 404);
    if written.elapsed() < Duration::from_millis(1_200) {
        assert_eq!(range_keys(&s), ["b-long", "b-short", "long", "short"]);
        assert_eq!(s.get(&key_path("kv", "short")).json()["value"], b64(b"s"));
    }
    std::thread::sleep(Duration::from_millis(1_600).saturating_sub(all_written.elapsed()));
    // Expired: invisible to every read at once.
    assert_eq!(s.get(&key_path("kv", "short")).status, 404);
    assert_eq!(s.get(&key_path("kv", "b-short")).status, 404);
    assert_eq!(range_keys(&s), ["b-long", "long"]);
    // kill -9: the input is replayed from the checkpoint (or the store restored); the
    // deadlines come from the input records, so nothing expired comes back.
    s.kill9();
    let s = Server::start(&state, &args, &[]);
    s.wait_ready();
    assert_eq!(s.get(&key_path("kv", "short")).status, 404);
    assert_eq!(range_keys(&s), ["b-long", "long"]);
    assert_eq!(s.get(&key_path("kv", "long")).json()["value"], b64(b"l"));
    let log = s.stop();
    assert!(!log.contains("panicked"), "{log}");

    // A store without ttl.ms refuses ttl_ms, naming the key to set.
    let plain = dir.path().join("plain.toml");
    std::fs::write(
        &plain,
        JOB.replace("ttl.ms = 600000\n", "")
            .replace("sessions", "plain"),
    )
    .unwrap();
    create_input(&dir.path().join("state2"), "plain-in");
    let s = Server::start(
        &dir.path().join("state2"),
        &["serve", "--http", "127.0.0.1:0", plain.to_str().unwrap()],
        &[],
    );
    s.wait_ready();
    let r = s.put(&format!("{}?ttl_ms=10", key_path("kv", "k")), b"x");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.message().contains("stores.kv.ttl.ms"), "{}", r.body);
    let _: Value = r.json();
}
