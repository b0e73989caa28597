use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A Linux network namespace joined to this machine's by a veth pair: a process started in
/// it (see [`NetNs::command`]) reaches the host only through the pair, so taking the link
/// down ([`NetNs::cut`]) partitions it from every server on the host (its connections hang,
/// new ones fail) while it keeps running, and [`NetNs::heal`] brings the link back.
///
/// The host end has [`NetNs::host_addr`] (start servers there with `start_at`), the
/// namespace end [`NetNs::inner_addr`]; both in a /30 of 10.200.0.0/13 picked from the test's
/// process id, so tests running at once do not collide. Needs root (or `CAP_NET_ADMIN` and
/// `CAP_SYS_ADMIN`) and `ip` from iproute2: [`NetNs::create`] **panics** otherwise, naming
/// what failed. Dropping it deletes the namespace (and with it the pair).
pub struct NetNs {
    name: String,
    host_if: String,
    inner_if: String,
    host: Ipv4Addr,
    inner: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace and the pair, both ends up, loopback up in the namespace.
    pub fn create() -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names have at most 15 bytes.
        let tag = format!("{:x}{n}", pid & 0xfffff);
        // 10.200.0.0/13: the pid picks the second and third octets, the counter the /30.
        let [_, _, b, c] = pid.to_be_bytes();
        let base = Ipv4Addr::new(10, 200 + (b & 7), c, ((n % 64) * 4) as u8);
        let [o1, o2, o3, o4] = base.octets();
        let ns = NetNs {
            name: format!("gregor-{tag}"),
            host_if: format!("gh{tag}"),
            inner_if: format!("gn{tag}"),
            host: Ipv4Addr::new(o1, o2, o3, o4 + 1),
            inner: Ipv4Addr::new(o1, o2, o3, o4 + 2),
        };
        // Left over from an earlier run with the same pid: gone first.
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &ns.host_if])
            .output();
        ns.ip(&["netns", "add", &ns.name]);
        ns.ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
        ]);
        ns.ip(&["link", "set", &ns.inner_if, "netns", &ns.name]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host),
            "dev",
            &ns.host_if,
        ]);
        ns.ip(&["link", "set", &ns.host_if, "up"]);
        ns.inside(&[
            "addr",
            "add",
            &format!("{}/30", ns.inner),
            "dev",
            &ns.inner_if,
        ]);
        ns.inside(&["link", "set", &ns.inner_if, "up"]);
        ns.inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end's address: servers the namespace must reach listen here.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host
    }

    /// The namespace end's address: what the host reaches a server in the namespace on.
    pub fn inner_addr(&self) -> Ipv4Addr {
        self.inner
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`; the
    /// process keeps the pid the returned child reports, as `ip` execs the program).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Takes the namespace's end of the link down: the namespace is cut off from the host.
    pub fn cut(&self) {
        self.inside(&["link", "set", &self.inner_if, "down"]);
    }

    /// Brings the link back up.
    pub fn heal(&self) {
        self.inside(&["link", "set", &self.inner_if, "up"]);
    }

    fn inside(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        self.ip(&all);
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
            panic!("testkit: cannot run `ip` (iproute2) for a network namespace: {e}")
        });
        assert!(
            out.status.success(),
            "testkit: `ip {}` failed ({}): {} (network namespaces need root, or \
             CAP_NET_ADMIN and CAP_SYS_ADMIN)",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
