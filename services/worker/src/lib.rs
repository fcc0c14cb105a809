//! Kiln's render worker: keeps a session with the scheduler and runs the
//! Blender and ffmpeg tasks it assigns, in fresh working directories, with
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
pub mod outputs;
pub mod process;
pub mod quality_check;
pub mod session;
pub mod stall;
pub mod task_log;
pub mod task_runner;
pub mod thumbnails;
pub mod usage;
pub mod variant;
pub mod warm_plan;
pub mod warm_pool;
pub mod warm_session;
pub mod workdir;
pub mod worker_metrics;
