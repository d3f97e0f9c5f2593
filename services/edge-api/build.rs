//! Bakes the build time and git commit into the binary for `GET /api/version`.

use std::process::Command;

fn main() {
    let commit = std::env::var("POLYLOGUE_GIT_COMMIT")
        .ok()
        .unwrap_or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        });
    let build_time = std::env::var("POLYLOGUE_BUILD_TIME")
        .ok()
        .unwrap_or_else(|| {
            Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        });
    println!("cargo:rustc-env=POLYLOGUE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=POLYLOGUE_BUILD_TIME={build_time}");
    println!("cargo:rerun-if-env-changed=POLYLOGUE_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=POLYLOGUE_BUILD_TIME");
    // Rebuild when HEAD moves so the commit stays true.
    for path in ["../../.git/HEAD", "../../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
