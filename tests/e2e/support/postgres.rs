//! A throwaway PostgreSQL server for tests, on loopback.
//!
//! One server per test process ([`shared`]) is made on first use: `initdb`
//! into a temporary folder (as the `postgres` user when the tests run as
//! root: `initdb` and `pg_ctl` refuse root), TLS on with a certificate for
//! `localhost` made by `openssl`, started on a free port, and a database per
//! test ([`PgServer::database`]). Tests that stop or restart the server get
//! a [`private`] one of their own. Every server is stopped and its folder
//! removed when its owner drops it, and also, through a small guardian
//! shell that waits on a pipe from this process, when the test process ends
//! in any way (even killed), so no server outlives its tests.
//!
//! Without PostgreSQL on the machine ([`binaries`] finds none on the PATH
//! or under `/usr/lib/postgresql/*/bin`), tests skip with a note, unless
//! `CI` is set: then they fail, since CI installs it (`.ci/run`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use zoomwire_sim::bench::scratch_pg::{self, as_root};

/// Where PostgreSQL's programs are, or `None` (then skip, or fail in CI).
pub fn binaries() -> Option<PathBuf> {
    let bin = scratch_pg::binaries();
    if bin.is_none() {
        super::skip_unless_ci(
            "PostgreSQL is not installed (no initdb on the PATH or in /usr/lib/postgresql/*/bin)",
        );
    }
    bin
}

/// A PostgreSQL server of this test process.
pub struct PgServer {
    pub port: u16,
    root: PathBuf,
    bin: PathBuf,
    /// Closing it (dropping, or the process ending) makes the guardian
    /// stop the server and remove its folder.
    guardian: Mutex<Option<(Child, ChildStdin)>>,
    databases: AtomicU32,
}

/// The server shared by this process's tests; `None`: skip the test.
pub fn shared() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| binaries().map(PgServer::start))
        .as_ref()
}

/// A server of the caller's own (to stop or restart); `None`: skip the test.
pub fn private() -> Option<PgServer> {
    binaries().map(PgServer::start)
}

/// A database of its own for one test, dropped with it.
pub struct TestDatabase {
    pub name: String,
    port: u16,
    bin: PathBuf,
    tls_ca: PathBuf,
}

impl TestDatabase {
    /// Plain TCP on 127.0.0.1.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            self.port, self.name
        )
    }

    /// TLS to `localhost`, verified against the server's own CA.
    pub fn tls_url(&self) -> String {
        format!(
            "postgres://postgres@localhost:{}/{}?sslmode=require&sslrootcert={}",
            self.port,
            self.name,
            self.tls_ca.display()
        )
    }

    /// Runs SQL in this database with `psql`; returns its output (tuples only).
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.bin, self.port, &self.name, sql)
    }

    /// Runs SQL that must fail; returns psql's error output.
    pub fn psql_error(&self, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(connect_args(self.port, &self.name))
            .args(["-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(!output.status.success(), "`{sql}` succeeded");
        String::from_utf8_lossy(&output.stderr).to_string()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Best effort: the whole server goes with the process anyway.
        let _ = Command::new(self.bin.join("psql"))
            .args(connect_args(self.port, "postgres"))
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl PgServer {
    fn start(bin: PathBuf) -> PgServer {
        let root = tempfile::Builder::new()
            .prefix("zoomwire-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let data = root.join("data");
        if as_root() {
            chown_to_postgres(&root);
        }
        let init = as_owner(&bin.join("initdb"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        make_certificate(&root, &data);
        // The guardian: when this process's end of the pipe closes, stop and remove.
        let mut guardian = Command::new("sh")
            .args([
                "-c",
                "cat >/dev/null; $0 -D \"$1\" -m immediate stop >/dev/null 2>&1; rm -rf \"$2\"",
            ])
            .arg(owner_command(&bin.join("pg_ctl")))
            .arg(&data)
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the guardian starts");
        let pipe = guardian.stdin.take().expect("piped");
        let server = PgServer {
            port: 0,
            root,
            bin,
            guardian: Mutex::new(Some((guardian, pipe))),
            databases: AtomicU32::new(0),
        };
        server.start_on_free_port()
    }

    fn start_on_free_port(mut self) -> PgServer {
        for _ in 0..5 {
            self.port = free_port();
            if self.try_start() {
                return self;
            }
        }
        panic!("postgres did not start:\n{}", self.log());
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn try_start(&self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c ssl=on -c max_connections=300 \
             -c shared_buffers=32MB -c fsync=on",
            self.port,
            self.root.display()
        );
        as_owner(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data().to_string_lossy(), "-o", &options, "-l"])
            .arg(self.root.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// A fresh, empty database.
    pub fn database(&self) -> TestDatabase {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("zw_{}_{n}", std::process::id());
        let out = psql(
            &self.bin,
            self.port,
            "postgres",
            &format!("CREATE DATABASE \"{name}\""),
        );
        assert!(out.is_empty() || out.contains("CREATE"), "{out}");
        TestDatabase {
            name,
            port: self.port,
            bin: self.bin.clone(),
            tls_ca: self.root.join("ca.pem"),
        }
    }

    /// Stops the server at once (`-m immediate`: as a crash would).
    pub fn stop(&self) {
        let status = as_owner(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "postgres stops");
    }

    /// Starts it again on the same port.
    pub fn start_again(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.try_start() {
            assert!(
                Instant::now() < deadline,
                "postgres did not restart:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let taken = self
            .guardian
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((mut guardian, pipe)) = taken {
            drop(pipe);
            let _ = guardian.wait();
        }
    }
}

fn psql(bin: &Path, port: u16, database: &str, sql: &str) -> String {
    let output = Command::new(bin.join("psql"))
        .args(connect_args(port, database))
        .args(["-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql failed on `{sql}`: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn connect_args(port: u16, database: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        database,
    ]
    .map(str::to_string)
    .to_vec()
}

/// A CA and a server certificate for `localhost`, made with `openssl`.
fn make_certificate(root: &Path, data: &Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(root)
            .output()
            .expect("openssl runs (Debian's postgresql package depends on it through ssl-cert)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
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
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(root.join("san.ext"), "subjectAltName=DNS:localhost\n").expect("ext file");
    run(&[
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
        "san.ext",
        "-out",
        "server.crt",
    ]);
    for file in ["server.crt", "server.key"] {
        std::fs::copy(root.join(file), data.join(file)).expect("certificate copied");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = data.join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
        if as_root() {
            chown_to_postgres(&data.join("server.crt"));
            chown_to_postgres(&key);
        }
    }
}

/// The program, run as `postgres` when this process is root.
fn as_owner(program: &Path) -> Command {
    if as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// `as_owner` as one shell word list for the guardian.
fn owner_command(program: &Path) -> String {
    if as_root() {
        format!("runuser -u postgres -- {}", program.display())
    } else {
        program.display().to_string()
    }
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown {}", path.display());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
