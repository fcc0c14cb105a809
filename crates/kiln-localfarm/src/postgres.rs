use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nix::unistd::{User, geteuid};
use tokio::time::Instant;

use crate::error::{LocalFarmError, Result};
use crate::fs::{absolute, chown_to, create_dirs, touch, write_private};
use crate::log_tail::{TAIL_LINES, tail};
use crate::ports::free_port;
use crate::secret::random_hex;
use crate::wait::POLL_INTERVAL;

/// Where Debian puts PostgreSQL 15's server binaries; `KILN_POSTGRES_BIN_DIR` overrides it.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The database Kiln's scheduler uses.
pub const DATABASE: &str = "kiln";
/// The superuser created by initdb; it logs in with a password (SCRAM).
const SUPERUSER: &str = "postgres";
/// Every connection, over TCP or the unix socket, proves the password.
/// Written at every start, so a cluster made with `trust` (by an older
/// Kiln) is closed too.
const HBA: &str = "# Written by Kiln at every start: password (SCRAM) authentication only.\n\
    local all all scram-sha-256\n\
    host all all 127.0.0.1/32 scram-sha-256\n\
    host all all ::1/128 scram-sha-256\n";
/// Starts tried again on another port when the chosen one was taken.
const PORT_RETRIES: u32 = 3;
/// Bound on each pg tool invocation (initdb, pg_ctl, psql).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a started server has to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest unix socket path the kernel accepts, minus room for `.s.PGSQL.NNNNN`.
const MAX_SOCKET_DIR_LEN: usize = 90;
/// Bound on the tool output quoted in errors.
const MAX_ERROR_OUTPUT: usize = 2000;

/// A private PostgreSQL cluster run from the system's binaries.
///
/// The data directory survives restarts and is reused when it already holds
/// a cluster, so data written earlier is still there. The server listens on
/// 127.0.0.1 only, on a port chosen once when this value is created and kept
/// across [`Postgres::restart`]. It is stopped when this value is dropped.
///
/// Other users on the machine can reach the port, so every connection must
/// give the superuser's password: random, made the first time a data
/// directory is used and kept beside it (`<data-dir>.password`, mode 0600),
/// and set again (with the server down) at every start.
///
/// PostgreSQL refuses to run as root; when this process is root, the server
/// and initdb run as the `postgres` system user, which gets ownership of the
/// data directory and the log file.
pub struct Postgres {
    data_dir: PathBuf,
    log: PathBuf,
    password: String,
    port: u16,
    bin_dir: PathBuf,
    run_as: Option<User>,
    running: bool,
}

impl Postgres {
    /// Prepares a cluster in `data_dir` whose server log goes to `log`;
    /// nothing runs until [`Postgres::start`].
    pub fn new(data_dir: impl AsRef<Path>, log: impl AsRef<Path>) -> Result<Self> {
        let bin_dir = std::env::var_os("KILN_POSTGRES_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
        let run_as = if geteuid().is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let data_dir = absolute(data_dir.as_ref())?;
        Ok(Self {
            password: load_or_create_password(&password_file(&data_dir))?,
            data_dir,
            log: absolute(log.as_ref())?,
            port: free_port()?,
            bin_dir,
            run_as,
            running: false,
        })
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/kiln`: pass it to
    /// processes in their environment, never on a command line.
    pub fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// [`Postgres::url`] without the password, to show.
    pub fn public_url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The file holding the superuser's password.
    pub fn password_file(&self) -> PathBuf {
        password_file(&self.data_dir)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory the PostgreSQL programs (psql, pg_dump, ...) are taken from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether [`Postgres::start`] succeeded and no stop followed.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Creates the cluster if needed, starts the server, waits until it
    /// accepts connections and creates the `kiln` database if it is missing.
    /// Does nothing if this value already started it.
    pub async fn start(&mut self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        self.prepare_dirs().await?;
        if !self.data_dir.join("PG_VERSION").exists() {
            self.initdb().await?;
        }
        self.stop_stale_server().await?;
        self.set_password().await?;
        self.write_hba()?;
        let mut retries = 0;
        loop {
            match self.run_ok("pg_ctl", true, self.start_args()).await {
                Ok(_) => break,
                // Postgres must be told its port and cannot bind port 0, so
                // another process may take the port between `free_port` and
                // now (seen in CI: "Address already in use"). Another port.
                Err(err) if retries < PORT_RETRIES && self.port_was_taken() => {
                    retries += 1;
                    let taken = self.port;
                    self.port = free_port()?;
                    tracing::warn!(taken, port = self.port, error = %err, "postgres's port was taken; trying another");
                }
                Err(err) => return Err(err),
            }
        }
        self.running = true;
        self.wait_accepting().await?;
        self.ensure_database().await?;
        tracing::info!(port = self.port, data_dir = %self.data_dir.display(), "postgres ready");
        Ok(())
    }

    /// Stops the server (fast shutdown: open transactions are rolled back).
    pub async fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.run_ok("pg_ctl", true, self.stop_args()).await?;
        self.running = false;
        tracing::info!(port = self.port, "postgres stopped");
        Ok(())
    }

    /// Stops and starts the server on the same port, keeping its data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.start().await
    }

    async fn prepare_dirs(&self) -> Result<()> {
        let created = create_dirs(&self.data_dir)?;
        touch(&self.log)?;
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        for dir in created.iter().chain([&self.data_dir]) {
            chown_to(dir, user)?;
        }
        chown_to(&self.log, user)?;
        let mut probe = self.as_owner("test");
        probe.arg("-w").arg(&self.data_dir).current_dir("/");
        let mut probe = tokio::process::Command::from(probe);
        probe.kill_on_drop(true);
        match tokio::time::timeout(COMMAND_TIMEOUT, probe.status()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            _ => Err(LocalFarmError::PostgresCannotReach {
                path: self.data_dir.clone(),
            }),
        }
    }

    async fn initdb(&self) -> Result<()> {
        tracing::info!(data_dir = %self.data_dir.display(), "creating postgres cluster");
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-U".into(),
            SUPERUSER.into(),
            "--auth=trust".into(),
            "--encoding=UTF8".into(),
            "--locale=C".into(),
        ];
        self.run_ok("initdb", true, args).await.map(drop)
    }

    /// Sets the superuser's password in single-user mode, with no server
    /// running: no window in which the cluster takes anyone, whatever its
    /// configuration was. The statement goes in on stdin, never in argv.
    async fn set_password(&self) -> Result<()> {
        let args = vec![
            "--single".into(),
            "-D".into(),
            self.data_dir.clone().into(),
            "-c".into(),
            "exit_on_error=true".into(),
            SUPERUSER.into(),
        ];
        // Hex digits only: safe inside the quotes.
        let statement = format!("ALTER ROLE {SUPERUSER} PASSWORD '{}';\n", self.password);
        self.run_ok_with_input("postgres", args, statement.into_bytes())
            .await
            .map(drop)
    }

    fn write_hba(&self) -> Result<()> {
        let path = self.data_dir.join("pg_hba.conf");
        write_private(&path, HBA.as_bytes())?;
        if let Some(user) = &self.run_as {
            chown_to(&path, user)?;
        }
        Ok(())
    }

    /// A server left running by a farm that was killed would hold the data
    /// directory; the farm's lock guarantees it is not a live farm's.
    async fn stop_stale_server(&self) -> Result<()> {
        let status_args = vec!["status".into(), "-D".into(), self.data_dir.clone().into()];
        let output = self.run("pg_ctl", true, status_args).await?;
        if output.status.success() {
            tracing::warn!(data_dir = %self.data_dir.display(), "stopping a postgres server left running earlier");
            self.run_ok("pg_ctl", true, self.stop_args()).await?;
        }
        Ok(())
    }

    /// Whether the server's last start failed because its port was in use.
    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|log| port_taken_in(&log))
    }

    fn start_args(&self) -> Vec<OsString> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            shell_quote(&self.socket_dir())
        );
        vec![
            "start".into(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "-D".into(),
            self.data_dir.clone().into(),
            "-l".into(),
            self.log.clone().into(),
            "-o".into(),
            options.into(),
        ]
    }

    fn stop_args(&self) -> Vec<OsString> {
        ["stop", "-w", "-t", "60", "-m", "fast", "-D"]
            .into_iter()
            .map(OsString::from)
            .chain([self.data_dir.clone().into()])
            .collect()
    }

    /// The socket lives in the data directory unless that path is too long
    /// for a unix socket; then there is no socket and clients use TCP.
    fn socket_dir(&self) -> String {
        let dir = self.data_dir.display().to_string();
        if dir.len() <= MAX_SOCKET_DIR_LEN {
            dir
        } else {
            String::new()
        }
    }

    async fn wait_accepting(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let output = self
                .run("pg_isready", false, self.connection_args("postgres"))
                .await?;
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LocalFarmError::NotReady {
                    name: "postgres".to_owned(),
                    what: format!("accepting connections on 127.0.0.1:{}", self.port),
                    waited: READY_TIMEOUT,
                    log: self.log.clone(),
                    tail: tail(&self.log, TAIL_LINES),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn ensure_database(&self) -> Result<()> {
        let mut query = self.connection_args("postgres");
        query.extend([
            "-tAc".into(),
            format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").into(),
        ]);
        let output = self.run_ok("psql", false, query).await?;
        if String::from_utf8_lossy(&output.stdout).trim() == "1" {
            return Ok(());
        }
        let mut create = self.connection_args_without_db();
        create.push(DATABASE.into());
        self.run_ok("createdb", false, create).await?;
        tracing::info!(database = DATABASE, "created database");
        Ok(())
    }

    fn connection_args(&self, database: &str) -> Vec<OsString> {
        let mut args = self.connection_args_without_db();
        args.extend(["-d".into(), database.into()]);
        args
    }

    fn connection_args_without_db(&self) -> Vec<OsString> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string().into(),
            "-U".into(),
            SUPERUSER.into(),
        ]
    }

    /// A pg tool invocation; `as_owner` tools run as the cluster's owner.
    fn command(&self, tool: &str, as_owner: bool) -> std::process::Command {
        let program = self.bin_dir.join(tool);
        let mut command = if as_owner {
            self.as_owner(program)
        } else {
            std::process::Command::new(program)
        };
        // The owner may not be allowed into our working directory.
        command.current_dir("/");
        // libpq reads it from the environment, which other users cannot see.
        command.env("PGPASSWORD", &self.password);
        command
    }

    /// `program` run as the cluster's owner: through runuser when we are root.
    fn as_owner(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        match &self.run_as {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", &user.name, "--"]).arg(program);
                command
            }
            None => std::process::Command::new(program),
        }
    }

    async fn run(&self, tool: &str, as_owner: bool, args: Vec<OsString>) -> Result<Output> {
        let mut command = tokio::process::Command::from(self.command(tool, as_owner));
        command.args(&args).kill_on_drop(true);
        let described = describe(tool, &args);
        match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(LocalFarmError::Spawn {
                name: "postgres".to_owned(),
                program: self.bin_dir.join(tool),
                source,
            }),
            Err(_) => Err(LocalFarmError::Command {
                name: "postgres".to_owned(),
                command: described,
                status: format!("no answer after {COMMAND_TIMEOUT:?}"),
                output: tail(&self.log, TAIL_LINES),
            }),
        }
    }

    /// Runs `tool` as the cluster's owner with `input` on its stdin.
    async fn run_ok_with_input(
        &self,
        tool: &str,
        args: Vec<OsString>,
        input: Vec<u8>,
    ) -> Result<Output> {
        use tokio::io::AsyncWriteExt;
        let mut command = tokio::process::Command::from(self.command(tool, true));
        command
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let described = describe(tool, &args);
        let spawn_error = |source| LocalFarmError::Spawn {
            name: "postgres".to_owned(),
            program: self.bin_dir.join(tool),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(&input).await?;
            }
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
            Ok(output) => output.map_err(spawn_error)?,
            Err(_) => {
                return Err(LocalFarmError::Command {
                    name: "postgres".to_owned(),
                    command: described,
                    status: format!("no answer after {COMMAND_TIMEOUT:?}"),
                    output: String::new(),
                });
            }
        };
        self.checked(described, output)
    }

    async fn run_ok(&self, tool: &str, as_owner: bool, args: Vec<OsString>) -> Result<Output> {
        let described = describe(tool, &args);
        let output = self.run(tool, as_owner, args).await?;
        self.checked(described, output)
    }

    fn checked(&self, described: String, output: Output) -> Result<Output> {
        if output.status.success() {
            return Ok(output);
        }
        Err(LocalFarmError::Command {
            name: "postgres".to_owned(),
            command: described,
            status: output.status.to_string(),
            output: format!(
                "{}\n--- last lines of {} ---\n{}",
                combined_output(&output),
                self.log.display(),
                tail(&self.log, TAIL_LINES)
            ),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        // Drop cannot await; a fast shutdown takes well under a second.
        let result = self.command("pg_ctl", true).args(self.stop_args()).output();
        if let Err(err) = result {
            tracing::warn!(error = %err, data_dir = %self.data_dir.display(), "cannot stop postgres");
        }
    }
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("running", &self.running)
            .finish()
    }
}

fn password_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".password");
    PathBuf::from(name)
}

/// The password kept in `path`, or a new one written there (mode 0600).
fn load_or_create_password(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if is_password(text.trim()) => {
            // Narrow a file left readable by others, too.
            write_private(path, text.trim().as_bytes())?;
            Ok(text.trim().to_owned())
        }
        Ok(_) | Err(_) => {
            let password = random_hex(24);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| LocalFarmError::io(dir, e))?;
            }
            write_private(path, password.as_bytes())?;
            Ok(password)
        }
    }
}

fn is_password(text: &str) -> bool {
    text.len() >= 32 && text.chars().all(|c| c.is_ascii_hexdigit())
}

fn postgres_user() -> Result<User> {
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(LocalFarmError::NoPostgresUser("no such user".to_owned())),
        Err(err) => Err(LocalFarmError::NoPostgresUser(err.to_string())),
    }
}

fn describe(tool: &str, args: &[OsString]) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{tool} {}", args.join(" "))
}

fn combined_output(output: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = text.trim();
    let start = text.len().saturating_sub(MAX_ERROR_OUTPUT);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// Whether the last start in a server log failed on a port in use.
fn port_taken_in(log: &str) -> bool {
    let last_start = log.rfind("starting PostgreSQL").unwrap_or(0);
    log[last_start..].contains("Address already in use")
}

/// Quotes `text` for the shell that pg_ctl runs the server through.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::port_taken_in;

    #[test]
    fn a_start_that_found_its_port_taken_is_told_from_other_failures() {
        let taken = "LOG:  starting PostgreSQL 15.18\n\
            LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
            FATAL:  could not create any TCP/IP sockets\n";
        assert!(port_taken_in(taken));
        // An earlier start's collision does not count for a later failure.
        let later = format!(
            "{taken}LOG:  starting PostgreSQL 15.18\nFATAL:  data directory has wrong ownership\n"
        );
        assert!(!port_taken_in(&later));
        assert!(!port_taken_in(""));
    }
}
