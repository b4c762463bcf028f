//! The command line (issue 10): `--help` and `--version` answer on every subcommand with
//! exit 0, a usage error exits 2 naming the bad argument, and real commands still run.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"))
        .args(args)
        .output()
        .expect("run erlmcp-flow")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit 0; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}{stderr}");
    stdout
}

/// Exit 2 (a usage error); returns stderr.
fn usage_error(args: &[&str]) -> String {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    stderr
}

fn assert_mentions(what: &str, text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "{what} does not mention {w}:\n{text}");
    }
}

#[test]
fn help_answers_with_each_commands_options() {
    let top = ok(&["--help"]);
    assert_mentions(
        "--help",
        &top,
        &["bench", "stat", "shm", "ring", "codec", "version"],
    );
    assert!(
        !top.contains("bench-helper"),
        "the helper is hidden:\n{top}"
    );
    assert_eq!(ok(&["help"]), top);
    assert_mentions(
        "stat --help",
        &ok(&["stat", "--help"]),
        &["[NAME]", "--dir", "--watch"],
    );
    assert_mentions(
        "ring chaos --help",
        &ok(&["ring", "chaos", "--help"]),
        &["--kills", "--seed", "--zombie-ms", "--dir"],
    );
    assert_mentions(
        "bench compare --help",
        &ok(&["bench", "compare", "--help"]),
        &[
            "BASELINE.json",
            "LATEST.json",
            "--threshold",
            "--fail-on-regression",
            "--by",
            "ratio",
        ],
    );
    assert_mentions(
        "bench --help",
        &ok(&["bench", "--help"]),
        &[
            "--suite",
            "--quick",
            "--out-dir",
            "--no-write",
            "list",
            "compare",
        ],
    );
    assert_mentions(
        "ring produce --help",
        &ok(&["ring", "produce", "--help"]),
        &[
            "--id",
            "--slot",
            "--count",
            "--size",
            "--hold-claim",
            "--dwell-us",
            "--dir",
        ],
    );
    assert_mentions(
        "ring consume --help",
        &ok(&["ring", "consume", "-h"]),
        &[
            "--count",
            "--manual",
            "--progress",
            "--until-empty",
            "--dir",
        ],
    );
    assert_mentions(
        "ring create --help",
        &ok(&["ring", "create", "--help"]),
        &["--capacity", "--mpsc", "--dir"],
    );
    assert_mentions("shm gc --help", &ok(&["shm", "gc", "--help"]), &["--dir"]);
    assert_mentions(
        "codec --help",
        &ok(&["codec", "--help"]),
        &["encode", "decode"],
    );
}

#[test]
fn version_answers_everywhere() {
    let want = format!("erlmcp-flow {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(ok(&["--version"]).trim(), want);
    assert_eq!(ok(&["-V"]).trim(), want);
    assert_eq!(ok(&["version"]).trim(), want);
    for sub in [
        &["stat", "--version"][..],
        &["ring", "chaos", "--version"],
        &["bench", "compare", "--version"],
        &["shm", "list", "--version"],
    ] {
        let v = ok(sub);
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "{sub:?}: {v}");
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_argument() {
    let err = usage_error(&["stat", "--bogus"]);
    assert!(err.contains("--bogus"), "{err}");
    let err = usage_error(&["ring", "chaos", "--kills", "many"]);
    assert!(err.contains("--kills") && err.contains("many"), "{err}");
    let err = usage_error(&["bench", "compare", "a.json", "b.json", "--by", "speed"]);
    assert!(err.contains("--by") && err.contains("speed"), "{err}");
    let err = usage_error(&["bench", "--suite", "nope"]);
    assert!(err.contains("--suite") && err.contains("nope"), "{err}");
    let err = usage_error(&["stat", "--watch", "0"]);
    assert!(err.contains("--watch"), "{err}");
    let err = usage_error(&["ring", "consume", "r", "--manual"]);
    assert!(err.contains("--progress"), "{err}");
    let err = usage_error(&["ring", "frobnicate"]);
    assert!(err.contains("frobnicate"), "{err}");
    let err = usage_error(&["ring", "produce"]);
    assert!(err.contains("NAME"), "{err}");
    let err = usage_error(&["raft", "node", "--id", "1"]);
    assert!(err.contains("--peers"), "{err}");
    let err = usage_error(&["raft", "node", "--id", "1", "--peers", "1,2,3"]);
    assert!(err.contains("--data-dir"), "{err}");
    let err = usage_error(&[
        "raft",
        "node",
        "--id",
        "1",
        "--peers",
        "1,2,3",
        "--memory",
        "--transport",
        "tcp",
    ]);
    assert!(err.contains("--listen"), "{err}");
    let err = usage_error(&["raft", "node", "--id", "4", "--peers", "1,2,3", "--memory"]);
    assert!(err.contains("voters"), "{err}");
    let err = usage_error(&["raft", "status", "--peer-addr", "1:2"]);
    assert!(err.contains("ID=HOST:PORT"), "{err}");
    usage_error(&[]);
}

#[test]
fn raft_help_names_the_options() {
    assert_mentions(
        "raft node --help",
        &ok(&["raft", "node", "--help"]),
        &[
            "--id",
            "--peers",
            "--data-dir",
            "--memory",
            "--transport",
            "--net-dir",
            "--listen",
            "--peer-addr",
            "--client-addr",
        ],
    );
    for cmd in ["status", "put", "get"] {
        assert_mentions(
            &format!("raft {cmd} --help"),
            &ok(&["raft", cmd, "--help"]),
            &[
                "--nodes",
                "--net-dir",
                "--peer-addr",
                "--listen",
                "--timeout-ms",
            ],
        );
    }
    assert_mentions(
        "raft cluster --help",
        &ok(&["raft", "cluster", "--help"]),
        &["--nodes", "--dir", "--memory"],
    );
}

#[test]
fn real_commands_still_run() {
    let dir = std::env::temp_dir().join(format!("emf-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    assert_eq!(ok(&["shm", "list", "--dir", d]), "");
    // Options before and after the positional, as scripts and tests write them.
    let created = ok(&["ring", "create", "r", "--capacity", "16384", "--dir", d]);
    assert!(
        created.contains("created ring r (16384 bytes)"),
        "{created}"
    );
    assert_eq!(ok(&["shm", "list", "--dir", d]).trim(), "r");
    let out = ok(&[
        "ring", "produce", "--dir", d, "r", "--id", "3", "--count", "5",
    ]);
    assert_eq!(out, "");
    let stat = ok(&["stat", "r", "--dir", d]);
    assert!(stat.contains("ring r  capacity 16384  spsc"), "{stat}");
    assert!(stat.contains("sent 5  bytes 320"), "{stat}");
    assert!(ok(&["stat", "--dir", d]).contains("sent 5"));
    let got = ok(&["ring", "consume", "r", "--count", "5", "--dir", d]);
    assert!(
        got.contains("received 5 frames, all in order and intact"),
        "{got}"
    );
    // A runtime failure keeps its exit code 2 and message.
    let missing = run(&["stat", "nothing", "--dir", d]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("no rings found"));
    assert!(ok(&["bench", "list"]).contains("serializer"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reader that went away (`erlmcp-flow ... | head`) ends the command by SIGPIPE, as any Unix
/// filter, never by a panic. The pipe's read end is closed before the command starts, so its
/// first write fails for sure.
#[test]
fn a_closed_stdout_ends_the_command_without_a_panic() {
    use std::os::unix::io::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is the pipe's read end, just created and owned by nobody else.
    assert_eq!(unsafe { libc::close(fds[0]) }, 0);
    // SAFETY: fds[1] is the write end, owned from here on by the Stdio (closed once).
    let stdout = unsafe { std::process::Stdio::from_raw_fd(fds[1]) };
    let out = Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"))
        .args(["bench", "list"])
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run erlmcp-flow");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}
