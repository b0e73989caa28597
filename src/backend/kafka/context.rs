//! What librdkafka says on the side (its log lines and "global" errors), as `tracing` events
//! under the target `librdkafka`.
//!
//! rdkafka's default context logs every error event at ERROR, and librdkafka raises one per
//! reconnection attempt while a broker is down (hundreds over a 30 s start-up wait, all at
//! once when the client is next polled) and one per end-of-partition event, which is not an
//! error at all (the readers handle it). Here the end of a partition is not logged, and a
//! message that repeats (digits aside) is logged once, then at most once per
//! [`REPEAT_EVERY`] with the number of repeats held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};

/// A repeated message is logged again at most this often.
const REPEAT_EVERY: Duration = Duration::from_secs(10);
/// Distinct messages remembered before old ones are forgotten.
const REMEMBERED: usize = 256;

/// The context of gregor's Kafka clients (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct KafkaContext;

/// A consumer with [`KafkaContext`].
pub(super) type Consumer = BaseConsumer<KafkaContext>;
/// A producer with [`KafkaContext`] (no delivery callbacks).
pub(super) type Producer = BaseProducer<KafkaContext>;

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(&error, reason);
    }
}

impl ConsumerContext for KafkaContext {}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// A librdkafka log line (for contexts of their own, like the sinks').
pub(super) fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    let Some(held_back) = admit(&format!("{fac} {message}")) else {
        return;
    };
    let more = repeats(held_back);
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "{fac}: {message}{more}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}{more}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{fac}: {message}{more}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}{more}"),
    }
}

/// A librdkafka global error (for contexts of their own, like the sinks').
pub(super) fn error(error: &KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        || matches!(error, KafkaError::PartitionEOF(_))
    {
        return; // the end of a partition: the readers' business, not an error
    }
    if let Some(held_back) = admit(&format!("{error} {reason}")) {
        tracing::error!(target: "librdkafka", "{error}: {reason}{}", repeats(held_back));
    }
}

fn repeats(held_back: u64) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(" ({held_back} more like it in the last {REPEAT_EVERY:?})")
    }
}

struct Seen {
    last_logged: Instant,
    held_back: u64,
}

static SEEN: Mutex<Option<HashMap<String, Seen>>> = Mutex::new(None);

/// Whether a message with this text (digits aside) is to be logged now; `Some(n)` with the
/// number of repeats held back since it was last logged.
fn admit(text: &str) -> Option<u64> {
    let key = shape(text);
    let now = Instant::now();
    let mut guard = crate::sync::lock(&SEEN);
    let seen = guard.get_or_insert_with(HashMap::new);
    if let Some(s) = seen.get_mut(&key) {
        if now.duration_since(s.last_logged) < REPEAT_EVERY {
            s.held_back += 1;
            return None;
        }
        let held_back = std::mem::take(&mut s.held_back);
        s.last_logged = now;
        return Some(held_back);
    }
    if seen.len() >= REMEMBERED {
        seen.retain(|_, s| now.duration_since(s.last_logged) < REPEAT_EVERY);
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
    }
    seen.insert(
        key,
        Seen {
            last_logged: now,
            held_back: 0,
        },
    );
    Some(0)
}

/// `text` with every run of digits replaced by `#`: "after 0ms, 581 identical error(s)" and
/// "after 1ms, 3 identical error(s)" are one message.
fn shape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_differing_in_digits_have_one_shape() {
        assert_eq!(
            shape("127.0.0.1:2/bootstrap: failed (after 0ms, 581 identical error(s) suppressed)"),
            shape("127.0.0.1:2/bootstrap: failed (after 12ms, 3 identical error(s) suppressed)")
        );
        assert_ne!(shape("broker down"), shape("broker up"));
    }

    #[test]
    fn a_repeated_message_is_held_back_and_counted() {
        let text = "a message only this test uses 42";
        assert_eq!(admit(text), Some(0));
        assert_eq!(admit("a message only this test uses 43"), None);
        assert_eq!(admit(text), None);
        // Let the window pass by moving the entry's time back.
        {
            let mut guard = crate::sync::lock(&SEEN);
            let s = guard.as_mut().unwrap().get_mut(&shape(text)).unwrap();
            s.last_logged -= REPEAT_EVERY;
        }
        assert_eq!(admit(text), Some(2));
        assert_eq!(admit(text), None);
    }
}
