//! A real `securechat-server serve --config` process on a directory the
//! test prepared (config, key table, TLS files), with the default model:
//! what a pod runs, signals and exit included.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use securechat_server::inference;

/// The process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("a bound address").port()
}

/// The default model; missing, the test fails saying what to run.
pub fn model() -> PathBuf {
    let path = inference::default_model_path().expect("HOME is set");
    assert!(
        path.exists(),
        "{} is missing: run `make model` (scripts/fetch-model.sh)",
        path.display()
    );
    path
}

impl ServerProcess {
    /// Starts `binary` (a test's `env!("CARGO_BIN_EXE_securechat-server")`)
    /// on `dir/config.yaml`, logging to `dir/<name>.log`.
    pub fn spawn(binary: &Path, dir: &Path, name: &str) -> Self {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--web-addr")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--model")
            .arg(model())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating the server's log"))
            .spawn()
            .expect("starting securechat-server");
        Self { child, port, log }
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Waits for `/healthz`; a process that exits or never answers fails
    /// the test with the end of its log.
    pub async fn wait_ready(&mut self, client: &reqwest::Client) {
        // Loading the model in a debug build on a busy machine takes a
        // while; the deadline only bounds a process that never comes up.
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the server exited at start ({status}):\n{}",
                    self.log_tail()
                );
            }
            if let Ok(resp) = client.get(format!("{}/healthz", self.base())).send().await
                && resp.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the server never answered /healthz:\n{}", self.log_tail());
    }

    /// SIGTERM, as the kubelet stops a container.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits for the process to exit (at most `limit`).
    pub async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server still runs {limit:?} after SIGTERM:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
