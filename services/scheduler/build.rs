// `sqlx::migrate!` embeds the migrations at compile time, but cargo only
// knows to recompile when a Rust source changes: without this, a new
// migration file is silently left out of an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
