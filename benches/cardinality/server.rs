//! `keymeter serve` as a child process: started on an ephemeral port,
//! waited for until `/readyz` answers 200, measured through `/proc`, and
//! stopped with SIGTERM (or killed when dropped, so that a panic leaves no
//! server behind). A guard kills it when the machine runs out of memory,
//! so that a server that outgrows the machine fails alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How a server is started: the binary's flags, the same for every start of
/// one configuration.
pub struct Launch {
    pub data_dir: PathBuf,
    pub config_file: PathBuf,
    /// `--store-cache-mb`, when this binary has the flag.
    pub store_cache_mb: Option<u64>,
    /// Where each start's stdout and stderr go.
    pub log_dir: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keymeter")
}

/// Whether `keymeter serve --help` lists `flag`.
pub fn serve_has_flag(flag: &str) -> bool {
    let out = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .expect("run keymeter serve --help");
    String::from_utf8_lossy(&out.stdout).contains(flag)
}

/// Writes the configuration file every command of the bench reads: room in
/// the dedup index for every event the bench sends, all of it for the one
/// admin key.
pub fn write_config(path: &Path, dedup_keys_max: usize) {
    let text = format!("dedup_keys_max = {dedup_keys_max}\ndedup_tenant_share_pct = 100\n");
    std::fs::write(path, text).expect("write bench config");
}

pub struct Server {
    child: Option<Child>,
    guard: Option<MemoryGuard>,
    pub addr: SocketAddr,
    /// From spawn until `/readyz` answered 200.
    pub started_in: Duration,
}

impl Server {
    /// Starts `keymeter serve` and waits until it is ready; `name` labels
    /// its output files.
    pub fn start(launch: &Launch, name: &str) -> Server {
        let stderr = std::fs::File::create(launch.log_dir.join(format!("{name}.stderr")))
            .expect("server stderr file");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&launch.config_file)
            .arg("--data-dir")
            .arg(&launch.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--bootstrap-admin-key", crate::common::ADMIN_KEY])
            .env_remove("KEYMETER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(mb) = launch.store_cache_mb {
            cmd.args(["--store-cache-mb", &mb.to_string()]);
        }
        let spawned = Instant::now();
        let mut child = cmd.spawn().expect("spawn keymeter serve");
        let stdout = child.stdout.take().unwrap();
        let stdout_file = launch.log_dir.join(format!("{name}.stdout"));
        let guard = MemoryGuard::watch(child.id());
        let mut server = Server {
            child: Some(child),
            guard: Some(guard),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            started_in: Duration::ZERO,
        };
        server.addr = server.announced(stdout, stdout_file, launch, name);
        server.wait_ready(launch, name);
        server.started_in = spawned.elapsed();
        server
    }

    /// The address from `keymeter listening on http://ADDR`; the rest of
    /// stdout is copied to `file`.
    fn announced(
        &mut self,
        stdout: std::process::ChildStdout,
        file: PathBuf,
        launch: &Launch,
        name: &str,
    ) -> SocketAddr {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = std::fs::File::create(file).expect("server stdout file");
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("keymeter listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let _ = writeln!(out, "{line}");
            }
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => return addr.parse().expect("announced address"),
                Err(mpsc::RecvTimeoutError::Timeout) => self.check_alive(launch, name),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.check_alive(launch, name);
                    panic!("keymeter serve closed stdout without listening");
                }
            }
        }
    }

    fn wait_ready(&mut self, launch: &Launch, name: &str) {
        while !ready(self.addr) {
            self.check_alive(launch, name);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Panics with the end of the server's log if it has exited.
    fn check_alive(&mut self, launch: &Launch, name: &str) {
        let child = self.child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(launch.log_dir.join(format!("{name}.stderr")))
                .unwrap_or_default();
            let tail: String = log
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!("keymeter serve exited ({status}) before it was ready:\n{tail}");
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Resident bytes of the server process now (`VmRSS`).
    pub fn rss(&self) -> u64 {
        proc_rss(&format!("/proc/{}/status", self.pid()))
    }

    /// The most the server process has had resident (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        proc_status_bytes(&format!("/proc/{}/status", self.pid()), "VmHWM:")
    }

    /// The server's resident bytes when the memory guard killed it.
    pub fn killed_at_rss(&self) -> Option<u64> {
        self.guard.as_ref().and_then(MemoryGuard::killed_at_rss)
    }

    /// SIGTERM, then waits for a clean exit; returns how long it took.
    pub fn stop(mut self) -> Duration {
        self.guard.take();
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM keymeter");
        let deadline = t + Duration::from_secs(300);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "keymeter serve exited with {status}");
                return t.elapsed();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keymeter serve did not stop within 300 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stopped before the child is reaped: it never signals a reused pid.
        self.guard.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The guard kills the server when the machine has less memory available
/// than a quarter of its total (2 GiB at least): other work on the machine
/// keeps room.
fn mem_available_min() -> u64 {
    (meminfo("MemTotal:").unwrap_or(0) / 4).max(2 << 30)
}

/// Watches the machine's available memory while a server runs.
struct MemoryGuard {
    stop: Arc<AtomicBool>,
    /// The server's resident bytes when it was killed; 0 while it was not.
    killed_at: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl MemoryGuard {
    fn watch(pid: u32) -> MemoryGuard {
        let stop = Arc::new(AtomicBool::new(false));
        let killed_at = Arc::new(AtomicU64::new(0));
        let (stop2, killed2) = (stop.clone(), killed_at.clone());
        let min = mem_available_min();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if meminfo("MemAvailable:").is_some_and(|m| m < min) {
                    let rss = proc_rss(&format!("/proc/{pid}/status"));
                    eprintln!(
                        "memory guard: the machine has under {} MiB available; killing keymeter serve \
                         (pid {pid}, {:.1} GiB resident)",
                        min >> 20,
                        rss as f64 / (1u64 << 30) as f64
                    );
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    killed2.store(rss.max(1), Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        MemoryGuard {
            stop,
            killed_at,
            thread: Some(thread),
        }
    }

    fn killed_at_rss(&self) -> Option<u64> {
        Some(self.killed_at.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A field of `/proc/meminfo` (`MemTotal:`, `MemAvailable:`), in bytes.
fn meminfo(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// `VmRSS` of a `/proc/<pid>/status` file, in bytes.
pub fn proc_rss(status_path: &str) -> u64 {
    proc_status_bytes(status_path, "VmRSS:")
}

/// A `kB` field of a `/proc/<pid>/status` file, in bytes (0 if absent).
fn proc_status_bytes(status_path: &str, field: &str) -> u64 {
    std::fs::read_to_string(status_path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Whether `GET /readyz` answers 200 (plain HTTP/1.0 over a fresh
/// connection: no client runtime needed while waiting).
fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}
