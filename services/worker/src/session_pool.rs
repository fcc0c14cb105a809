//! OpenJD sessions waiting for their job's next task. A session stays
//! while tasks of its job follow on this worker (its environments stay
//! entered); it ends — its environments exited — when a task of another
//! job comes, after it waited too long, or when the pool goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::openjd_session::OpenJdSession;

/// Name of the directory, inside the worker's work dir, holding the sessions.
const SESSIONS_DIR: &str = "openjd";

pub struct SessionPool {
    dir: PathBuf,
    scratch: PathBuf,
    idle_timeout: Duration,
    keep_dirs: bool,
    idle: Mutex<Vec<OpenJdSession>>,
    next_id: AtomicU64,
}

impl SessionPool {
    /// Must be called within a Tokio runtime: a task ends sessions left idle too long.
    /// `scratch` is the worker's private directory, which no sandbox sees.
    pub fn new(
        work_dir: &Path,
        scratch: &Path,
        idle_timeout: Duration,
        keep_dirs: bool,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            dir: work_dir.join(SESSIONS_DIR),
            scratch: scratch.to_path_buf(),
            idle_timeout,
            keep_dirs,
            idle: Mutex::new(Vec::new()),
            // Several pools may share a work dir over a worker's life (one per scheduler session).
            next_id: AtomicU64::new(u64::from(rand::random::<u32>()) << 20),
        });
        tokio::spawn(end_idle_sessions(Arc::downgrade(&pool)));
        pool
    }

    /// A fresh id, and a new session's working directory and the worker's
    /// private directory for it (outside anything a sandbox sees).
    pub fn new_session_dir(&self) -> (u64, (PathBuf, PathBuf)) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (
            id,
            (
                self.dir.join(format!("session-{id}")),
                self.scratch.join(format!("openjd-session-{id}")),
            ),
        )
    }

    /// The idle session of `job_id`, if any. Idle sessions of other jobs
    /// end now: the worker has moved on to another job.
    pub fn take(&self, job_id: &str) -> Option<OpenJdSession> {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut *self.lock())
            .into_iter()
            .partition(|s| s.job_id() == job_id);
        self.end_all(others);
        let mut mine = mine;
        let found = mine.pop();
        // Several slots may have left sessions of this job; keep the rest.
        self.lock().extend(mine);
        found
    }

    /// Keeps `session` for its job's next task.
    pub fn put_back(&self, mut session: OpenJdSession) {
        session.mark_idle();
        self.lock().push(session);
    }

    /// Ends `session` in the background (its environments' `onExit` run).
    pub fn end(&self, session: OpenJdSession) {
        let keep = self.keep_dirs;
        tokio::spawn(session.end(keep));
    }

    fn end_all(&self, sessions: Vec<OpenJdSession>) {
        for session in sessions {
            tracing::info!(session = session.id(), job_id = %session.job_id(), "ending idle openjd session");
            self.end(session);
        }
    }

    fn end_expired(&self) {
        let expired: Vec<OpenJdSession> = {
            let mut idle = self.lock();
            let (expired, fresh) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|s| s.idle_since().elapsed() >= self.idle_timeout);
            *idle = fresh;
            expired
        };
        self.end_all(expired);
    }

    /// The lock is only held for quick list operations; a poisoned one still
    /// holds a consistent list.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OpenJdSession>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for SessionPool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.lock());
        if idle.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                for session in idle {
                    runtime.spawn(session.end(self.keep_dirs));
                }
            }
            Err(_) => tracing::warn!(
                sessions = idle.len(),
                "openjd sessions dropped without a runtime; their onExit actions do not run"
            ),
        }
    }
}

/// Runs until the pool is dropped.
async fn end_idle_sessions(pool: Weak<SessionPool>) {
    let period = match pool.upgrade() {
        Some(pool) => {
            (pool.idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
        }
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.end_expired(),
            None => return,
        }
    }
}
