//! A localhost pair of `ftvm` processes for the process tests: free addresses, configs, the nodes' logs and
//! status, waits under a guard. The nodes run the model guest, so the tests using it need no KVM.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ft_host::pair::Scratch;

pub const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");
/// How long a wait for an event may take before the test fails as hung (not a speed check).
pub const GUARD: Duration = Duration::from_secs(30);
pub const KEY: &str = "6b6579206f66207468652070616972206f662074686973207465737420212121";

/// Ports come from `ft_host::pair`, below the ephemeral range: a port from `bind(0)` released here is soon a
/// source port of somebody's `connect`, and the node that wanted it fails to start (CI, `deploy.rs`).
pub fn free_tcp() -> SocketAddr {
    ft_host::pair::free_tcp().expect("a free local port")
}

pub fn free_udp() -> SocketAddr {
    ft_host::pair::free_udp().expect("a free local port")
}

pub fn unique() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The addresses and files of one localhost pair, and its processes: killed, and the directory removed, on drop
/// (kept with FTVM_KEEP_SCRATCH).
pub struct Pair {
    pub scratch: Scratch,
    pub dir: PathBuf,
    pub storage: PathBuf,
    /// Where the backup listens; the primary connects to `channel_front` (a proxy's, or the same).
    pub channel: SocketAddr,
    pub channel_front: SocketAddr,
    pub hb_a: SocketAddr,
    pub hb_b: SocketAddr,
    pub service: SocketAddr,
    pub status_a: SocketAddr,
    pub status_b: SocketAddr,
    /// Where each slot's node takes joiners once it is live without a backup (`join_listen`).
    pub join_a: SocketAddr,
    pub join_b: SocketAddr,
    /// Extra `key = value` lines of each node's config (override the defaults below).
    pub extra_a: String,
    pub extra_b: String,
    /// Keys left out of both configs.
    pub without: Vec<&'static str>,
}

impl Pair {
    pub fn new(tag: &str) -> Pair {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{tag}-{}-{}", std::process::id(), unique()));
        let scratch = Scratch::at(dir.clone()).expect("a scratch directory");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let channel = free_tcp();
        Pair {
            scratch,
            dir,
            storage,
            channel,
            channel_front: channel,
            hb_a: free_udp(),
            hb_b: free_udp(),
            service: free_udp(),
            status_a: free_tcp(),
            status_b: free_tcp(),
            join_a: free_tcp(),
            join_b: free_tcp(),
            extra_a: String::new(),
            extra_b: String::new(),
            without: Vec::new(),
        }
    }

    /// The config of node `a` (primary) or `b` (backup), or of a node that takes the place of one of them (`a2`
    /// has the addresses of `a`: its slot is the name's first letter).
    pub fn config(&self, node: &str) -> String {
        let slot = if node.starts_with('a') { "a" } else { "b" };
        let mut settings = vec![
            ("name", format!("\"{node}\"")),
            ("guest", "\"kv\"".into()),
            ("machine", "\"model\"".into()),
            ("pair_id", "42".into()),
            ("service", format!("\"{}\"", self.service)),
            ("disk", format!("\"{}\"", self.storage.join("disk.img").display())),
            ("arbiter", format!("\"{}\"", self.storage.join("arbiter").display())),
            ("key_hex", format!("\"{KEY}\"")),
            ("heartbeat_interval_ms", "20".into()),
            ("failure_timeout_ms", "150".into()),
            ("startup_timeout_ms", "3000".into()),
            ("arbiter_retry_ms", "50".into()),
            ("storage_timeout_ms", "500".into()),
        ];
        if slot == "a" {
            settings.push(("join_listen", format!("\"{}\"", self.join_a)));
            settings.push(("join_peers", format!("[\"{}\"]", self.join_b)));
            settings.push(("channel_peer", format!("\"{}\"", self.channel_front)));
            settings.push(("heartbeat_listen", format!("\"{}\"", self.hb_a)));
            settings.push(("heartbeat_peer", format!("\"{}\"", self.hb_b)));
            settings.push(("status", format!("\"{}\"", self.status_a)));
        } else {
            settings.push(("join_listen", format!("\"{}\"", self.join_b)));
            settings.push(("join_peers", format!("[\"{}\"]", self.join_a)));
            settings.push(("channel_listen", format!("\"{}\"", self.channel)));
            settings.push(("heartbeat_listen", format!("\"{}\"", self.hb_b)));
            settings.push(("heartbeat_peer", format!("\"{}\"", self.hb_a)));
            settings.push(("status", format!("\"{}\"", self.status_b)));
        }
        let extra = if slot == "a" { &self.extra_a } else { &self.extra_b };
        let overridden: Vec<&str> = extra.lines().filter_map(|line| line.split('=').next()).map(str::trim).collect();
        let mut text: String = settings
            .iter()
            .filter(|(key, _)| !overridden.contains(key) && !self.without.contains(key))
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        text.push_str(extra);
        text
    }

    pub fn config_path(&self, node: &str) -> PathBuf {
        let path = self.dir.join(format!("{node}.toml"));
        std::fs::write(&path, self.config(node)).unwrap();
        path
    }

    pub fn start(&mut self, node: &str) {
        let role = if node == "a" { "primary" } else { "backup" };
        self.start_as(node, &[role]);
    }

    /// Starts `node` (in the slot of its first letter) as `ftvm backup --join`: it asks the other slot's node.
    pub fn start_joiner(&mut self, node: &str) {
        self.start_as(node, &["backup", "--join"]);
    }

    fn start_as(&mut self, node: &str, role: &[&str]) {
        let config = self.config_path(node);
        let log = std::fs::File::create(self.dir.join(format!("{node}.log"))).unwrap();
        let child = Command::new(FTVM)
            .args(role)
            .arg("--config")
            .arg(config)
            .env("FTVM_LOG", "info")
            .env_remove("FTVM_KVM_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ftvm starts");
        self.scratch.adopt(node, child);
    }

    pub fn kill(&mut self, node: &str) {
        self.scratch.kill(node);
    }

    pub fn signal(&self, node: &str, signal: libc::c_int) {
        self.scratch.signal(node, signal);
    }

    /// The exit status of `node` once it has exited, waiting for it (under the guard).
    pub fn exit_status(&mut self, node: &str) -> std::process::ExitStatus {
        match self.scratch.wait_exit(node, GUARD) {
            Some(status) => status,
            None => panic!("{node} did not exit\n{}", self.logs()),
        }
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Every node's log (a, b, and the nodes that took their places).
    pub fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| {
                        entry.ok()?.file_name().into_string().ok()?.strip_suffix(".log").map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.iter().map(|name| format!("--- {name}.log\n{}\n", self.log(name))).collect()
    }

    pub fn status(&self, node: &str) -> Option<serde_json::Value> {
        let addr = if node.starts_with('a') { self.status_a } else { self.status_b };
        ft_host::pair::status_json(Some(addr))
    }

    /// Waits for `condition` (under the guard), failing with both logs if it never holds.
    pub fn wait(&self, what: &str, mut condition: impl FnMut(&Pair) -> bool) {
        let start = Instant::now();
        while start.elapsed() < GUARD {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never happened: {what}\n{}", self.logs());
    }

    pub fn wait_protected(&self) {
        self.wait("the pair is up and protected", |pair| {
            pair.status("a").is_some_and(|s| s["channel_up"] == true && s["service_bound"] == true)
                || pair.log("a").contains("running without a backup")
        });
        assert!(
            !self.log("a").contains("running without a backup"),
            "the primary came up unprotected\n{}",
            self.logs()
        );
    }
}
