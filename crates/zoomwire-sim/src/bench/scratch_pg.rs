//! A scratch PostgreSQL server for `zoomwire bench --journal postgres` when
//! `ZOOMWIRE_DATABASE_URL` is not given: `initdb` into a temporary folder
//! (as the `postgres` user through `runuser` when the bench runs as root,
//! since `initdb` and `pg_ctl` refuse root), started on a free loopback
//! port with PostgreSQL's default settings, stopped (`-m immediate`) and
//! removed when dropped.
//!
//! PostgreSQL's programs are looked for on the PATH, then under
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why no scratch server could be started.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error(
        "PostgreSQL is not installed (no initdb on the PATH or in /usr/lib/postgresql/*/bin): install it or set ZOOMWIRE_DATABASE_URL to a scratch database"
    )]
    NotInstalled,
    #[error("scratch PostgreSQL: {0}")]
    Io(#[from] std::io::Error),
    #[error("scratch PostgreSQL: {what} failed: {detail}")]
    Failed { what: &'static str, detail: String },
}

/// A running scratch server; stopped and removed on drop.
pub struct ScratchPostgres {
    port: u16,
    root: PathBuf,
    bin: PathBuf,
}

impl ScratchPostgres {
    /// Makes and starts a server, or says why not.
    pub fn start() -> Result<ScratchPostgres, ScratchError> {
        let bin = binaries().ok_or(ScratchError::NotInstalled)?;
        let root = tempfile::Builder::new()
            .prefix("zoomwire-bench-pg-")
            .tempdir()?
            .keep();
        let mut server = ScratchPostgres { port: 0, root, bin };
        if as_root() {
            chown_to_postgres(&server.root)?;
        }
        let init = server
            .as_owner("initdb")
            .arg("-D")
            .arg(server.data())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()?;
        if !init.status.success() {
            return Err(ScratchError::Failed {
                what: "initdb",
                detail: String::from_utf8_lossy(&init.stderr).into_owned(),
            });
        }
        for _ in 0..5 {
            server.port = free_port()?;
            if server.try_start()? {
                return Ok(server);
            }
        }
        Err(ScratchError::Failed {
            what: "pg_ctl start",
            detail: std::fs::read_to_string(server.root.join("server.log")).unwrap_or_default(),
        })
    }

    /// The URL of its `postgres` database, plain TCP on loopback.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn try_start(&self) -> Result<bool, ScratchError> {
        // PostgreSQL's defaults, but for where it listens (and room for
        // several nodes' pools).
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            self.root.display()
        );
        let status = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.root.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        Ok(status.success())
    }

    /// The program `name` of PostgreSQL, run as `postgres` when this
    /// process is root.
    fn as_owner(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Where PostgreSQL's programs are: the folder of the `initdb` on the PATH
/// (followed through links, since the PATH may hold links to a few programs
/// only), else the newest `/usr/lib/postgresql/*/bin`, holding `initdb`,
/// `pg_ctl` and `psql` (Debian's packages keep them there). The end-to-end
/// tests' servers look here too.
pub fn binaries() -> Option<PathBuf> {
    let complete = |bin: &Path| {
        ["initdb", "pg_ctl", "psql"]
            .iter()
            .all(|p| bin.join(p).is_file())
    };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())
            .and_then(|initdb| {
                std::fs::canonicalize(initdb)
                    .ok()?
                    .parent()
                    .map(Path::to_path_buf)
            })
            .filter(|bin| complete(bin))
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| complete(bin))
            .collect();
        versions.sort();
        versions.pop()
    })
}

/// Whether this process runs as root (then PostgreSQL's programs, which
/// refuse root, run as the `postgres` user).
pub fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to_postgres(path: &Path) -> Result<(), ScratchError> {
    let output = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ScratchError::Failed {
            what: "chown postgres",
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
