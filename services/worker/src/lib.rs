//! Kiln's render worker: keeps a session with the scheduler and runs the
//! tasks it assigns, each in a sandbox and a fresh working directory, with
//! inputs from and outputs to the assets service.

pub mod assets;
pub mod blender_output;
pub mod capabilities;
pub mod command;
pub mod config;
pub mod devices;
pub mod encode;
pub mod health;
pub mod input_cache;
pub mod log_tail;
pub mod openjd_messages;
pub mod openjd_session;
pub mod outputs;
pub mod proc_tree;
pub mod process;
pub mod quality_check;
pub mod sandbox;
pub mod session;
pub mod session_action;
pub mod session_files;
pub mod session_pool;
pub mod session_runner;
pub mod session_symbols;
pub mod stall;
pub mod task;
pub mod task_log;
pub mod task_queue;
pub mod thumbnails;
pub mod usage;
pub mod variant;
pub mod warm_plan;
pub mod warm_pool;
pub mod warm_session;
pub mod workdir;
pub mod worker_metrics;
