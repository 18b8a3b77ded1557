//! The README, run as written: every `sh` block, in order, from a copy of the repository's root
//! against a running stack, as a newcomer would type them after its first command.
//!
//! What the test changes, and only this: the blocks' `127.0.0.1` ports become free ones (the
//! stack's five to the stack's, any other to a port picked here), since tests bind port 0;
//! `cargo run -p strangler -- ARGS` runs the binary this test was built with (the same
//! command, already built); `curl` fails on an HTTP error answer. A block may be preceded by
//! `<!-- readme-test: skip REASON -->` (it is not run: the reason says what covers it) or
//! `<!-- readme-test: background URL -->` (its command serves until stopped: it must answer
//! URL, then it is stopped). After the blocks, the effects the README's text promises are
//! checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::BIN;

/// How a block is run.
#[derive(Debug)]
enum Mode {
    Run,
    Background(String),
    Skip(String),
}

#[derive(Debug)]
struct Block {
    /// The line of its opening fence (1-based).
    line: usize,
    text: String,
    mode: Mode,
}

/// The `sh` blocks of a Markdown text, each with the annotation before its fence.
fn blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        let annotation = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- readme-test:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(str::trim);
        let mode = match annotation {
            None => Mode::Run,
            Some(a) => match a.split_once(' ') {
                Some(("skip", reason)) => Mode::Skip(reason.trim().to_owned()),
                Some(("background", url)) => Mode::Background(url.trim().to_owned()),
                _ => panic!("README line {i}: unknown readme-test annotation {a:?}"),
            },
        };
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or_else(|| panic!("README line {}: unclosed block", i + 1));
        found.push(Block {
            line: i + 1,
            text: lines[i + 1..end].join("\n"),
            mode,
        });
        i = end + 1;
    }
    found
}

/// `text` with every `127.0.0.1:PORT` mapped through `ports` (a port not in it gets a free
/// one, remembered).
fn with_ports(text: &str, ports: &mut HashMap<u16, u16>) -> String {
    const HOST: &str = "127.0.0.1:";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(HOST) {
        out.push_str(&rest[..at + HOST.len()]);
        rest = &rest[at + HOST.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<u16>() {
            Ok(port) => {
                let mapped = *ports.entry(port).or_insert_with(free_port);
                out.push_str(&mapped.to_string());
            }
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Shell functions every block runs with (see the module's documentation).
const PRELUDE: &str = r#"set -euo pipefail
cargo() {
  if [ "$#" -ge 4 ] && [ "$1 $2 $3 $4" = "run -p strangler --" ]; then
    shift 4
    "$STRANGLER_BIN" "$@"
  else
    echo "the README test runs 'cargo run -p strangler -- ...' only, not: cargo $*" >&2
    return 97
  fi
}
curl() { command curl --fail-with-body --show-error --max-time 60 "$@"; }
"#;

/// A copy of the repository's root for the blocks to run in: a folder whose entries link to
/// the repository's, without its `.strangler-stack` (a user's running stack is not touched)
/// and `target`.
fn workspace_copy() -> tempfile::TempDir {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if [".strangler-stack", "target", ".git"].contains(&name.to_str().unwrap_or_default()) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).unwrap();
    }
    dir
}

/// A process group this test started; stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Group(Child);

impl Group {
    fn spawn(command: &mut Command) -> Group {
        use std::os::unix::process::CommandExt as _;
        Group(command.process_group(0).spawn().unwrap())
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
    }

    /// Waits for its exit until `deadline`; `None` if it still runs.
    fn wait_until(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        self.signal("-TERM");
        if self
            .wait_until(Instant::now() + Duration::from_secs(10))
            .is_none()
        {
            self.signal("-KILL");
            let _ = self.0.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// `strangler stack` started as the README's first command does, in `dir`, on free ports; its
/// base URLs by the names it prints them with.
pub(crate) fn start_stack(dir: &Path, log: &Path) -> (Group, HashMap<String, String>) {
    let any = "127.0.0.1:0";
    let stack = Group::spawn(
        Command::new(BIN)
            .arg("stack")
            .args(["--listen", any, "--admin-listen", any])
            .args(["--monolith-listen", any, "--service-listen", any])
            .args(["--contracts-listen", any])
            .args([
                "--inventory-listen",
                any,
                "--inventory-contracts-listen",
                any,
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    let labels = [
        "proxy",
        "admin API",
        "monolith",
        "catalog",
        "contracts",
        "inventory-contracts",
        "inventory",
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let urls: HashMap<String, String> = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let label = labels.iter().find(|l| line.starts_with(**l))?;
                let url = line[label.len()..].split_whitespace().next()?;
                url.starts_with("http://")
                    .then(|| ((*label).to_owned(), url.to_owned()))
            })
            .collect();
        if urls.len() == labels.len() {
            return (stack, urls);
        }
        assert!(
            Instant::now() < deadline,
            "the stack did not say where it listens:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// The block's shell, in `dir`, with nothing of this process's environment but the basics.
fn shell(dir: &Path, text: &str, admin: &str) -> Command {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("{PRELUDE}\n{text}"))
        .current_dir(dir)
        .env_clear()
        .env("STRANGLER_BIN", BIN)
        // The CLI's default admin URL is the README's 127.0.0.1:9001: mapped like the ports.
        .env("STRANGLER_ADMIN_URL", admin);
    for name in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// The block's shell started in its own process group, its output into a log file.
fn start_block(dir: &Path, block: &Block, text: &str, admin: &str) -> (Group, PathBuf) {
    let log = dir.join(format!(".readme-block-{}.log", block.line));
    let file = std::fs::File::create(&log).unwrap();
    let group = Group::spawn(
        shell(dir, text, admin)
            .stdout(file.try_clone().unwrap())
            .stderr(file),
    );
    (group, log)
}

fn run_block(dir: &Path, block: &Block, text: &str, admin: &str) {
    let (mut group, out) = start_block(dir, block, text, admin);
    let status = group.wait_until(Instant::now() + Duration::from_secs(180));
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "README block at line {} failed ({status}):\n{text}\n--- its output:\n{output}",
            block.line
        ),
        None => panic!(
            "README block at line {} did not finish in 180 s:\n{text}\n--- its output:\n{output}",
            block.line
        ),
    }
}

async fn run_background(dir: &Path, block: &Block, text: &str, url: &str, admin: &str) {
    let (mut group, log) = start_block(dir, block, text, admin);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            panic!(
                "README block at line {} exited ({status}) instead of serving {url}:\n{text}\n--- its output:\n{}",
                block.line,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Ok(answer) = http.get(url).send().await {
            if answer.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "README block at line {} never answered {url}:\n{text}\n--- its output:\n{}",
            block.line,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    group.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_readme_runs_as_written_against_the_stack() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let blocks = blocks(&readme);
    let run = blocks
        .iter()
        .filter(|b| !matches!(b.mode, Mode::Skip(_)))
        .count();
    assert!(
        run >= 10,
        "found only {run} runnable sh blocks in the README: {blocks:#?}"
    );
    for block in &blocks {
        if let Mode::Skip(reason) = &block.mode {
            assert!(
                reason.len() > 10,
                "README line {}: a skipped block says why",
                block.line
            );
        }
    }

    let dir = workspace_copy();
    let (_stack, urls) = start_stack(dir.path(), &dir.path().join(".readme-stack.log"));
    let mut ports: HashMap<u16, u16> = [
        (9000, "proxy"),
        (9001, "admin API"),
        (8080, "monolith"),
        (8081, "catalog"),
        (8082, "contracts"),
        (8084, "inventory"),
        (8085, "inventory-contracts"),
    ]
    .into_iter()
    .map(|(port, name)| (port, port_of(&urls[name])))
    .collect();
    let admin = &urls["admin API"];
    for block in &blocks {
        let text = with_ports(&block.text, &mut ports);
        match &block.mode {
            Mode::Skip(_) => {}
            Mode::Run => run_block(dir.path(), block, &text, admin),
            Mode::Background(url) => {
                let url = with_ports(url, &mut ports);
                run_background(dir.path(), block, &text, &url, admin).await;
            }
        }
    }

    // What the text says the blocks did.
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let audit = get(format!("{admin}/audit?carveout=catalog&limit=100")).await;
    let reasons: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for reason in [
        "compare first",
        "half the callers",
        "compare before the canary",
        "first 10 %",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "the audit log lacks the README's {reason:?}: {reasons:?}"
        );
    }
    // Cut over and rolled back to a canary of 10 % ...
    let back = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("errors after the cut-over"))
        })
        .unwrap_or_else(|| panic!("no roll-back in the audit log: {audit}"));
    assert_eq!(back["to"], "canary 10.00%", "{back}");
    assert!(
        reasons.iter().any(|r| r.contains("passed its contracts")),
        "no cut-over in the audit log: {reasons:?}"
    );
    // ... then a rollout that went through every step (paused and resumed on the way), and
    // one that rolled itself back when half the service's answers failed.
    let by_rollout: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["actor"] == "rollout")
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        by_rollout,
        [
            "shadow",
            "canary 10.00%",
            "canary 50.00%",
            "canary 100.00%",
            "shadow",
            "monolith"
        ],
        "{audit}"
    );
    let rollout = get(format!("{admin}/carveouts/catalog/rollout")).await;
    assert_eq!(rollout["state"], "halted", "{rollout}");
    let last = &audit.as_array().unwrap()[0];
    assert_eq!(
        (last["actor"].as_str(), last["to"].as_str()),
        (Some("rollout"), Some("monolith")),
        "{last}"
    );
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("mismatch_rate check failed"),
        "{last}"
    );
    let faults = get(format!("{}/_faults", urls["catalog"])).await;
    assert_eq!(
        faults["fail_percent"], 0,
        "the README clears the faults: {faults}"
    );
    // The contract verification it reported is green.
    let status = get(format!("{admin}/carveouts/catalog/status")).await;
    assert_eq!(status["contracts"]["passed"], true, "{status}");
    // And the data sync's latest verify, clean.
    let verified = &status["sync"]["last_verify"];
    assert_eq!(verified["clean"], true, "{status}");
    assert!(verified["rows_compared"].as_i64() > Some(0), "{status}");
    // The order placed through the proxy, once.
    let orders = get(format!("{}/orders?customer_id=1", urls["proxy"])).await;
    assert_eq!(
        orders["items"].as_array().map(Vec::len),
        Some(1),
        "{orders}"
    );
    // Recorded, captured and reported files where the README says.
    let stack_dir = dir.path().join(".strangler-stack");
    let pact: Value = serde_json::from_str(
        &std::fs::read_to_string(stack_dir.join("shop-web-catalog.json")).unwrap(),
    )
    .unwrap();
    assert!(
        pact["interactions"].as_array().unwrap().len() >= 5,
        "{pact}"
    );
    // The rollout plan the README shows is the one the stack runs.
    let shown = readme
        .lines()
        .find(|l| l.starts_with("rollout = {"))
        .expect("the README shows the stack's rollout plan");
    let written = std::fs::read_to_string(stack_dir.join("strangler.toml")).unwrap();
    assert!(
        written.lines().any(|l| l == shown),
        "{shown}\n---\n{written}"
    );
    for file in ["catalog.script.toml", "contracts.xml", "drift.json"] {
        assert!(stack_dir.join(file).exists(), "{file} was not written");
    }
}

#[test]
fn the_readme_blocks_are_read_with_their_annotations() {
    let text = "x\n```sh\necho a\n```\n<!-- readme-test: skip covered elsewhere -->\n\n```sh\necho b\n```\n<!-- readme-test: background http://127.0.0.1:8090/readyz -->\n```sh\nserve\n```\n";
    let found = blocks(text);
    assert_eq!(found.len(), 3);
    assert!(matches!(found[0].mode, Mode::Run));
    assert!(matches!(&found[1].mode, Mode::Skip(r) if r == "covered elsewhere"));
    assert!(matches!(&found[2].mode, Mode::Background(u) if u == "http://127.0.0.1:8090/readyz"));
    let mut ports = HashMap::from([(9000, 40000)]);
    let mapped = with_ports(
        "curl 127.0.0.1:9000/a 127.0.0.1:8090 127.0.0.1:8090",
        &mut ports,
    );
    let other = ports[&8090];
    assert_eq!(
        mapped,
        format!("curl 127.0.0.1:40000/a 127.0.0.1:{other} 127.0.0.1:{other}")
    );
}
