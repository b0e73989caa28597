//! `gregor serve` vs Redis (issue 10 part 6): durable writes, reads and a 50/50 mix, with the
//! same load generator, value size and client concurrency, in the same run, on loopback.
//!
//! Targets, all running for the whole bench, each in a temp dir under the same file system:
//! - `gregor serve` (this crate's release binary, the ready-made job: 1 partition, RocksDB
//!   store with a changelog; `--partitions N` for N). A 2xx PUT is fsync'd in the log; a
//!   read waits until the writes acknowledged before it are applied.
//! - `redis-server --appendonly yes --appendfsync always`: a SET is answered after the AOF is
//!   fsync'd (the same durability as a gregor 2xx).
//! - `redis-server` with its default configuration (no AOF; RDB snapshots): a SET is in memory.
//! - the *HTTP floor*: a server on the same HTTP stack as `gregor serve` (axum on a 2-worker
//!   tokio runtime) that answers the same requests and does nothing else (a PUT is 204 once its
//!   body is read, a GET a constant 100-byte value). No server on this stack can be faster;
//!   `gregor / HTTP floor` is the share of the stack's rate gregor keeps while doing its work
//!   (append, fsync, apply, read barrier, metrics), and the floor next to Redis shows what the
//!   protocol alone costs on this machine. It runs in a child process (this binary with
//!   `--floor-http-server`, the system allocator).
//!
//! The generator: `C` client threads (1, 16, 64), each with one keep-alive TCP connection,
//! closed loop (one request at a time, no pipelining), random keys out of 10,000 (`key-%06d`,
//! all written before the read workloads), 100-byte values. To gregor it speaks HTTP/1.1 by
//! hand (`PUT`/`GET /v1/stores/kv/keys/{key}`; each request in one write, the reply parsed
//! by status line and `Content-Length`), to Redis RESP by hand (`SET`, `GET`), so neither side
//! pays for a heavier client. Workloads: `put` (100% writes), `get` (100% reads), `mixed`
//! (50/50). Per (workload, clients) cell the four targets run back to back; ops/s over the
//! cell's duration, p50/p99 of every request's latency.
//!
//! For reference, `redis-benchmark` (Redis's own C client, event loop, `-P 1`) is run with the
//! same `-c`, `-d 100` and `-r 10000` against both Redis configurations, so a generator that
//! held Redis back would show.
//!
//! `cargo bench -p gregor-cli --bench serve_vs_redis` (5 s per cell, best of 2 rounds) or
//! `-- --quick` (1.5 s, one round). Needs `redis-server` and `redis-benchmark` on `PATH`
//! (Debian: `apt-get install redis-server`); fails without them.
//!
//! `-- --kafka [--quick]`: `gregor serve` on Kafka instead (a Kafka 0.9 broker started as the
//! tests start it, `.ci/deps` installs it; no Redis): puts from 1 and 16 clients (10 s per
//! cell, 3 s with `--quick`) and, as the floor on the same broker, a raw rdkafka
//! produce→ack and produce→consumed round trip.

#[path = "../tests/support/http_server.rs"]
mod http_server;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use http_server::Server;

/// Keys written and read.
const KEYS: u64 = 10_000;
/// Bytes of every value.
const VALUE_SIZE: usize = 100;
/// Client concurrency levels.
const CLIENTS: [usize; 3] = [1, 16, 64];

fn key(i: u64) -> String {
    format!("key-{i:06}")
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(VALUE_SIZE, b'v');
    v
}

/// One client connection to a target.
enum Conn {
    Http(BufReader<TcpStream>),
    Resp(BufReader<TcpStream>),
}

impl Conn {
    fn open(proto: Proto, addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_nodelay(true).unwrap();
        let r = BufReader::with_capacity(16 * 1024, s);
        match proto {
            Proto::Http => Conn::Http(r),
            Proto::Resp => Conn::Resp(r),
        }
    }

    fn send(&mut self, req: &[u8]) {
        let s = match self {
            Conn::Http(r) | Conn::Resp(r) => r.get_mut(),
        };
        s.write_all(req).expect("send");
    }

    /// One request (a put of `v` to `k`, or a get of `k`); panics unless the target answered
    /// it as expected (204 / `+OK` to a put, 200 / a bulk string to a get: every key exists).
    fn op(&mut self, put: bool, k: &str, v: &[u8], buf: &mut Vec<u8>, line: &mut String) {
        buf.clear();
        match self {
            Conn::Http(_) => {
                if put {
                    write!(
                        buf,
                        "PUT /v1/stores/kv/keys/{k} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
                        v.len()
                    )
                    .unwrap();
                    buf.extend_from_slice(v);
                } else {
                    write!(
                        buf,
                        "GET /v1/stores/kv/keys/{k} HTTP/1.1\r\nHost: bench\r\n\r\n"
                    )
                    .unwrap();
                }
            }
            Conn::Resp(_) => {
                if put {
                    write!(
                        buf,
                        "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n",
                        k.len(),
                        v.len()
                    )
                    .unwrap();
                    buf.extend_from_slice(v);
                    buf.extend_from_slice(b"\r\n");
                } else {
                    write!(buf, "*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).unwrap();
                }
            }
        }
        self.send(buf);
        match self {
            Conn::Http(r) => {
                line.clear();
                r.read_line(line).expect("HTTP status line");
                let status = line.split(' ').nth(1).unwrap_or("").to_string();
                let want = if put { "204" } else { "200" };
                let mut len = 0usize;
                loop {
                    line.clear();
                    r.read_line(line).expect("HTTP header");
                    let h = line.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((name, val)) = h.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            len = val.trim().parse().expect("Content-Length");
                        } else if name.eq_ignore_ascii_case("transfer-encoding") {
                            panic!("chunked reply from gregor: not handled by the bench");
                        }
                    }
                }
                buf.resize(len, 0);
                r.read_exact(buf).expect("HTTP body");
                assert_eq!(
                    status,
                    want,
                    "gregor answered {} {k}: {status} {}",
                    if put { "PUT" } else { "GET" },
                    String::from_utf8_lossy(buf)
                );
            }
            Conn::Resp(r) => {
                line.clear();
                r.read_line(line).expect("RESP reply");
                if put {
                    assert_eq!(line, "+OK\r\n", "Redis answered SET {k}: {line}");
                } else {
                    let len: usize = line
                        .strip_prefix('$')
                        .and_then(|n| n.trim_end().parse().ok())
                        .unwrap_or_else(|| panic!("Redis answered GET {k}: {line}"));
                    buf.resize(len + 2, 0);
                    r.read_exact(buf).expect("RESP bulk string");
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Proto {
    Http,
    Resp,
}

#[derive(Clone, Copy)]
enum Workload {
    Put,
    Get,
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed 50/50",
        }
    }
}

/// What one (target, workload, clients) cell measured.
#[derive(Clone, Default)]
struct Cell {
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `workload` with `clients` connections against `addr` for `secs`.
fn measure(proto: Proto, addr: SocketAddr, workload: Workload, clients: usize, secs: f64) -> Cell {
    let start = Barrier::new(clients + 1);
    let run = Duration::from_secs_f64(secs);
    let (lat, elapsed) = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let start = &start;
                scope.spawn(move || {
                    let mut conn = Conn::open(proto, addr);
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((c as u64 + 1) * 0x1234_5677);
                    let values: Vec<Vec<u8>> = (0..16).map(value).collect();
                    let (mut buf, mut line) = (Vec::with_capacity(512), String::new());
                    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                    start.wait();
                    let t0 = Instant::now();
                    let deadline = t0 + run;
                    loop {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let put = match workload {
                            Workload::Put => true,
                            Workload::Get => false,
                            Workload::Mixed => rng & (1 << 40) != 0,
                        };
                        let k = key(rng % KEYS);
                        let v = &values[(rng >> 20) as usize % values.len()];
                        let t = Instant::now();
                        conn.op(put, &k, v, &mut buf, &mut line);
                        let done = Instant::now();
                        lat.push((done - t).as_micros().min(u32::MAX as u128) as u32);
                        if done >= deadline {
                            return (lat, done - t0);
                        }
                    }
                })
            })
            .collect();
        start.wait();
        let mut all = Vec::new();
        let mut elapsed = Duration::ZERO;
        for t in threads {
            let (l, e) = t.join().unwrap();
            all.extend(l);
            elapsed = elapsed.max(e);
        }
        (all, elapsed)
    });
    let ops_per_s = lat.len() as f64 / elapsed.as_secs_f64();
    let (p50_ms, p99_ms) = percentiles(lat);
    Cell {
        ops_per_s,
        p50_ms,
        p99_ms,
    }
}

/// The floor of the HTTP stack: `axum` on a 2-worker tokio runtime (as `gregor serve` has it)
/// answering `PUT /v1/stores/{store}/keys/{key}` with 204 after reading the body and `GET` with
/// a 100-byte value, doing nothing else. Run in a child process (this bench binary with
/// `--floor-http-server`), which prints its address on its first line.
fn floor_http_server() {
    use axum::routing::put;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let value = axum::body::Bytes::from(value(0));
        let app = axum::Router::new().route(
            "/v1/stores/{store}/keys/{key}",
            put(|_body: axum::body::Bytes| async { axum::http::StatusCode::NO_CONTENT })
                .get(move || async move { value }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

/// A child process running [`floor_http_server`]; killed when dropped.
struct FloorServer {
    child: Child,
    addr: SocketAddr,
}

impl FloorServer {
    fn start() -> FloorServer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--floor-http-server")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the floor HTTP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the floor HTTP server's address");
        let addr = line.trim().parse().unwrap_or_else(|e| {
            panic!("the floor HTTP server printed {line:?}, not an address: {e}")
        });
        FloorServer { child, addr }
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` on a free loopback port, in its own temp dir; killed when dropped.
struct Redis {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): this bench compares gregor with Redis in \
                     the same run and needs `redis-server` and `redis-benchmark` on PATH \
                     (Debian: `apt-get install redis-server`)"
                )
            });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = TcpStream::connect(addr) {
                let mut r = BufReader::new(s);
                r.get_mut().write_all(b"PING\r\n").unwrap();
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() && line == "+PONG\r\n" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server {extra:?} did not answer PING; log: {}",
                std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Writes every key, pipelined on one connection.
    fn preload(&self) {
        let mut r = BufReader::new(TcpStream::connect(self.addr).unwrap());
        let mut buf = Vec::new();
        for i in 0..KEYS {
            let (k, v) = (key(i), value(i));
            write!(
                buf,
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n",
                k.len(),
                v.len()
            )
            .unwrap();
            buf.extend_from_slice(&v);
            buf.extend_from_slice(b"\r\n");
        }
        r.get_mut().write_all(&buf).unwrap();
        let mut line = String::new();
        for _ in 0..KEYS {
            line.clear();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "+OK\r\n");
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes every key through `POST /v1/stores/kv/batch`, 1000 per batch.
fn preload_gregor(s: &Server) {
    let b64 = base64::engine::general_purpose::STANDARD;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|&i| json!({"op": "put", "key": key(i), "value": b64.encode(value(i))}))
            .collect();
        let r = s.post("/v1/stores/kv/batch", &json!({ "ops": ops }).to_string());
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// `redis-benchmark -t TEST` (`set` or `get`) with `clients` connections.
fn redis_benchmark(addr: SocketAddr, test: &str, clients: usize, requests: usize) -> Cell {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-d", &VALUE_SIZE.to_string(), "-r", &KEYS.to_string()])
        .args(["-P", "1", "-t", test, "--csv"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-benchmark ({e}): install it with `apt-get install redis-server`"
            )
        });
    assert!(out.status.success(), "redis-benchmark: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"
    let row = |test: &str| {
        let l = text
            .lines()
            .find(|l| l.starts_with(&format!("\"{}\"", test.to_uppercase())))
            .unwrap_or_else(|| panic!("no {test} in redis-benchmark output: {text}"));
        let f: Vec<f64> = l
            .split(',')
            .skip(1)
            .map(|x| x.trim_matches('"').parse().unwrap())
            .collect();
        Cell {
            ops_per_s: f[0],
            p50_ms: f[3],
            p99_ms: f[5],
        }
    };
    row(test)
}

/// The machine, its load, and Redis's version when `redis` (it must be installed then).
fn machine(redis: bool) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    if !redis {
        return format!(
            "{} CPUs, {cpu}; load average {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load.split(' ').take(3).collect::<Vec<_>>().join(" ")
        );
    }
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| {
            panic!(
                "redis-server not found ({e}): this bench measures Redis in the same run; \
                 install it with `apt-get install redis-server`"
            )
        });
    format!(
        "{} CPUs, {cpu}; load average {}; {redis}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    )
}

/// The value after `--NAME` on the command line.
fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

/// Percentiles (ms) of latencies in µs.
fn percentiles(mut lat: Vec<u32>) -> (f64, f64) {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    (at(0.5), at(0.99))
}

/// The raw floor on the same broker: one rdkafka producer (the settings of gregor's sink on
/// a 0.9 broker: `acks=all`, one request in flight, `linger.ms=5`) appends one record and
/// flushes; a consumer assigned to the partition (librdkafka's defaults) polls until it has
/// the record. Sequential, `n` times; p50/p99 of produce→ack and of produce→consumed.
///
/// With `stock_flush`, the producer waits with rdkafka's `Producer::flush`, whose polls last
/// 100 ms each (what gregor's sinks did); otherwise in 1 ms polls, as gregor's sinks now do.
fn kafka_round_trip(
    bootstrap: &str,
    topic: &str,
    n: usize,
    stock_flush: bool,
) -> ((f64, f64), (f64, f64)) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let config = || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap);
        for (k, v) in gregor_testkit::Kafka09::client_config() {
            c.set(k, v);
        }
        c
    };
    let mut pc = config();
    pc.set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5");
    let producer: BaseProducer = pc.create().unwrap();
    let consumer: BaseConsumer = config()
        .set("group.id", "bench-round-trip")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // From the end as it is now (`Offset::End` is resolved asynchronously: a record
    // produced meanwhile would be missed).
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(end))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let (mut acked, mut consumed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 20 {
        let payload = format!("{i}");
        let t = Instant::now();
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(0)
                    .payload(payload.as_bytes()),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        if stock_flush {
            producer.flush(Duration::from_secs(10)).unwrap();
        } else {
            // As gregor's sinks wait (`backend::kafka::flush_producer`).
            while producer.flush(Duration::ZERO).is_err() {
                assert!(t.elapsed() < Duration::from_secs(10), "no acknowledgement");
                producer.poll(Duration::from_millis(1));
            }
        }
        let a = t.elapsed();
        loop {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(m)) if m.payload() == Some(payload.as_bytes()) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("consuming: {e}"),
                None => panic!("no record within 10 s"),
            }
        }
        // The first records warm the connections up.
        if i >= 20 {
            acked.push(a.as_micros() as u32);
            consumed.push(t.elapsed().as_micros() as u32);
        }
    }
    (percentiles(acked), percentiles(consumed))
}

/// `--kafka`: `gregor serve` on a Kafka 0.9 broker (started here, as the tests do), the
/// ready-made job's store layout with 4 partitions (RocksDB store with a changelog): sequential and
/// concurrent puts, and a raw produce→consume round trip on the same broker as the floor.
fn kafka_main(secs: f64) {
    let mut kafka = gregor_testkit::Kafka09::start();
    let dir = tempfile::tempdir().unwrap();
    let client: String = gregor_testkit::Kafka09::client_config()
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let job_file = dir.path().join("kv.toml");
    std::fs::write(
        &job_file,
        format!(
            r#"[job]
name = "kv"
task = "kv"
system = "kafka"
inputs = ["kv-in"]

[kafka]
bootstrap.servers = "{}"
{client}
[stores.kv]
engine = "rocksdb"
key.serde = "string"
value.serde = "bytes"
changelog = "kv-changelog"
"#,
            kafka.bootstrap()
        ),
    )
    .unwrap();
    kafka.create_topic("__gregor-checkpoints-kv", 1, true);
    kafka.create_topic("kv-in", 4, false);
    kafka.create_topic("kv-changelog", 4, true);
    kafka.create_topic("round-trip", 1, false);
    kafka.wait_for_leaders(&["kv-in", "kv-changelog", "round-trip"]);
    println!("Kafka 0.9 broker on loopback; gregor serve with 4 input partitions");

    let log = std::env::var("GREGOR_BENCH_LOG").ok();
    let env: Vec<(&str, &str)> = log.iter().map(|l| ("GREGOR_LOG", l.as_str())).collect();
    let state = dir.path().join("gregor-state");
    let serve_args = ["serve", "--http", "127.0.0.1:0", job_file.to_str().unwrap()];
    let gregor = Server::start(&state, &serve_args, &env);
    gregor.wait_ready();
    let addr: SocketAddr = gregor.base.trim_start_matches("http://").parse().unwrap();
    // Warm up (producers and consumers connected).
    measure(Proto::Http, addr, Workload::Put, 4, 1.0);
    println!();
    println!("| what | clients | ops/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    let clients: Vec<usize> =
        arg("--clients").map_or(vec![1, 16], |c| vec![c.parse().expect("--clients N")]);
    for c in clients {
        let cell = measure(Proto::Http, addr, Workload::Put, c, secs);
        println!(
            "| gregor serve PUT | {c} | {:.0} | {:.3} | {:.3} |",
            cell.ops_per_s, cell.p50_ms, cell.p99_ms
        );
    }
    for (stock, how) in [(false, "1 ms polls"), (true, "rdkafka `flush()`")] {
        let ((a50, a99), (c50, c99)) =
            kafka_round_trip(&kafka.bootstrap(), "round-trip", 200, stock);
        println!("| raw rdkafka produce → acknowledged ({how}) | 1 | | {a50:.3} | {a99:.3} |");
        println!("| raw rdkafka produce → consumed ({how}) | 1 | | {c50:.3} | {c99:.3} |");
    }
    let out = gregor.stop();
    if log.is_some() {
        eprintln!("{out}");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--floor-http-server") {
        floor_http_server();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--kafka") {
        let secs = arg("--secs").map_or(if quick { 3.0 } else { 10.0 }, |s| {
            s.parse().expect("--secs S")
        });
        println!(
            "# gregor serve on Kafka{}",
            if quick { " (--quick)" } else { "" }
        );
        println!("machine: {}", machine(false));
        println!(
            "{VALUE_SIZE}-byte values, random keys of {KEYS}, closed-loop clients, {secs} s per cell"
        );
        kafka_main(secs);
        return;
    }
    // For profiling one cell: `--target gregor --workload put --clients 16 --secs 20`.
    let only_target = arg("--target");
    let only_workload = arg("--workload");
    let only_clients: Option<usize> = arg("--clients").map(|c| c.parse().expect("--clients N"));
    let filtered = only_target.is_some() || only_workload.is_some() || only_clients.is_some();
    let (mut secs, rounds) = if quick { (1.5, 1) } else { (5.0, 2) };
    if let Some(s) = arg("--secs") {
        secs = s.parse().expect("--secs S");
    }
    println!(
        "# gregor serve vs Redis{}",
        if quick { " (--quick)" } else { "" }
    );
    println!("machine: {}", machine(true));
    println!(
        "{KEYS} keys, {VALUE_SIZE}-byte values, closed-loop clients {CLIENTS:?}, {secs} s per cell, best of {rounds} round(s)"
    );

    let dir = tempfile::tempdir().unwrap();
    // `--job FILE`: a configured key-value job instead of the ready-made one.
    let job = arg("--job");
    let mut serve_args = vec!["serve", "--http", "127.0.0.1:0"];
    serve_args.extend(job.as_deref());
    let state = dir.path().join("gregor-state");
    // `--partitions N`: the input's partitions (default 1, as `gregor serve` has it).
    let partitions_arg = arg("--partitions");
    let partitions: u32 = partitions_arg
        .as_deref()
        .map_or(1, |p| p.parse().expect("--partitions N"));
    if job.is_none() && partitions_arg.is_some() {
        serve_args.extend(["--partitions", partitions_arg.as_deref().unwrap_or("1")]);
    }
    println!("gregor serve: {partitions} input partition(s)");
    if job.is_some() {
        // As the ready-made job has it (the job file's input must be `kv-in`).
        gregor::log::LogDir::open(&state)
            .unwrap()
            .topic_or_create("kv-in", partitions, gregor::log::TopicConfig::default())
            .unwrap();
    }
    // `GREGOR_BENCH_LOG=gregor=debug`: the server's log level (its log is printed at the end
    // of a filtered run).
    let log = std::env::var("GREGOR_BENCH_LOG").ok();
    let env: Vec<(&str, &str)> = log.iter().map(|l| ("GREGOR_LOG", l.as_str())).collect();
    let gregor = Server::start(&state, &serve_args, &env);
    gregor.wait_ready();
    preload_gregor(&gregor);
    let gregor_addr: SocketAddr = gregor.base.trim_start_matches("http://").parse().unwrap();
    let always = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let default = Redis::start(&[]);
    always.preload();
    default.preload();
    let floor = FloorServer::start();
    let targets = [
        ("gregor", Proto::Http, gregor_addr),
        ("Redis AOF always", Proto::Resp, always.addr),
        ("Redis default", Proto::Resp, default.addr),
        ("HTTP floor", Proto::Http, floor.addr),
    ];

    let workloads = [Workload::Put, Workload::Get, Workload::Mixed];
    // best[w][c][t]
    let mut best = vec![vec![vec![Cell::default(); targets.len()]; CLIENTS.len()]; workloads.len()];
    for round in 0..rounds {
        for (wi, &w) in workloads.iter().enumerate() {
            for (ci, &c) in CLIENTS.iter().enumerate() {
                for (ti, &(name, proto, addr)) in targets.iter().enumerate() {
                    if only_target
                        .as_ref()
                        .is_some_and(|t| !name.starts_with(t.as_str()))
                        || only_workload
                            .as_ref()
                            .is_some_and(|o| !w.name().starts_with(o.as_str()))
                        || only_clients.is_some_and(|o| o != c)
                    {
                        continue;
                    }
                    let cell = measure(proto, addr, w, c, secs);
                    eprintln!(
                        "round {round}: {} x{c} {name}: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms",
                        w.name(),
                        cell.ops_per_s,
                        cell.p50_ms,
                        cell.p99_ms
                    );
                    if cell.ops_per_s > best[wi][ci][ti].ops_per_s {
                        best[wi][ci][ti] = cell;
                    }
                }
            }
        }
    }

    if filtered {
        if log.is_some() {
            eprintln!("{}", gregor.stop());
            return;
        }
        gregor.stop();
        return;
    }
    println!();
    println!(
        "| workload | clients | gregor ops/s | p50 ms | p99 ms | Redis AOF always ops/s | p50 ms | p99 ms | Redis default ops/s | p50 ms | p99 ms | HTTP floor ops/s | p50 ms | p99 ms | gregor / AOF always | gregor / default | gregor / HTTP floor |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (wi, &w) in workloads.iter().enumerate() {
        for (ci, &c) in CLIENTS.iter().enumerate() {
            let row = &best[wi][ci];
            let mut line = format!("| {} | {c} |", w.name());
            for cell in row {
                write!(
                    line,
                    " {:.0} | {:.3} | {:.3} |",
                    cell.ops_per_s, cell.p50_ms, cell.p99_ms
                )
                .unwrap();
            }
            write!(
                line,
                " {:.2}x | {:.2}x | {:.2}x |",
                row[0].ops_per_s / row[1].ops_per_s,
                row[0].ops_per_s / row[2].ops_per_s,
                row[0].ops_per_s / row[3].ops_per_s
            )
            .unwrap();
            println!("{line}");
        }
    }

    println!();
    println!("Goals (same generator, same run):");
    for (ci, &c) in CLIENTS.iter().enumerate() {
        let put = &best[0][ci];
        let get = &best[1][ci];
        let w = put[0].ops_per_s / put[1].ops_per_s;
        let r = get[0].ops_per_s / get[1].ops_per_s.max(get[2].ops_per_s);
        println!(
            "- {c} clients: durable writes {w:.2}x Redis AOF always (goal >= 1x: {}); reads {r:.2}x Redis GET (the faster config; goal >= 0.5x: {})",
            if w >= 1.0 { "met" } else { "NOT met" },
            if r >= 0.5 { "met" } else { "NOT met" }
        );
        println!(
            "  the HTTP floor (no work) at {c} clients: puts {:.2}x Redis AOF always, gets {:.2}x Redis GET; gregor keeps {:.2}x / {:.2}x of it",
            put[3].ops_per_s / put[1].ops_per_s,
            get[3].ops_per_s / get[1].ops_per_s.max(get[2].ops_per_s),
            put[0].ops_per_s / put[3].ops_per_s,
            get[0].ops_per_s / get[3].ops_per_s
        );
    }

    println!();
    println!(
        "Reference: redis-benchmark -P 1 -d {VALUE_SIZE} -r {KEYS} -t set,get (its own client):"
    );
    println!("| Redis | clients | SET ops/s | p50 ms | p99 ms | GET ops/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (ti, name, r) in [(1, "AOF always", &always), (2, "default", &default)] {
        for (ci, &c) in CLIENTS.iter().enumerate() {
            // About `secs` per test at the rates our generator measured.
            let n = |wi: usize| ((best[wi][ci][ti].ops_per_s * secs) as usize).max(1000);
            let set = redis_benchmark(r.addr, "set", c, n(0));
            let get = redis_benchmark(r.addr, "get", c, n(1));
            println!(
                "| {name} | {c} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} |",
                set.ops_per_s, set.p50_ms, set.p99_ms, get.ops_per_s, get.p50_ms, get.p99_ms
            );
        }
    }
    gregor.stop();
}
