//! The ceilings every task of a worker runs under, set by the worker's
//! operator, and the message a task fails with when it breaks one.

use std::fmt;

/// Per-task ceilings. Run time and stall come with each assignment
/// (`max_run_seconds`, `stall_seconds`) and are supervised apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Resident memory of all the task's processes together.
    pub memory_bytes: u64,
    /// Processes and threads of the task's uid.
    pub processes: u64,
    /// Open files of each process.
    pub open_files: u64,
    /// Bytes the task may hold on disk: its working directory and its `/tmp`.
    pub disk_bytes: u64,
    /// Bytes of outputs (files under `outputs/`) the task may store.
    pub output_bytes: u64,
}

/// A ceiling a task broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Memory { limit: u64 },
    Processes { limit: u64 },
    Disk { limit: u64 },
    Output { limit: u64 },
}

impl LimitHit {
    /// The limit's name as operators know it (the worker option that sets it).
    pub fn option(self) -> &'static str {
        match self {
            LimitHit::Memory { .. } => "--task-memory-bytes",
            LimitHit::Processes { .. } => "--task-max-processes",
            LimitHit::Disk { .. } => "--task-disk-bytes",
            LimitHit::Output { .. } => "--task-output-bytes",
        }
    }
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LimitHit::Memory { limit } => {
                write!(f, "exceeded its memory limit of {}", bytes(limit))
            }
            LimitHit::Processes { limit } => {
                write!(f, "reached its limit of {limit} processes")
            }
            LimitHit::Disk { limit } => write!(f, "exceeded its disk limit of {}", bytes(limit)),
            LimitHit::Output { limit } => {
                write!(f, "exceeded its output limit of {}", bytes(limit))
            }
        }?;
        write!(f, " ({})", self.option())
    }
}

/// Bytes for people: whole MiB or GiB when exact, else bytes.
pub fn bytes(value: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match value {
        v if v >= GIB && v % GIB == 0 => format!("{} GiB", v / GIB),
        v if v >= GIB => format!("{:.1} GiB", v as f64 / GIB as f64),
        v if v >= MIB && v % MIB == 0 => format!("{} MiB", v / MIB),
        v if v >= MIB => format!("{:.1} MiB", v as f64 / MIB as f64),
        v => format!("{v} bytes"),
    }
}

/// What a task used, sampled while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub output_bytes: u64,
}

impl Limits {
    /// The first ceiling `usage` is over, if any.
    pub fn exceeded_by(&self, usage: &Usage) -> Option<LimitHit> {
        if usage.memory_bytes > self.memory_bytes {
            return Some(LimitHit::Memory {
                limit: self.memory_bytes,
            });
        }
        if usage.output_bytes > self.output_bytes {
            return Some(LimitHit::Output {
                limit: self.output_bytes,
            });
        }
        (usage.disk_bytes > self.disk_bytes).then_some(LimitHit::Disk {
            limit: self.disk_bytes,
        })
    }

    /// A one-line summary for logs and capabilities.
    pub fn describe(&self) -> String {
        format!(
            "memory {}, {} processes, {} open files, disk {}, outputs {}",
            bytes(self.memory_bytes),
            self.processes,
            self.open_files,
            bytes(self.disk_bytes),
            bytes(self.output_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory_bytes: 256 << 20,
            processes: 64,
            open_files: 256,
            disk_bytes: 1 << 30,
            output_bytes: 512 << 20,
        }
    }

    #[test]
    fn names_the_limit_broken() {
        let limits = limits();
        assert_eq!(limits.exceeded_by(&Usage::default()), None);
        let memory = Usage {
            memory_bytes: (256 << 20) + 1,
            ..Usage::default()
        };
        assert_eq!(
            limits.exceeded_by(&memory).map(|hit| hit.to_string()),
            Some("exceeded its memory limit of 256 MiB (--task-memory-bytes)".to_owned())
        );
        let output = Usage {
            disk_bytes: 2 << 30,
            output_bytes: 600 << 20,
            ..Usage::default()
        };
        assert_eq!(
            limits.exceeded_by(&output),
            Some(LimitHit::Output { limit: 512 << 20 }),
            "outputs are on disk too; the tighter name wins"
        );
        let disk = Usage {
            disk_bytes: (1 << 30) + 1,
            ..Usage::default()
        };
        assert_eq!(
            limits.exceeded_by(&disk).map(|hit| hit.to_string()),
            Some("exceeded its disk limit of 1 GiB (--task-disk-bytes)".to_owned())
        );
    }

    #[test]
    fn prints_sizes_for_people() {
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(3 << 20), "3 MiB");
        assert_eq!(bytes(16 << 30), "16 GiB");
        assert_eq!(bytes((1 << 20) + (1 << 19)), "1.5 MiB");
        assert_eq!(bytes(25_276_194_816), "23.5 GiB");
    }
}
