//! Idle warm Blender sessions waiting for their next task: few, recently
//! used, and recycled before they grow stale or fat.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::warm_plan::SessionKey;
use crate::warm_session::WarmSession;

/// Name of the directory, inside the worker's work dir, holding the sessions' directories.
const WARM_DIR: &str = "warm";

/// How warm sessions are kept on this worker.
#[derive(Debug, Clone)]
pub struct WarmSettings {
    /// Whether Blender tasks may render in warm sessions at all.
    pub enabled: bool,
    /// Frames a session renders before it is replaced by a fresh one.
    pub max_frames: u32,
    /// Sessions kept waiting between tasks; the least recently used goes first.
    pub max_idle: usize,
    /// How long a session may wait for its next task.
    pub idle_timeout: Duration,
    /// Growth of resident memory since a session's first frame that gets it replaced.
    pub max_memory_growth_bytes: u64,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_frames: 200,
            max_idle: 2,
            idle_timeout: Duration::from_secs(120),
            max_memory_growth_bytes: 2 << 30,
        }
    }
}

/// The idle sessions of one task runner; dropping the pool kills them.
pub struct WarmPool {
    settings: WarmSettings,
    dir: PathBuf,
    /// Oldest first.
    idle: Mutex<VecDeque<WarmSession>>,
    next_id: AtomicU64,
}

impl WarmPool {
    /// A pool keeping its sessions' directories under `work_dir`. Must be
    /// called within a Tokio runtime: a task retires sessions left idle too long.
    pub fn new(settings: WarmSettings, work_dir: &Path) -> Arc<Self> {
        let pool = Arc::new(Self {
            settings,
            dir: work_dir.join(WARM_DIR),
            idle: Mutex::new(VecDeque::new()),
            // Several pools may share a work dir over a worker's life (one per scheduler session).
            next_id: AtomicU64::new(u64::from(rand::random::<u32>()) << 20),
        });
        tokio::spawn(retire_idle_sessions(Arc::downgrade(&pool)));
        pool
    }

    /// Where new sessions' directories go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The most recently used live idle session for `key`, if any.
    pub fn take(&self, key: &SessionKey) -> Option<WarmSession> {
        let mut dead = Vec::new();
        let found = {
            let mut idle = self.lock();
            loop {
                let Some(index) = idle.iter().rposition(|s| s.key() == key) else {
                    break None;
                };
                let Some(mut session) = idle.remove(index) else {
                    break None;
                };
                if session.is_alive() {
                    break Some(session);
                }
                dead.push(session);
            }
        };
        for session in &dead {
            tracing::warn!(session = session.id(), "idle warm blender session had died");
        }
        let mut session = found?;
        session.discard_pending_lines();
        Some(session)
    }

    /// Keeps `session` for a later task, unless it has rendered its share of
    /// frames or grown too much; evicts the least recently used beyond the bound.
    pub fn put_back(&self, mut session: WarmSession) {
        if session.frames_rendered() >= self.settings.max_frames {
            tracing::info!(
                session = session.id(),
                frames = session.frames_rendered(),
                "warm blender session rendered its share of frames; recycling it"
            );
            return;
        }
        if let Some(growth) = session.memory_growth()
            && growth > self.settings.max_memory_growth_bytes
        {
            tracing::info!(
                session = session.id(),
                growth,
                "warm blender session grew too much; recycling it"
            );
            return;
        }
        session.mark_idle();
        let evicted: Vec<WarmSession> = {
            let mut idle = self.lock();
            idle.push_back(session);
            let excess = idle.len().saturating_sub(self.settings.max_idle);
            idle.drain(..excess).collect()
        };
        for session in &evicted {
            tracing::info!(
                session = session.id(),
                "evicting least recently used warm blender session"
            );
        }
    }

    /// Drops sessions idle for longer than the timeout.
    fn retire_expired(&self) {
        let expired: Vec<WarmSession> = {
            let mut idle = self.lock();
            let keep = idle
                .iter()
                .position(|s| s.idle_since().elapsed() < self.settings.idle_timeout)
                .unwrap_or(idle.len());
            idle.drain(..keep).collect()
        };
        for session in &expired {
            tracing::info!(session = session.id(), "warm blender session idle too long");
        }
    }

    /// The lock is only held for quick list operations; a poisoned one still
    /// holds a consistent list.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<WarmSession>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs until the pool is dropped.
async fn retire_idle_sessions(pool: Weak<WarmPool>) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(30)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.retire_expired(),
            None => return,
        }
    }
}
