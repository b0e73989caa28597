//! The topic role registry on real brokers (issue 8 and issue 11 #3 on Kafka): the
//! compacted topic `__gregor-roles`, arbitrated by the log's order. A second job taking
//! another job's changelog is refused naming both jobs; a released job frees its topics;
//! jobs claiming conflicting roles at the same moment never both win. On Kafka 0.9 (no
//! admin API) the topic is created by hand like the others; without it roles are not
//! checked (a warning says how to create it).

use std::sync::{Arc, Barrier};

use gregor::backend::kafka::roles::ROLES_TOPIC;
use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::backend::roles::{Role, RoleClaim};
use gregor::backend::{Backend, BackendError};
use gregor_testkit::{Kafka09, Tansu};

fn backend(bootstrap: &str, client: &[(&str, &str)]) -> KafkaBackend {
    let mut s = KafkaSettings::new("roles-test", bootstrap);
    for (k, v) in client {
        s.client.insert(k.to_string(), v.to_string());
    }
    KafkaBackend::connect_without_checkpoints(s).unwrap()
}

fn changelog(topic: &str) -> Vec<RoleClaim> {
    vec![RoleClaim::new(topic, Role::Changelog { store: "s".into() })]
}

fn refused(r: Result<(), BackendError>, topic: &str, job: &str, holder: &str) {
    let e = r.expect_err("the claim must be refused").to_string();
    assert!(
        e.contains(&format!("`{topic}`"))
            && e.contains(&format!("job `{job}`"))
            && e.contains(&format!("job `{holder}`")),
        "{e}"
    );
}

fn check_registry(b: &KafkaBackend) {
    // A first claim, a conflicting second one, compatible roles, a release.
    b.claim_roles("a", &changelog("a-changelog")).unwrap();
    refused(
        b.claim_roles("b", &changelog("a-changelog")),
        "a-changelog",
        "b",
        "a",
    );
    let read_a_output = vec![
        RoleClaim::new("a-out", Role::Input),
        RoleClaim::new("b-changelog", Role::Changelog { store: "s".into() }),
    ];
    b.claim_roles(
        "a",
        &[
            changelog("a-changelog"),
            vec![RoleClaim::new("a-out", Role::Output)],
        ]
        .concat(),
    )
    .unwrap();
    b.claim_roles("b", &read_a_output).unwrap();
    let roles = b.roles().unwrap();
    assert_eq!(roles.jobs.len(), 2, "{roles:?}");
    // Claiming the same again writes nothing new and succeeds.
    b.claim_roles("b", &read_a_output).unwrap();
    b.release_roles("a").unwrap();
    b.claim_roles("c", &changelog("a-changelog")).unwrap();
    assert!(!b.roles().unwrap().jobs.contains_key("a"));

    // Jobs racing for one changelog: exactly one wins each round, and the registry every
    // reader replays names the winner.
    for round in 0..4 {
        let topic = format!("raced-{round}");
        let barrier = Arc::new(Barrier::new(3));
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (b, barrier, topic) = (b.clone(), barrier.clone(), topic.clone());
                std::thread::spawn(move || {
                    let job = format!("racer-{round}-{i}");
                    barrier.wait();
                    (job.clone(), b.claim_roles(&job, &changelog(&topic)).is_ok())
                })
            })
            .collect();
        let results: Vec<(String, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<&String> = results.iter().filter(|r| r.1).map(|r| &r.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let holders: Vec<String> = b
            .roles()
            .unwrap()
            .holders(&topic)
            .map(|(j, _)| j.to_string())
            .collect();
        assert_eq!(holders, vec![winners[0].clone()], "round {round}");
    }
}

#[test]
fn role_registry_on_kafka09() {
    let mut kafka = Kafka09::start();
    let b = backend(&kafka.bootstrap(), &Kafka09::client_config());
    // Without the topic (no admin API to create it): not checked, and nothing recorded.
    b.claim_roles("a", &changelog("t")).unwrap();
    b.claim_roles("b", &changelog("t")).unwrap();
    assert!(b.roles().unwrap().jobs.is_empty());
    kafka.create_topic(ROLES_TOPIC, 1, true);
    check_registry(&b);
}

#[test]
fn role_registry_on_tansu() {
    let tansu = Tansu::start();
    // The admin API: gregor creates the roles topic itself.
    check_registry(&backend(&tansu.bootstrap(), &Tansu::client_config()));
}
