//! Running a test in a process whose environment holds secrets, without mutating the
//! environment of this test process (other tests run in parallel threads and read it).
#![allow(dead_code)] // each test crate uses a different subset

/// The value of every secret variable in the re-run.
pub const SECRET: &str = "tether-test-secret-5e1f";
/// Variables an agent may hold that no child process should see.
pub const SECRET_VARS: &[&str] = &["OPENAI_API_KEY", "TETHER_HUB_TOKEN", "ALICE_TOKEN"];

/// In the test process: runs `test` (this test's name) again in a child process of this test
/// binary whose environment holds [`SECRET_VARS`], asserts that exactly that test ran and
/// passed, and returns `false` (the caller returns). In that child: returns `true` (the caller
/// runs its body).
pub fn in_env_with_secrets(test: &str) -> bool {
    if std::env::var(SECRET_VARS[0]).as_deref() == Ok(SECRET) {
        for var in SECRET_VARS {
            assert_eq!(std::env::var(var).as_deref(), Ok(SECRET), "{var}");
        }
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut rerun = std::process::Command::new(exe);
    rerun.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    for var in SECRET_VARS {
        rerun.env(var, SECRET);
    }
    let out = rerun.output().expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} failed with secrets in its environment:\n{stdout}\n{stderr}"
    );
    false
}
