//! Coordination of a job's processes: which process runs which task actively, and which
//! keep standby copies of its state. For now the pure decision logic only ([`model`]); the
//! coordinator seam the container runs under, and its ZooKeeper implementation, come next
//! (issue 9).

pub mod model;
