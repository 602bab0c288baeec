//! The README's first command, run as a user would: with nothing installed (no
//! `redis-server` on the `PATH`) it runs on the in-process backend; with one, on its own
//! server.

use std::process::Command;

fn run_demo(path: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_datalayer-demo"))
        .env("PATH", path)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_SERVER")
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("completed  5000 / 5000"), "{stdout}");
    assert!(stdout.contains("keys left behind: 0"), "{stdout}");
    stdout
}

#[test]
fn the_demo_runs_in_process_without_redis_server() {
    let empty = std::env::temp_dir().join(format!("dl-demo-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("a directory");
    let stdout = run_demo(&empty.to_string_lossy());
    assert!(stdout.contains("in-process backend"), "{stdout}");
    assert!(
        stdout.contains("REDIS_URL"),
        "it says how to use Redis: {stdout}"
    );
    let _ = std::fs::remove_dir(&empty);
}

#[test]
fn the_demo_starts_its_own_redis_server_when_there_is_one() {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| d.join("redis-server").is_file());
    if !found {
        eprintln!("no redis-server on the PATH: the in-process run above is the test");
        return;
    }
    let stdout = run_demo(&path);
    assert!(!stdout.contains("in-process backend"), "{stdout}");
    assert!(stdout.contains("connections to Redis"), "{stdout}");
}
