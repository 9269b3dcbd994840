//! The documented commands run as shown: every example in the CLI's `--help` output and every
//! command in the README's Kubernetes section, each through `bash` in a scratch directory that
//! holds `k8s/` and `envoy/` (the repository's), with the built `outgoing-auth` and a stand-in `kubectl` on
//! PATH. README console blocks must also print exactly what they show.

// Test code: a panic is how a test fails.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// `kubectl get ... -o yaml` prints the repository's examples as a `kind: List` (written by
/// [`scratch`]); `kubectl apply -f -` reads a manifest and fails unless it names a kind.
const KUBECTL: &str = r#"#!/bin/sh
case "$1" in
  get) exec cat "$(dirname "$0")/kubectl-get.yaml" ;;
  apply) [ "$2" = "-f" ] && [ "$3" = "-" ] || { echo "kubectl stand-in: only apply -f -" >&2; exit 2; }
         grep -q '^kind: ' || { echo "kubectl stand-in: no manifest on stdin" >&2; exit 1; }
         echo "applied" ;;
  *) echo "kubectl stand-in: only get and apply" >&2; exit 2 ;;
esac
"#;

struct Scratch {
    dir: PathBuf,
    path: String,
}

fn scratch(name: &str) -> Scratch {
    let dir =
        std::env::temp_dir().join(format!("outgoing-auth-docs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for folder in ["k8s", "envoy"] {
        std::os::unix::fs::symlink(Path::new(REPO).join(folder), dir.join(folder)).unwrap();
    }
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_outgoing-auth"),
        bin.join("outgoing-auth"),
    )
    .unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(&kubectl, KUBECTL).unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(bin.join("kubectl-get.yaml"), kubectl_list()).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Scratch { dir, path }
}

/// The example resources as `kubectl get -o yaml` prints several: one `kind: List`.
fn kubectl_list() -> String {
    let mut items = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(Path::new(REPO).join("k8s/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        items.push(serde_saphyr::from_str::<serde_json::Value>(&text).unwrap());
    }
    serde_saphyr::to_string(
        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    .unwrap()
}

/// Runs `command` with bash in `s`, stderr into stdout; (exit status, output).
fn sh(s: &Scratch, command: &str) -> (i32, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("exec 2>&1\n{command}"))
        .current_dir(&s.dir)
        .env("PATH", &s.path)
        .env_remove("TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS")
        .env_remove("TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The commands under `Example:` / `Examples:` in a help text: each starts indented by two
/// spaces; a line ending in `\` goes on on the next (indented by four).
fn help_examples(help: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut lines = help.lines().skip_while(|l| !l.starts_with("Example"));
    lines.next();
    for line in lines {
        if line.trim().is_empty() {
            break;
        }
        match out.last_mut() {
            Some(last) if last.ends_with('\\') => {
                last.push('\n');
                last.push_str(line);
            }
            _ => out.push(line.trim_start().to_owned()),
        }
    }
    out
}

#[test]
fn every_help_example_runs_as_shown() {
    let mut checked = 0;
    for command in ["validate", "convert", "crd"] {
        let out = Command::new(env!("CARGO_BIN_EXE_outgoing-auth"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        let examples = help_examples(&help);
        assert!(!examples.is_empty(), "`{command} --help` has no example");
        // in order, in one directory: a later example may read what an earlier one wrote
        let s = scratch(&format!("help-{command}"));
        for example in examples {
            let (code, output) = sh(&s, &example);
            assert_eq!(code, 0, "`{command} --help` example:\n{example}\n{output}");
            assert!(
                !output.lines().any(|l| l.starts_with("error:")),
                "`{command} --help` example:\n{example}\n{output}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} help examples");
}

/// The README's Kubernetes section, up to the next `## ` heading.
fn kubernetes_section() -> String {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let start = readme
        .find("\n## Kubernetes\n")
        .expect("README has a Kubernetes section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// The fenced blocks of `text` with the given info string.
fn blocks<'a>(text: &'a str, info: &str) -> Vec<&'a str> {
    text.split(&format!("```{info}\n"))
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .collect()
}

#[test]
fn every_readme_kubernetes_command_runs_as_shown() {
    let section = kubernetes_section();
    let s = scratch("readme");
    let mut checked = 0;

    // ```sh blocks: one command a line, with an optional `# comment`; each must succeed
    for block in blocks(&section, "sh") {
        for line in block.lines() {
            let command = line.split("  #").next().unwrap().trim();
            if command.is_empty() {
                continue;
            }
            if let Some(target) = command.strip_prefix("make ") {
                // a Makefile target that installs the CLI: it must exist and use cargo install
                // (the binary under test stands in for the installed one)
                let target = target.split_whitespace().next().unwrap();
                let out = Command::new("make")
                    .args(["-n", "-C", REPO, target])
                    .output()
                    .unwrap();
                let plan = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "README: make {target}: no such target"
                );
                assert!(
                    plan.contains("cargo install"),
                    "README: make {target}:\n{plan}"
                );
                checked += 1;
                continue;
            }
            let (code, output) = sh(&s, command);
            assert_eq!(code, 0, "README: {command}\n{output}");
            checked += 1;
        }
    }

    // ```console blocks: `$ command` (continued by a trailing `\`) and what it prints
    for block in blocks(&section, "console") {
        let mut lines = block.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(first) = line.strip_prefix("$ ") else {
                continue;
            };
            let mut command = first.to_owned();
            while command.ends_with('\\') {
                command.push('\n');
                command.push_str(lines.next().unwrap());
            }
            let mut expected = String::new();
            while let Some(l) = lines.peek() {
                if l.starts_with("$ ") {
                    break;
                }
                expected.push_str(lines.next().unwrap());
                expected.push('\n');
            }
            let (code, output) = sh(&s, &command);
            assert_eq!(
                output.trim_end(),
                expected.trim_end(),
                "README: $ {command}"
            );
            let fails = expected.lines().any(|l| l.starts_with("error:"));
            assert_eq!(code != 0, fails, "README: $ {command}: exit status {code}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} README commands");
}
