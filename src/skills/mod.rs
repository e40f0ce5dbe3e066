//! The skills index: every `SKILL.md` under `<hermes home>/skills`, parsed
//! and kept in SQLite with FTS5 over name and description. The watcher
//! (`watcher`) keeps it current; this module holds the parsing, the disk
//! scan and the SQL. Skills sit at `skills/<skill>/SKILL.md` (no category)
//! or `skills/<category>/<skill>/SKILL.md`; names starting with `.` are
//! not scanned (Hermes keeps hub metadata there).

pub mod scan;
pub mod watcher;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value as Json;

use crate::store::conversations::Page;
use crate::store::{StoreError, StoreResult, cursor, ms_to_rfc3339, now_ms};

pub use scan::{DiskSkill, Indexed, MAX_SKILL_MD_BYTES, read_skill, read_skill_md, scan_disk};
/// Front matter limits from Hermes Agent's documentation.
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// The `{category}` path segment that stands for "no category".
pub const NO_CATEGORY: &str = "_";

/// What a `SKILL.md` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub name: String,
    pub description: String,
    pub front_matter: Json,
    pub error: Option<String>,
}

/// Parse `SKILL.md`. Never fails: a problem is reported in `error`, with
/// the directory name standing in for a missing name.
pub fn parse_skill_md(text: &str, dir_name: &str) -> Parsed {
    let mut p = Parsed {
        name: dir_name.to_owned(),
        description: String::new(),
        front_matter: Json::Object(Default::default()),
        error: None,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    if lines.next().map(str::trim_end) != Some("---") {
        p.error = Some("SKILL.md does not start with a `---` YAML front matter block".into());
        return p;
    }
    let mut yaml = String::new();
    let mut closed = false;
    for line in lines {
        if matches!(line.trim_end(), "---" | "...") {
            closed = true;
            break;
        }
        yaml.push_str(line);
    }
    if !closed {
        p.error = Some("the YAML front matter is not closed by a `---` line".into());
        return p;
    }
    let value = match crate::bounded_yaml::from_str(&yaml) {
        Ok(v) => v,
        Err(e) => {
            p.error = Some(match e.location() {
                Some(l) => format!(
                    "front matter is not valid YAML (line {}, column {}): {}",
                    l.line() + 1,
                    l.column(),
                    first_line(&e.to_string())
                ),
                None => format!(
                    "front matter is not valid YAML: {}",
                    first_line(&e.to_string())
                ),
            });
            return p;
        }
    };
    let json = match serde_json::to_value(&value) {
        Ok(j @ Json::Object(_)) => j,
        Ok(Json::Null) => Json::Object(Default::default()),
        Ok(_) => {
            p.error = Some("front matter is not a mapping".into());
            return p;
        }
        Err(e) => {
            p.error = Some(format!("front matter cannot be represented as JSON: {e}"));
            return p;
        }
    };
    let mut problems = Vec::new();
    match json.get("name") {
        Some(Json::String(n)) if !n.trim().is_empty() => {
            if n.chars().count() > MAX_NAME_CHARS {
                problems.push(format!("`name` is longer than {MAX_NAME_CHARS} characters"));
            }
            p.name = n.trim().to_owned();
        }
        Some(_) => problems.push("`name` must be a non-empty string".into()),
        None => problems.push("`name` is missing".into()),
    }
    match json.get("description") {
        Some(Json::String(d)) if !d.trim().is_empty() => {
            if d.chars().count() > MAX_DESCRIPTION_CHARS {
                problems.push(format!(
                    "`description` is longer than {MAX_DESCRIPTION_CHARS} characters"
                ));
            }
            p.description = d.trim().to_owned();
        }
        Some(_) => problems.push("`description` must be a non-empty string".into()),
        None => problems.push("`description` is missing".into()),
    }
    if !problems.is_empty() {
        p.error = Some(problems.join("; "));
    }
    p.front_matter = json;
    p
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// What the last scans left out, shared by the watcher (writer) and the
/// API (`GET /skills` says `truncated`).
#[derive(Debug, Default)]
pub struct IndexStatus {
    truncated: AtomicBool,
}

impl IndexStatus {
    pub fn truncated(&self) -> bool {
        self.truncated.load(Ordering::Relaxed)
    }

    pub fn set_truncated(&self, v: bool) {
        self.truncated.store(v, Ordering::Relaxed);
    }
}

// ---- SQL ------------------------------------------------------------------------

/// `path = scope OR path under scope/`, without LIKE's wildcards: `/` is
/// 0x2F and `0` is 0x30, so `[scope/, scope0)` is exactly "under scope/".
const SCOPE_SQL: &str = "(?1 IS NULL OR path = ?1 OR (path >= ?1 || '/' AND path < ?1 || '0'))";

/// What the index holds for a scope: path → (size, mtime, hash).
pub fn known(
    conn: &Connection,
    scope: Option<&str>,
) -> StoreResult<HashMap<String, (u64, i64, String)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT path, file_size, file_mtime, content_hash FROM skills WHERE {SCOPE_SQL}"
    ))?;
    let rows = stmt.query_map(params![scope], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ),
        ))
    })?;
    let mut map = HashMap::new();
    for row in rows {
        let (k, v) = row?;
        map.insert(k, v);
    }
    Ok(map)
}

/// How many skills the index holds.
pub fn count(conn: &Connection) -> StoreResult<usize> {
    let n: i64 = conn.query_row("SELECT count(*) FROM skills", [], |r| r.get(0))?;
    Ok(n.max(0) as usize)
}

/// Write upserts and deletes in one transaction.
pub fn apply(conn: &mut Connection, upserts: &[Indexed], deletes: &[String]) -> StoreResult<()> {
    let tx = conn.transaction()?;
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO skills (path, name, category, description, front_matter, content_hash, error, file_size, file_mtime, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (path) DO UPDATE SET
                name = excluded.name, category = excluded.category,
                description = excluded.description, front_matter = excluded.front_matter,
                error = excluded.error, file_size = excluded.file_size, file_mtime = excluded.file_mtime,
                updated_at = CASE WHEN skills.content_hash = excluded.content_hash
                                  THEN skills.updated_at ELSE excluded.updated_at END,
                content_hash = excluded.content_hash",
        )?;
        let now = now_ms();
        for s in upserts {
            up.execute(params![
                s.disk.path,
                s.parsed.name,
                s.disk.category,
                s.parsed.description,
                s.parsed.front_matter.to_string(),
                s.content_hash,
                s.parsed.error,
                s.disk.size as i64,
                s.disk.mtime_ns,
                now,
            ])?;
        }
        let mut del = tx.prepare_cached("DELETE FROM skills WHERE path = ?1")?;
        for p in deletes {
            del.execute([p])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A skill as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Skill {
    pub name: String,
    pub category: Option<String>,
    pub description: String,
    /// Directory relative to the skills tree.
    pub path: String,
    pub enabled: bool,
    pub use_count: i64,
    pub content_hash: String,
    pub updated_at: String,
    pub front_matter: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Filters of `GET /skills`.
#[derive(Debug, Clone, Default)]
pub struct SkillFilter {
    /// `Some(None)`: skills without a category.
    pub category: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub query: Option<String>,
}

/// Words as an FTS5 prefix query: `arx pap` → `"arx"* "pap"*` (all must
/// match). Never an FTS5 syntax error.
pub fn prefix_query(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.replace('"', ""))
        .filter(|w| !w.is_empty())
        .take(16)
        .map(|w| format!("\"{w}\"*"))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// A page of skills sorted by name then path.
pub fn list(
    conn: &Connection,
    filter: &SkillFilter,
    disabled: &[String],
    limit: u32,
    after: Option<&str>,
) -> StoreResult<Page<Skill>> {
    // `cursor=` (empty) is the first page, as on every paginated route.
    let (after_name, after_path) = match after.filter(|c| !c.is_empty()) {
        Some(c) => {
            let f = cursor::fields(c, 2)?;
            (Some(f[0].clone()), Some(f[1].clone()))
        }
        None => (None, None),
    };
    let disabled_json = serde_json::to_string(disabled).unwrap_or_else(|_| "[]".into());
    let (cat_filter, cat_value) = match &filter.category {
        None => (0, None),
        Some(None) => (1, None),
        Some(Some(c)) => (2, Some(c.clone())),
    };
    let query = filter.query.as_deref().and_then(prefix_query);
    let sql = "
        SELECT path, name, category, description, front_matter, content_hash, error, use_count, updated_at,
               name NOT IN (SELECT value FROM json_each(?1)) AS enabled
        FROM skills
        WHERE (?2 = 0 OR (?2 = 1 AND category IS NULL) OR (?2 = 2 AND category = ?3))
          AND (?4 IS NULL OR (name NOT IN (SELECT value FROM json_each(?1))) = ?4)
          AND (?5 IS NULL OR id IN (SELECT rowid FROM skills_fts WHERE skills_fts MATCH ?5))
          AND (?6 IS NULL OR name > ?6 OR (name = ?6 AND path > ?7))
        ORDER BY name, path
        LIMIT ?8";
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(
        params![
            disabled_json,
            cat_filter,
            cat_value,
            filter.enabled,
            query,
            after_name,
            after_path,
            limit as i64 + 1
        ],
        |r| {
            let fm: String = r.get(4)?;
            Ok(Skill {
                path: r.get(0)?,
                name: r.get(1)?,
                category: r.get(2)?,
                description: r.get(3)?,
                front_matter: serde_json::from_str(&fm).unwrap_or(Json::Null),
                content_hash: r.get(5)?,
                error: r.get(6)?,
                use_count: r.get(7)?,
                updated_at: ms_to_rfc3339(r.get(8)?),
                enabled: r.get(9)?,
            })
        },
    )?;
    let mut items = rows.collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|s| cursor::encode(&format!("{}|{}", s.name, s.path)))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Whether any indexed skill has this name.
pub fn name_exists(conn: &Connection, name: &str) -> StoreResult<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM skills WHERE name = ?1 LIMIT 1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The directory of the skill at `category/skill` (`_` for none).
pub fn find_dir(conn: &Connection, category: &str, skill: &str) -> StoreResult<String> {
    let path = if category == NO_CATEGORY {
        skill.to_owned()
    } else {
        format!("{category}/{skill}")
    };
    conn.query_row("SELECT path FROM skills WHERE path = ?1", [&path], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no skill `{path}`")))
}

/// A skill as the agent card lists it.
#[derive(Debug, Clone)]
pub struct CardSkill {
    pub name: String,
    pub description: String,
    pub category: Option<String>,
    pub tags: Vec<String>,
}

/// Enabled, well-formed skills for the agent card.
pub fn for_card(conn: &Connection, disabled: &[String], limit: u32) -> StoreResult<Vec<CardSkill>> {
    let disabled: HashSet<&str> = disabled.iter().map(String::as_str).collect();
    let mut stmt = conn.prepare_cached(
        "SELECT name, description, category, front_matter FROM skills
         WHERE error IS NULL ORDER BY name, path",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, description, category, fm) = row?;
        if disabled.contains(name.as_str()) {
            continue;
        }
        let fm: Json = serde_json::from_str(&fm).unwrap_or(Json::Null);
        let tags = fm
            .pointer("/metadata/hermes/tags")
            .or_else(|| fm.get("tags"))
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.push(CardSkill {
            name,
            description,
            category,
            tags,
        });
        if out.len() >= limit as usize {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_fields_are_kept() {
        let p = parse_skill_md(
            "---\nname: arxiv\ndescription: Search papers\nversion: 1.2.0\nplatforms: [linux]\nmetadata:\n  hermes:\n    tags: [research]\n---\n# Body\n",
            "dir",
        );
        assert_eq!(p.error, None);
        assert_eq!(p.name, "arxiv");
        assert_eq!(p.description, "Search papers");
        assert_eq!(p.front_matter["version"], "1.2.0");
        assert_eq!(p.front_matter["metadata"]["hermes"]["tags"][0], "research");
    }

    #[test]
    fn malformed_skill_md_is_reported_not_fatal() {
        let cases = [
            ("# no front matter", "does not start"),
            ("---\nname: x\n", "not closed"),
            ("---\nname: [unclosed\n---\n", "not valid YAML"),
            ("---\n- a\n---\n", "not a mapping"),
            ("---\ndescription: d\n---\n", "`name` is missing"),
            ("---\nname: x\n---\n", "`description` is missing"),
        ];
        for (text, want) in cases {
            let p = parse_skill_md(text, "dir");
            let e = p.error.clone().unwrap_or_default();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!p.name.is_empty());
        }
        let long = format!("---\nname: {}\ndescription: d\n---\n", "n".repeat(65));
        assert!(parse_skill_md(&long, "d").error.is_some());
    }

    #[test]
    fn prefix_query_never_leaks_syntax() {
        assert_eq!(prefix_query("arx \"pa"), Some("\"arx\"* \"pa\"*".into()));
        assert_eq!(prefix_query("  "), None);
        assert_eq!(prefix_query("a OR b"), Some("\"a\"* \"OR\"* \"b\"*".into()));
    }
}
