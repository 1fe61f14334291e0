//! The READMEs against the tree: scripts/README.md's table of promises names, for each one,
//! the test that proves it (every name it gives must be a test in this workspace), and each
//! crate's README names every source file of the crate in its Layout.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .into()
}

/// The file that holds a test, from the name `cargo nextest list` prints: `<crate>::api` for a
/// crate's integration tests (`tests/api/`), `<crate>` for its unit tests (`src/`).
fn file_of(binary: &str, test: &str) -> (PathBuf, String) {
    let mut path: Vec<&str> = test.split("::").collect();
    let name = path.pop().expect("a test name").to_string();
    let (krate, integration) = match binary.strip_suffix("::api") {
        Some(krate) => (krate, true),
        None => (binary, false),
    };
    if path.last() == Some(&"tests") {
        path.pop();
    }
    let dir = root()
        .join(krate)
        .join(if integration { "tests/api" } else { "src" });
    let file = match path.as_slice() {
        [] if integration => dir.join("main.rs"),
        [] => dir.join("lib.rs"),
        modules => {
            let flat = dir.join(format!("{}.rs", modules.join("/")));
            if flat.exists() {
                flat
            } else {
                dir.join(modules.join("/")).join("mod.rs")
            }
        }
    };
    (file, name)
}

#[test]
fn every_test_the_readme_table_names_exists() {
    let readme =
        std::fs::read_to_string(root().join("scripts/README.md")).expect("scripts/README.md");
    let start = readme
        .find("### Each promise and the test that proves it")
        .expect("scripts/README.md has the table of promises");
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let rows: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Promise"))
        .collect();
    assert!(rows.len() >= 40, "{} rows", rows.len());
    let mut missing = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!(cells.len(), 3, "three columns: {row}");
        let names: Vec<&str> = cells[1].split('`').skip(1).step_by(2).collect();
        assert!(!names.is_empty(), "a row without a test: {row}");
        for full in names {
            // A check run by scripts/test.sh rather than nextest is named by its script.
            if full.starts_with("scripts/") {
                if !root().join(full).is_file() {
                    missing.push(format!("{full} (no such script)"));
                }
                continue;
            }
            let (binary, test) = full
                .split_once(' ')
                .unwrap_or_else(|| panic!("`<binary> <test>` as nextest prints it: {full}"));
            let (file, name) = file_of(binary, test);
            let source = std::fs::read_to_string(&file).unwrap_or_default();
            if !source.contains(&format!("fn {name}(")) {
                missing.push(format!("{full} (looked in {})", file.display()));
            }
        }
    }
    assert!(missing.is_empty(), "not found:\n{}", missing.join("\n"));
}

/// The source files under `<krate>/src`, relative to it (`http/mod.rs`).
fn sources(krate: &str) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("src readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(base).expect("under src");
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let base = root().join(krate).join("src");
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out.sort();
    out
}

/// Each crate's README (`<crate>/README.md`) names, in its Layout section's block, every source
/// file of the crate and no file that is not there.
#[test]
fn the_readme_layout_names_every_source_file_and_only_those() {
    let mut problems = Vec::new();
    for krate in ["events", "command-service", "query-service"] {
        let path = root().join(krate).join("README.md");
        let readme = std::fs::read_to_string(&path).expect("the crate's README.md");
        let start = readme.find("## Layout").expect("a Layout section");
        let block = &readme[start..];
        let block = &block[block.find("```").expect("a block") + 3..];
        let text = &block[..block.find("```").expect("the block ends")];
        let files = sources(krate);
        for file in &files {
            if !text.contains(file.as_str()) {
                problems.push(format!("{krate}/src/{file} is not in the layout"));
            }
        }
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == ';') {
            let word = word
                .trim_matches(|c: char| !c.is_alphanumeric() && c != '_' && c != '/' && c != '.');
            if word.ends_with(".rs") && !files.iter().any(|f| f == word) {
                problems.push(format!(
                    "the layout names {krate}/src/{word}, which does not exist"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
