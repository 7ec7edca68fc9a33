//! The model's shell commands run with a minimal environment: the agent's API keys and tokens
//! are not theirs to read (the model reads what they print).

use std::time::Duration;
use tether_host::tools::shell::run_command;
use tokio_util::sync::CancellationToken;

mod common;
use common::{SECRET, SECRET_VARS, in_env_with_secrets};

#[tokio::test]
async fn shell_commands_do_not_see_the_agents_secrets() {
    if !in_env_with_secrets("shell_commands_do_not_see_the_agents_secrets") {
        return;
    }
    let out = run_command("env", Duration::from_secs(10), &CancellationToken::new()).await;
    assert!(out.ok, "{}", out.output);
    assert!(!out.output.contains(SECRET), "{}", out.output);
    for var in SECRET_VARS {
        assert!(!out.output.contains(&format!("{var}=")), "{}", out.output);
    }
    // The basics a command needs are still there.
    assert!(out.output.contains("\nPATH="), "{}", out.output);
    if std::env::var_os("HOME").is_some() {
        assert!(out.output.contains("\nHOME="), "{}", out.output);
    }
}
