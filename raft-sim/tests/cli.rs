//! The `raft-sim` command line: help, the flags CI and the README use, and a failing
//! seed's report with its replay command.

use std::process::{Command, Output};

fn raft_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raft-sim"))
        .args(args)
        .output()
        .expect("raft-sim runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_exits_zero_and_documents_every_flag() {
    let out = raft_sim(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let help = stdout(&out);
    for flag in [
        "--seeds",
        "--start",
        "--seed",
        "--jobs",
        "--nodes",
        "--ops",
        "--lin-budget",
        "--verbose",
        "--lease",
        "--lease-beyond-bound",
        "--max-events",
        "--max-wall-ms",
        "--nemeses",
    ] {
        let documented = help
            .split(|c: char| c.is_whitespace() || c == ',')
            .any(|word| word == flag);
        assert!(documented, "--help does not document {flag}:\n{help}");
    }
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let out = raft_sim(&["--nodes", "9"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = raft_sim(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_readme_and_ci_forms_run() {
    // .ci/run: `--seeds N --start S`; the README: `--nodes`, `--seed X --verbose`.
    let out = raft_sim(&[
        "--seeds", "2", "--start", "7000", "--nodes", "5", "--jobs", "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("2 passed, 0 failed; slowest seed 700"),
        "{text}"
    );
    let out = raft_sim(&["--seed", "149", "--verbose", "--ops", "40", "--lease"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("history (as checked):") && text.contains("digest: "),
        "{text}"
    );
}

#[test]
fn a_seed_over_its_budget_fails_with_its_replay_command() {
    let out = raft_sim(&["--seeds", "2", "--start", "3", "--max-events", "100"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    for seed in [3, 4] {
        assert!(
            text.contains(&format!("seed {seed} FAILED")),
            "no failure line for seed {seed}:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "replay: cargo run --release -p raft-sim -- --seed {seed} --verbose --max-events 100"
            )),
            "no replay command for seed {seed}:\n{text}"
        );
    }
    assert!(
        text.contains("Per-seed budget violated: more than 100 events"),
        "{text}"
    );
    assert!(text.contains("failed seeds: [3, 4]"), "{text}");
    assert!(text.contains("0 passed, 2 failed"), "{text}");
}
