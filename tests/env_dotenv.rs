//! Parity with python-dotenv itself (what the gateway parses `.env` with):
//! a corpus of the tricky cases plus a few hundred generated files, each
//! read by python-dotenv and by the daemon's parser, key → value maps
//! compared. Skipped (with a line saying so) where python-dotenv is not
//! installed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hermes_tenantd::envfile::dotenv;

type Map = BTreeMap<String, Option<String>>;

/// Reads each file as the gateway does (`utf-8`, then `latin-1` on a
/// decode error; no interpolation so raw values are compared).
const PY: &str = r#"
import json, sys
from dotenv import dotenv_values
out = []
for p in sys.argv[1:]:
    try:
        d = dotenv_values(p, interpolate=False, encoding="utf-8")
    except UnicodeDecodeError:
        d = dotenv_values(p, interpolate=False, encoding="latin-1")
    out.append(d)
print(json.dumps(out))
"#;

fn python_dotenv(paths: &[std::path::PathBuf]) -> Option<Vec<Map>> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .args(paths)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "python-dotenv not available ({}); skipping the parity check",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("python output"))
}

fn rust_dotenv(bytes: &[u8]) -> Map {
    dotenv::parse(bytes)
        .values()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
        .collect()
}

fn corpus() -> Vec<Vec<u8>> {
    let text: &[&str] = &[
        "A=1\rB=2\r\nC=3\n",
        "FOO=1\rAPI_SERVER_KEY=evil",
        "\x1cA\x1d=\x1e1\x1f\nB\x1c=x y \x1f\n\x1e\x1f\n",
        "M=\"l1\nl2\"\nS='a\r\nb'\nT=\"x\r\ny\"\rU=1",
        "export A=1\nexport  B='2'\nexportC=3\nexport\nexport =4\nexport\tD=5\n",
        "\u{feff}A=1\nB=2\n",
        "D=\"a\\nb\\t\\\"q\\\" \\\\ \\x \\a\\b\\f\\r\\v\\'\"\nS='a\\'b\\\\c\\n\\\"'\n",
        "# c\nA=1 # c\nB=1#c\nC='x' # c\nD= #x\n  # indented\nE=\"y\"# c\nF=a\t#b\n",
        "A=\nB=''\nC=\"\"\nD=   \nE= \t\n",
        "A\nB \nC=1\n  D  \n'E'\n",
        "=x\nA='unterminated\nB=2\n'k'ey=1\nC=\"x\"y\nD=4\n'=5\n''=6\n",
        "Ü=ü\nK=日本 # c\nL=a\u{2028}b\nM=\u{a0}v\u{a0}\nN=\u{3000}w\u{85}\n",
        "A=1\nB=2\nA=3\nB\n",
        "A='x\\'\nB=1\n",
        "A='x\\'\nB='y'\nC=3\n",
        "A=\"x\\\"\nB=\"y\"\nC=3\n",
        "A=x\x00y\nB=1\n",
        "   \n\n\t\n",
        "A=1 \\# not a comment\nB=a\\\n",
        "A = 1\nB= 2 \n C =3\n'D E' = 4\n",
    ];
    let mut v: Vec<Vec<u8>> = text.iter().map(|t| t.as_bytes().to_vec()).collect();
    v.push(b"A=\xe9t\xe9\nB='\xff'\n".to_vec()); // latin-1 fallback
    v.push(b"\xef\xbb\xbfK=1\nL=\xe9\n".to_vec()); // BOM, then latin-1
    v
}

/// Deterministic text from the characters that steer the parser.
fn generated(n: usize) -> Vec<Vec<u8>> {
    const PIECES: &[&str] = &[
        "A", "B", "K_1", "export ", "export\t", "=", "'", "\"", "\\", "#", " ", "\t", "\r", "\n",
        "\r\n", "\x1c", "\x1f", "\u{a0}", "\u{2028}", "\u{feff}", "é", "x", "${A}",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = (next() % 40) as usize;
            (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect::<String>()
                .into_bytes()
        })
        .collect()
}

fn write_all(dir: &Path, files: &[Vec<u8>]) -> Vec<std::path::PathBuf> {
    files
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p = dir.join(format!("{i}.env"));
            std::fs::write(&p, b).expect("write");
            p
        })
        .collect()
}

#[test]
fn parser_reads_what_python_dotenv_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = corpus();
    let corpus_len = files.len();
    files.extend(generated(400));
    let paths = write_all(dir.path(), &files);
    let Some(expected) = python_dotenv(&paths) else {
        return;
    };
    assert_eq!(expected.len(), files.len());
    let mut mismatches = Vec::new();
    for (i, (bytes, want)) in files.iter().zip(&expected).enumerate() {
        let got = rust_dotenv(bytes);
        if &got != want {
            mismatches.push(format!(
                "{} {:?}\n  python: {want:?}\n  rust:   {got:?}",
                if i < corpus_len {
                    "corpus"
                } else {
                    "generated"
                },
                String::from_utf8_lossy(bytes)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The case the daemon's sanitizer once missed.
    assert_eq!(
        expected[1].get("API_SERVER_KEY"),
        Some(&Some("evil".to_owned()))
    );
}
