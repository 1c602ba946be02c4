//! A real shared store for tests: `redis-server` (installed by
//! `scripts/valkey.sh` into ~/.cache/securechat/bin) on a free loopback
//! port, with no persistence, optionally with a password and TLS. Each test
//! starts its own instance; killing and restarting it on the same port is
//! how the tests take the store away and bring it back.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// `requirepass`: the default user's password.
    pub password: Option<String>,
    /// Serve TLS only, with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running `redis-server`, killed when dropped.
pub struct StoreProcess {
    child: Option<Child>,
    pub port: u16,
    options: StoreOptions,
    dir: tempfile::TempDir,
}

/// The installed binary; a missing one fails the test with what to run.
pub fn binary() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let path = Path::new(&home).join(".cache/securechat/bin/redis-server");
    assert!(
        path.exists(),
        "{} is missing: run scripts/valkey.sh (installs redis-server into ~/.cache/securechat)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("a bound address").port()
}

impl StoreProcess {
    /// A plain store (no password, no TLS).
    pub fn start() -> Self {
        Self::start_with(StoreOptions::default())
    }

    pub fn start_with(options: StoreOptions) -> Self {
        let mut store = Self {
            child: None,
            port: free_port(),
            options,
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        store.spawn();
        store
    }

    /// `127.0.0.1:<port>`, for a plain store.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `localhost:<port>`, for TLS: the name the dev certificate carries
    /// and the client verifies.
    pub fn tls_address(&self) -> String {
        format!("localhost:{}", self.port)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new(binary());
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path());
        match &self.options.tls {
            Some((cert, key)) => {
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                command.args(["--port", &port]);
            }
        }
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on {} in 20 s", self.port);
    }

    /// Kills the store at once (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command over plain TCP (not for a TLS store) and returns
    /// its reply line, e.g. `HGET key l` -> the bulk string's value.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting");
        let mut request = String::new();
        let mut all: Vec<&str> = Vec::new();
        if let Some(password) = &self.options.password {
            all.extend(["AUTH", password.as_str()]);
            write_command(&mut request, &all);
            all.clear();
        }
        all.extend(args);
        write_command(&mut request, &all);
        stream.write_all(request.as_bytes()).expect("writing");
        let mut reader = BufReader::new(stream);
        if self.options.password.is_some() {
            let _ = read_reply(&mut reader);
        }
        read_reply(&mut reader)
    }
}

fn write_command(out: &mut String, args: &[&str]) {
    out.push_str(&format!("*{}\r\n", args.len()));
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
}

/// A simple string, integer or bulk string reply (`None` for nil); an
/// error reply panics.
fn read_reply(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading a reply");
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b'+' | b':') => Some(line[1..].to_string()),
        Some(b'$') if line == "$-1" => None,
        Some(b'$') => {
            let mut value = String::new();
            reader.read_line(&mut value).expect("reading a bulk reply");
            Some(value.trim_end().to_string())
        }
        _ => panic!("store replied {line:?}"),
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
