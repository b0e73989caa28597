//! Without the distributions, starting a broker panics saying how to install them (its own
//! test binary: it changes the process environment).

use gregor_testkit::{Kafka09, MotoS3, Tansu, ZooKeeper};

fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("must panic");
    err.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn missing_distributions_say_run_ci_brokers() {
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe { std::env::set_var("GREGOR_BROKERS_DIR", empty.path()) };
    for msg in [
        panic_message(|| drop(ZooKeeper::start())),
        panic_message(|| drop(Kafka09::start())),
        panic_message(|| drop(Tansu::start())),
        panic_message(|| drop(Tansu::start_s3())),
        panic_message(|| drop(MotoS3::start())),
    ] {
        assert!(msg.contains("run .ci/brokers"), "{msg}");
        assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    }
}
