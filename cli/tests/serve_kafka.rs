//! `gregor serve JOB.toml` on Kafka 0.9 (started by the test harness): writes go to the
//! input topic through the Kafka sink, are acknowledged by the broker and applied before the
//! 2xx; after a restart (state restored from Kafka) every acknowledged write is readable.

#[path = "support/http_server.rs"]
mod http_server;

use gregor::runtime::JobConfig;
use gregor_testkit::Kafka09;
use serde_json::json;

use http_server::{Server, key_path};

#[test]
fn key_value_service_on_kafka_09() {
    let mut kafka = Kafka09::start();
    let dir = tempfile::tempdir().unwrap();
    let client: String = Kafka09::client_config()
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let job_file = dir.path().join("kv.toml");
    std::fs::write(
        &job_file,
        format!(
            r#"[job]
name = "kvk"
task = "kv"
system = "kafka"
inputs = ["kvk-in"]
commit.ms = 300

[kafka]
bootstrap.servers = "{}"
{client}
[stores.kv]
key.serde = "string"
value.serde = "string"
changelog = "kvk-changelog"
"#,
            kafka.bootstrap()
        ),
    )
    .unwrap();
    let job = JobConfig::from_file(&job_file).unwrap();
    // Kafka 0.9 has no admin API: topics are created the way its users do.
    kafka.create_topic(&job.kafka_settings().checkpoint_topic, 1, true);
    kafka.create_topic("kvk-in", 2, false);
    kafka.create_topic("kvk-changelog", 2, true);
    kafka.wait_for_leaders(&["kvk-in", "kvk-changelog"]);

    let state = dir.path().join("state");
    let args = ["serve", "--http", "127.0.0.1:0", job_file.to_str().unwrap()];
    let s = Server::start(&state, &args, &[]);
    s.wait_ready();
    for i in 0..40 {
        let k = format!("k{}", i % 20);
        let v = format!("v{i}");
        let r = s.put(&key_path("kv", &k), v.as_bytes());
        assert_eq!(r.status, 204, "{}", r.body);
        // Visible to the next read.
        let r = s.get(&key_path("kv", &k));
        assert_eq!(r.json()["value"], v, "{} {}", r.status, r.body);
    }
    assert_eq!(s.delete(&key_path("kv", "k0")).status, 204);
    assert_eq!(s.get(&key_path("kv", "k0")).status, 404);
    let batch =
        json!({"ops": [{"op": "put", "key": "b", "value": "x"}, {"op": "delete", "key": "k1"}]});
    assert_eq!(
        s.post("/v1/stores/kv/batch", &batch.to_string()).status,
        200
    );
    s.kill9();

    // Restarted after kill -9: restore from the changelog plus the input past the checkpoint.
    let s = Server::start(&state, &args, &[]);
    s.wait_ready();
    assert_eq!(s.get(&key_path("kv", "k0")).status, 404);
    assert_eq!(s.get(&key_path("kv", "k1")).status, 404);
    assert_eq!(s.get(&key_path("kv", "b")).json()["value"], "x");
    for i in 20..40 {
        let k = format!("k{}", i % 20);
        if k == "k0" || k == "k1" {
            continue;
        }
        assert_eq!(
            s.get(&key_path("kv", &k)).json()["value"],
            format!("v{i}"),
            "{k}"
        );
    }
    let r = s.get("/v1/stores/kv/range?limit=1000").json();
    assert_eq!(r["entries"].as_array().unwrap().len(), 19, "{r}");
    s.stop();
}
