//! A real SMTP server for the email tests of TLS and AUTH: `smtp_sink.py` on
//! aiosmtpd, the distribution's package (`python3-aiosmtpd`, which `.ci/run`
//! installs), run with the first `python3` that has it. The plain tests use
//! the simulator's SMTP sink instead.
//!
//! TLS certificates (a test CA and a server certificate for 127.0.0.1) are
//! made with `openssl`. The server is killed when the [`SmtpSink`] is
//! dropped; it also exits when the test process closes its standard input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How the sink protects its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkTls {
    None,
    StartTls,
    Implicit,
}

/// A running SMTP server that keeps what it receives.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    out: tempfile::TempDir,
    /// The CA that signed the server certificate (TLS sinks only).
    pub ca_file: Option<PathBuf>,
    _certs: Option<tempfile::TempDir>,
}

impl SmtpSink {
    /// Starts a sink; `auth` makes AUTH mandatory with that user and password.
    pub fn start(tls: SinkTls, auth: Option<(&str, &str)>) -> SmtpSink {
        let python = python_with_aiosmtpd();
        let out = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/support/smtp_sink.py");
        let mut command = Command::new(python);
        command
            .arg(&script)
            .arg("--out")
            .arg(out.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((user, password)) = auth {
            command.arg("--auth").arg(format!("{user}:{password}"));
        }
        let mut certs = None;
        let mut ca_file = None;
        if tls != SinkTls::None {
            let dir = make_certificates();
            command
                .arg("--tls")
                .arg(if tls == SinkTls::StartTls {
                    "starttls"
                } else {
                    "implicit"
                })
                .arg("--cert")
                .arg(dir.path().join("server.pem"))
                .arg("--key")
                .arg(dir.path().join("server.key"));
            ca_file = Some(dir.path().join("ca.pem"));
            certs = Some(dir);
        }
        let mut child = command.spawn().expect("python3 starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let port = read_ready_port(stdout, &mut child);
        SmtpSink {
            child,
            port,
            out,
            ca_file,
            _certs: certs,
        }
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Value> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.out.path())
            .expect("sink folder")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| {
                serde_json::from_slice(&std::fs::read(path).expect("message file"))
                    .expect("message json")
            })
            .collect()
    }

    /// The AUTH mechanisms clients used so far: one line per attempt that
    /// reached the server with credentials.
    pub fn auth_attempts(&self) -> Vec<String> {
        std::fs::read_to_string(self.out.path().join("auth-attempts.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until `count` messages arrived (the sink writes them after answering).
    pub fn wait_for_messages(&self, count: usize) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let messages = self.messages();
            if messages.len() >= count || Instant::now() > until {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_ready_port(stdout: std::process::ChildStdout, child: &mut Child) -> u16 {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    match receiver.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => match line.trim().strip_prefix("READY ") {
            Some(port) => port.parse().expect("port number"),
            None => {
                let _ = child.kill();
                panic!("the SMTP sink did not start: {line:?}");
            }
        },
        Err(_) => {
            let _ = child.kill();
            panic!("the SMTP sink did not report its port within 30 s");
        }
    }
}

/// The first Python that can import aiosmtpd: `python3` on the `PATH`, or
/// the system's when that is another one (pyenv, a virtualenv).
fn python_with_aiosmtpd() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|python| {
            Command::new(python)
                .args(["-c", "import aiosmtpd.smtp"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("no python3 with aiosmtpd: install the package python3-aiosmtpd (.ci/run does)")
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 and
/// localhost signed by it (`server.pem`, `server.key`).
pub fn make_certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extension file");
    let steps: [Vec<&str>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=zoomwire test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    ];
    for args in steps {
        let output = Command::new("openssl")
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    dir
}
