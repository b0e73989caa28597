//! Just enough of the Kafka protocol to tell whether a broker is up and a topic has leaders:
//! a Metadata v0 request, which every broker from Kafka 0.8 to today (and tansu) answers. It
//! keeps the harness free of client libraries, so it cannot mask a client's bug.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A broker's answer to a Metadata v0 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// `(node id, host, port)` of every live broker.
    pub brokers: Vec<(i32, String, i32)>,
    /// The topics asked for (all topics when none were named).
    pub topics: Vec<TopicMetadata>,
}

/// One topic in a [`Metadata`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Kafka error code; 0 = none, 3 = unknown topic, 5 = leader not available.
    pub error: i16,
    /// The topic's name.
    pub name: String,
    /// Its partitions.
    pub partitions: Vec<PartitionMetadata>,
}

/// One partition in a [`TopicMetadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Kafka error code; 0 = none.
    pub error: i16,
    /// The partition number.
    pub id: i32,
    /// The leader's node id, -1 if none.
    pub leader: i32,
}

impl TopicMetadata {
    /// No error on the topic and every partition has a leader.
    pub fn is_led(&self) -> bool {
        self.error == 0
            && !self.partitions.is_empty()
            && self
                .partitions
                .iter()
                .all(|p| p.error == 0 && p.leader >= 0)
    }
}

/// Sends a Metadata v0 request for `topics` (all topics if empty) to `addr`.
pub fn metadata(addr: SocketAddr, topics: &[&str], timeout: Duration) -> io::Result<Metadata> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;

    let client_id = b"gregor-testkit";
    let mut req = Vec::new();
    req.extend_from_slice(&3i16.to_be_bytes()); // api key: Metadata
    req.extend_from_slice(&0i16.to_be_bytes()); // api version 0
    req.extend_from_slice(&1i32.to_be_bytes()); // correlation id
    req.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    req.extend_from_slice(client_id);
    req.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        req.extend_from_slice(&(t.len() as i16).to_be_bytes());
        req.extend_from_slice(t.as_bytes());
    }
    let mut framed = (req.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&req);
    stream.write_all(&framed)?;

    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len);
    if !(4..=64 << 20).contains(&len) {
        return Err(bad("response length"));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    parse(&body)
}

fn parse(body: &[u8]) -> io::Result<Metadata> {
    let mut r = Reader(body);
    if r.i32()? != 1 {
        return Err(bad("correlation id"));
    }
    let mut brokers = Vec::new();
    for _ in 0..r.count()? {
        brokers.push((r.i32()?, r.string()?, r.i32()?));
    }
    let mut topics = Vec::new();
    for _ in 0..r.count()? {
        let error = r.i16()?;
        let name = r.string()?;
        let mut partitions = Vec::new();
        for _ in 0..r.count()? {
            let error = r.i16()?;
            let id = r.i32()?;
            let leader = r.i32()?;
            for _ in 0..r.count()? {
                r.i32()?; // replicas
            }
            for _ in 0..r.count()? {
                r.i32()?; // isr
            }
            partitions.push(PartitionMetadata { error, id, leader });
        }
        topics.push(TopicMetadata {
            error,
            name,
            partitions,
        });
    }
    Ok(Metadata { brokers, topics })
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad Metadata v0 response: {what}"),
    )
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        if self.0.len() < N {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("N bytes"))
    }
    fn i16(&mut self) -> io::Result<i16> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> io::Result<i32> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn count(&mut self) -> io::Result<usize> {
        let n = self.i32()?;
        if !(0..=1_000_000).contains(&n) {
            return Err(bad("array length"));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(String::new());
        }
        let n = n as usize;
        if self.0.len() < n {
            return Err(bad("truncated string"));
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_metadata_v0_response() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes()); // one broker
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&9i16.to_be_bytes());
        b.extend_from_slice(b"127.0.0.1");
        b.extend_from_slice(&9092i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes()); // one topic
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(b"t");
        b.extend_from_slice(&1i32.to_be_bytes()); // one partition
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        let m = parse(&b).unwrap();
        assert_eq!(m.brokers, vec![(7, "127.0.0.1".to_string(), 9092)]);
        assert_eq!(m.topics.len(), 1);
        assert!(m.topics[0].is_led());
        assert!(parse(&b[..b.len() - 1]).is_err());
    }
}
