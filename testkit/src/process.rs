//! Child processes for servers: spawned in their own process group, killed with their parent,
//! logs to a file, and waited on with a deadline.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Every server is spawned from one thread that lives as long as the test process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process; a
/// server spawned straight from a test's thread would be killed when that test ends even if a
/// `static` still owns it. Spawning from a thread that never exits ties each server's life to
/// the test process itself: if the test binary dies (panic = abort, SIGKILL, a timeout), the
/// kernel kills its servers, so no JVM is ever left behind.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the testkit spawner thread");
        Mutex::new(tx)
    })
}

/// A running server process: its own process group, stdout and stderr appended to `log`.
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `command` with stdin from /dev/null and stdout + stderr appended to `log`, in a
    /// new process group, killed (SIGKILL) if the test process dies. Panics if it cannot be
    /// spawned at all (e.g. `java` missing).
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> Proc {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("testkit: cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("testkit: dup log file");
        let parent = std::process::id() as libc::pid_t;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure only makes async-signal-safe system calls (prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died between fork and prctl: do not outlive it.
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let program = format!("{:?}", command.get_program());
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((command, tx))
            .expect("testkit spawner thread is gone");
        let child = rx
            .recv()
            .expect("testkit spawner thread is gone")
            .unwrap_or_else(|e| panic!("testkit: cannot start {name} ({program}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            reaped: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// SIGKILL to the whole process group, then reap the process.
    pub(crate) fn kill9(&mut self) {
        if self.exited().is_none() {
            // SAFETY: plain kill(2); the group id is our child's pid, which we have not reaped
            // yet, so it cannot have been reused.
            unsafe {
                libc::kill(-(self.pid() as libc::pid_t), libc::SIGKILL);
            }
            self.reaped = self.child.wait().ok();
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    pub(crate) fn terminate(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: as in kill9.
        unsafe {
            libc::kill(-(self.pid() as libc::pid_t), libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    /// The last `lines` lines of the log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Waits until `probe()` says [`Probe::Ready`], polling every 100 ms. `Err` if the probe
    /// saw a fatal error, the process exited first or `timeout` passed; the caller decides
    /// whether to retry or to [`Proc::fail`].
    pub(crate) fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> Probe,
    ) -> Result<Duration, NotReady> {
        let start = Instant::now();
        loop {
            match probe() {
                Probe::Ready => return Ok(start.elapsed()),
                Probe::Failed(why) => return Err(NotReady::Failed(why)),
                Probe::NotYet => {}
            }
            if let Some(status) = self.exited() {
                return Err(NotReady::Exited(status));
            }
            if start.elapsed() > timeout {
                return Err(NotReady::TimedOut(timeout));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process and panics with what went wrong and the tail of its log.
    pub(crate) fn fail(&mut self, why: &str) -> ! {
        self.kill9();
        panic!(
            "testkit: {} {why}\n--- last lines of {} ---\n{}\n--- end of log ---",
            self.name,
            self.log.display(),
            self.log_tail(60)
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a readiness probe saw.
pub(crate) enum Probe {
    Ready,
    NotYet,
    /// The server logged a fatal start-up error (it may hang instead of exiting).
    Failed(String),
}

/// Why a server did not become ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    Exited(ExitStatus),
    Failed(String),
    TimedOut(Duration),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "exited during start-up ({status})"),
            NotReady::Failed(why) => write!(f, "failed during start-up: {why}"),
            NotReady::TimedOut(t) => write!(f, "did not become ready within {t:?}"),
        }
    }
}

/// The last `lines` lines of the file at `path` (at most its last 256 KiB are read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
