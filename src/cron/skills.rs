//! A job's `skills`, loaded for its firing: the gateway's runs API has no
//! skills field, so the named skills' `SKILL.md` go into the run's
//! `instructions`, as Hermes' own cron preloads a job's skills into the
//! agent's prompt.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::store::StoreResult;

/// Most bytes of one `SKILL.md` taken (the rest is cut, and said).
const MAX_SKILL_BYTES: usize = 64 * 1024;
/// Most bytes of instructions built from skills.
const MAX_TOTAL_BYTES: usize = 128 * 1024;

/// The file as text, read with the skills index's cap and without
/// following a symlink; `None` when it cannot be (the caller logs).
fn read_skill_md(file: &Path) -> Option<String> {
    let bytes = crate::agent_file::read_capped(file, crate::skills::MAX_SKILL_MD_BYTES)
        .ok()
        .flatten()?;
    String::from_utf8(bytes).ok()
}

/// `(name, directory under the skills tree)` of the indexed, well-formed
/// skills with these names; names not found are left out.
pub fn locate(conn: &Connection, names: &[String]) -> StoreResult<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT path FROM skills WHERE name = ?1 AND error IS NULL ORDER BY path LIMIT 1",
    )?;
    let mut out = Vec::new();
    for name in names {
        let path: Option<String> = stmt.query_row([name], |r| r.get(0)).optional()?;
        if let Some(p) = path {
            out.push((name.clone(), p));
        }
    }
    Ok(out)
}

/// The instructions for a firing: each found skill's `SKILL.md` under a
/// heading, within the size caps; `None` when none could be read. Names
/// that are not installed are listed so the agent (and whoever reads the
/// run) knows. Blocking (reads files).
pub fn instructions(
    skills_dir: &Path,
    wanted: &[String],
    found: &[(String, String)],
) -> Option<String> {
    let mut out = String::from(
        "The following skills are loaded for this scheduled task; follow them where they apply.\n",
    );
    let mut loaded = 0;
    for (name, dir) in found {
        let file = skills_dir.join(dir).join("SKILL.md");
        let Some(text) = read_skill_md(&file) else {
            tracing::warn!(skill = %name, path = %file.display(), "cron: cannot read a job's skill; left out");
            continue;
        };
        let mut body = text.as_str();
        let mut cut = false;
        if body.len() > MAX_SKILL_BYTES {
            let mut end = MAX_SKILL_BYTES;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body = &body[..end];
            cut = true;
        }
        if out.len() + body.len() > MAX_TOTAL_BYTES {
            tracing::warn!(skill = %name, "cron: a job's skills exceed the size cap; left out");
            continue;
        }
        out.push_str(&format!("\n## Skill: {name}\n\n{body}\n"));
        if cut {
            out.push_str("\n(cut at 64 KiB)\n");
        }
        loaded += 1;
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|w| !found.iter().any(|(n, _)| n == *w))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        tracing::warn!(skills = ?missing, "cron: a job names skills that are not installed");
        out.push_str(&format!(
            "\n(Not installed, so not loaded: {}.)\n",
            missing.join(", ")
        ));
    }
    (loaded > 0 || !missing.is_empty()).then_some(out)
}
